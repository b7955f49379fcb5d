"""The real API server enforces the InferenceService schema and CEL rules.

Every manifest of tests/api/invalid_manifests.yaml is refused at admission with a
message naming the offending field (the same table runs through parse_spec in the unit
tests); the examples are accepted, and the server's defaults match the models'.
"""

from __future__ import annotations

import copy
import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster
from e2e.helpers import wait_for
from kvpilot.api import CRD_NAME, parse_spec

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parents[1]
CRD_FILE = ROOT / "crds" / "kvpilot.io_inferenceservices.yaml"
TABLE = yaml.safe_load((ROOT / "tests" / "api" / "invalid_manifests.yaml").read_text())
CASES: list[dict[str, Any]] = TABLE["cases"]
ADMITTED: list[dict[str, Any]] = TABLE["admitted"]
# Words of an evaluation failure rather than a refusal written for the user.
NOT_A_REFUSAL = ("modulus by zero", "evaluating rule", "no such overload", "Internal error")
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def apply(cluster: Cluster, namespace: str, manifest: dict[str, Any], *extra: str) -> str | None:
    """Server-side apply; None when accepted, else the API server's refusal."""
    try:
        cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=crd-validation-test",
            "-n",
            namespace,
            "-f",
            "-",
            *extra,
            input_text=json.dumps(manifest),
        )
    except AssertionError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")


@pytest.fixture(scope="module")
def dry_run_namespace(cluster: Cluster, crd: None) -> Iterator[str]:
    """One namespace for all dry runs: nothing is stored in it."""
    name = f"crd-validation-{uuid.uuid4().hex[:5]}"
    cluster.kube.run("create", "namespace", name, check=False)
    # The schema is served once the base manifest passes a dry run (discovery caught up).
    wait_for(
        lambda: apply(cluster, name, TABLE["base"], "--dry-run=server"),
        lambda refusal: refusal is None,
        timeout=60,
        what="the InferenceService API to serve the current schema",
    )
    yield name
    cluster.kube.run("delete", "namespace", name, "--wait=false", check=False)


def test_table_has_at_least_60_cases() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_manifest_is_refused_naming_the_field(
    cluster: Cluster, dry_run_namespace: str, case: dict[str, Any]
) -> None:
    manifest = merge_patch(TABLE["base"], case["patch"])
    refusal = apply(cluster, dry_run_namespace, manifest, "--dry-run=server")
    assert refusal is not None, f"the API server accepted {case['name']}: {manifest}"
    assert case["field"] in refusal, refusal
    assert not any(words in refusal for words in NOT_A_REFUSAL), refusal


@pytest.mark.parametrize("case", TABLE["accepted"], ids=[c["name"] for c in TABLE["accepted"]])
def test_ordinary_settings_are_accepted(
    cluster: Cluster, dry_run_namespace: str, case: dict[str, Any]
) -> None:
    """The policy refuses what is hostile, not what ordinary deployments use."""
    manifest = merge_patch(TABLE["base"], case["patch"])
    assert apply(cluster, dry_run_namespace, manifest, "--dry-run=server") is None


@pytest.mark.parametrize("case", ADMITTED, ids=[c["name"] for c in ADMITTED])
def test_case_admission_cannot_judge_is_accepted(
    cluster: Cluster, dry_run_namespace: str, case: dict[str, Any]
) -> None:
    """Accepted at admission: the operator answers these with a condition (`reason`)."""
    manifest = merge_patch(TABLE["base"], case["patch"])
    assert apply(cluster, dry_run_namespace, manifest, "--dry-run=server") is None


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted_and_defaulted_like_the_models(
    cluster: Cluster, crd: None, namespace: str, path: Path
) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert apply(cluster, namespace, manifest) is None
    name = manifest["metadata"]["name"]
    stored = cluster.kube.json("get", "inferenceservice", name, "-n", namespace)
    # The API server's defaults (schema) and the models' defaults agree.
    assert parse_spec(stored["spec"]) == parse_spec(manifest["spec"])
    assert stored["spec"]["runtime"]["port"] == 8000
    # Scaling knobs stay unset in the object, for the operator-wide policy to fill in.
    assert stored["spec"]["scaling"]["scaleDown"] == manifest["spec"].get("scaling", {}).get(
        "scaleDown", {}
    )


def test_short_names_category_and_columns(cluster: Cluster, crd: None, namespace: str) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "qwen2.5-7b-awq.yaml").read_text())
    assert apply(cluster, namespace, manifest) is None
    for resource in ("infsvc", "kvis", "kvpilot"):
        table = wait_for(
            functools.partial(cluster.kubectl, "get", resource, "-n", namespace),
            lambda out: "qwen2-5-7b-awq" in out,
            timeout=30,
            what=f"kubectl get {resource}",
        )
        if resource == "kvpilot":  # the category may list other kinds too
            continue
        header = table.splitlines()[0].split()
        assert header == [
            "NAME",
            "MODEL",
            "QUANT",
            "TP",
            "GPU",
            "DESIRED",
            "READY",
            "STATUS",
            "ROLLOUT",
            "AGE",
        ]
        row = table.splitlines()[1].split()
        assert row[:3] == ["qwen2-5-7b-awq", "hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "awq"]


def test_scale_subresource_respects_the_autoscaling_bounds(
    cluster: Cluster, crd: None, namespace: str
) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    assert apply(cluster, namespace, manifest) is None
    name = manifest["metadata"]["name"]
    cluster.kubectl("scale", f"inferenceservice/{name}", "-n", namespace, "--replicas=3")
    stored = cluster.kube.json("get", "inferenceservice", name, "-n", namespace)
    assert stored["spec"]["replicas"] == 3
    with pytest.raises(AssertionError, match=r"spec\.replicas"):
        cluster.kubectl("scale", f"inferenceservice/{name}", "-n", namespace, "--replicas=9")


def test_explain_reads_the_descriptions(cluster: Cluster, crd: None) -> None:
    text = wait_for(
        lambda: cluster.kubectl("explain", "inferenceservice.spec.scaling.targets"),
        lambda out: "kvCacheUtilization" in out,
        timeout=30,
        what="kubectl explain",
    )
    assert "vllm:kv_cache_usage_perc" in text
    assert "Per-replica load to aim for." in text
