"""helm on the chart, for tests: lint, template, parsed manifests, metric names in PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kvpilot"
KUBE_VERSION = "1.35.4"


def helm_bin() -> Path:
    from e2e import devcluster

    return devcluster.ensure_go_tool("helm", devcluster.HELM_VERSION)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def value_args(values: dict[str, Any] | None, files: Iterable[Path] = ()) -> list[str]:
    args: list[str] = []
    for f in files:
        args += ["-f", str(f)]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def template(
    values: dict[str, Any] | None = None,
    files: Iterable[Path] = (),
    *,
    namespace: str = "kvpilot-system",
    chart: Path = CHART,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    return helm(
        "template", "kvpilot", str(chart), "--namespace", namespace,
        "--kube-version", KUBE_VERSION, *value_args(values, files),
        check=check,
    )  # fmt: skip


def manifests(values: dict[str, Any] | None = None, files: Iterable[Path] = ()) -> list[Any]:
    return [d for d in yaml.safe_load_all(template(values, files).stdout) if d]


def by_kind(docs: list[Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Any], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# Words of PromQL that look like metric names but are not.
_PROMQL_WORDS = {
    "sum", "avg", "max", "min", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "rate", "increase", "irate", "absent",
    "histogram_quantile", "label_values", "vector", "le", "bool", "offset", "timestamp",
}  # fmt: skip
_NAME = re.compile(r"(?<![\w:$\"{.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:\"])")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label matchers and strings removed)."""
    bare = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors
    bare = re.sub(r'"[^"]*"', "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set()
    for m in _NAME.finditer(bare):
        word = m.group(1)
        rest = bare[m.end() :].lstrip()
        if word in _PROMQL_WORDS or rest.startswith("("):
            continue  # a function or keyword
        if re.fullmatch(r"[0-9.e+-]+", word):
            continue
        names.add(word)
    return names


def family_of(sample_name: str, families: set[str]) -> str | None:
    """The metric family a sample name belongs to (``x_bucket`` -> ``x``)."""
    if sample_name in families:
        return sample_name
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created", "_info"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            return sample_name[: -len(suffix)]
    return None


def chart_promql(files: Iterable[Path] = ()) -> dict[str, str]:
    """Every PromQL expression in the chart's PrometheusRule and dashboard: where -> expr."""
    docs = manifests(
        {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}, files
    )
    out: dict[str, str] = {}
    for group in one(docs, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = str(rule["expr"])
    cm = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    dash = json.loads(cm[0]["data"]["kvpilot.json"])
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(SELECTOR, LABEL): the selector is the query.
            query = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", var["query"]["query"])
            out[f"variable {var['name']}"] = query
    return out
