"""The generated CRD: checked in and current, structural, documented, CEL well-formed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest

from kvpilot.api import crd
from kvpilot.api.names import DType, KVCacheDType, Quantization
from kvpilot.autoscaling.policy import DEFAULT_POLICY

CRDS_DIR = Path(__file__).parents[2] / "crds"
CRD = crd.generate_crd()
VERSION = CRD["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_is_current() -> None:
    diffs = crd.stale_crds(CRDS_DIR)
    assert not diffs, "crds/ is out of date: run `kvpilot crd`\n" + "\n".join(diffs)


def test_cli_check_mode(tmp_path: Path) -> None:
    assert crd.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert crd.main(["--output-dir", str(tmp_path)]) == 0
    assert crd.main(["--check", "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvpilot.io_inferenceservices.yaml"]


def test_names_scope_and_subresources() -> None:
    assert CRD["metadata"] == {"name": "inferenceservices.kvpilot.io"}
    assert CRD["spec"]["names"] == {
        "kind": "InferenceService",
        "listKind": "InferenceServiceList",
        "plural": "inferenceservices",
        "singular": "inferenceservice",
        "shortNames": ["infsvc", "kvis"],
        "categories": ["kvpilot"],
    }
    assert CRD["spec"]["scope"] == "Namespaced"
    assert (VERSION["name"], VERSION["served"], VERSION["storage"]) == ("v1alpha1", True, True)
    assert VERSION["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns() -> None:
    columns = [
        (c["name"], c["jsonPath"], c.get("priority", 0))
        for c in VERSION["additionalPrinterColumns"]
    ]
    assert columns == [
        ("Model", ".spec.model.source", 0),
        ("Quant", ".spec.model.quantization", 0),
        ("TP", ".status.placement.tensorParallel", 0),
        ("GPU", ".status.placement.gpuType", 0),
        ("Desired", ".status.desiredReplicas", 0),
        ("Ready", ".status.readyReplicas", 0),
        ("Status", '.status.conditions[?(@.type=="Ready")].status', 0),
        ("Reason", '.status.conditions[?(@.type=="Ready")].reason', 1),
        ("Rollout", ".status.revisions.step", 0),
        ("Canary", ".status.revisions.canaryWeight", 1),
        ("Revision", ".status.revision", 1),
        ("Age", ".metadata.creationTimestamp", 0),
    ]


def resolve(path: str) -> dict[str, Any]:
    node: dict[str, Any] = ROOT
    for part in path.strip(".").split("."):
        if node.get("type") == "array":
            node = node["items"]
        node = node["properties"][part]
    return node


def test_printer_and_scale_paths_exist_in_the_schema() -> None:
    paths = [c["jsonPath"] for c in VERSION["additionalPrinterColumns"]]
    paths += list(VERSION["subresources"]["scale"].values())
    for path in paths:
        plain = re.sub(r"\[\?.*?\]", "", path)
        if plain.startswith(".metadata"):
            continue
        resolve(plain)


@pytest.mark.parametrize("path", [p for p, _ in walk(ROOT)], ids=lambda p: p or "root")
def test_schema_is_structural(path: str) -> None:
    node = dict(walk(ROOT))[path]
    assert (
        not {"$ref", "$defs", "nullable", "title", "oneOf", "allOf", "not", "const"} & node.keys()
    )
    if node.get("x-kubernetes-int-or-string"):
        assert "type" not in node
        assert node.get("anyOf", INT_OR_STRING_ANY_OF) == INT_OR_STRING_ANY_OF
    elif node.get("x-kubernetes-preserve-unknown-fields"):
        assert node["type"] == "object"
    else:
        assert "anyOf" not in node
        assert node["type"] in {"object", "array", "string", "integer", "number", "boolean"}
    if "properties" in node:
        assert node["type"] == "object"
        assert "additionalProperties" not in node
        assert set(node.get("required", [])) <= node["properties"].keys()
    if node.get("type") == "array":
        assert isinstance(node["items"], dict)
    if isinstance(node.get("exclusiveMinimum"), bool | int):
        assert isinstance(node["exclusiveMinimum"], bool) and "minimum" in node


def test_every_field_is_documented() -> None:
    for path, node in walk(ROOT):
        if path.startswith((".metadata", ".apiVersion", ".kind")) or path.endswith(("[]", "{}")):
            continue
        assert node.get("description"), f"{path or 'root'} has no description"


def test_enums_match_the_models() -> None:
    model = resolve("spec.model")["properties"]
    assert model["quantization"]["enum"] == list(get_args(Quantization))
    assert model["dtype"]["enum"] == list(get_args(DType))
    assert model["kvCacheDtype"]["enum"] == list(get_args(KVCacheDType))


def test_defaults_reach_nested_fields() -> None:
    """Optional objects default to {} so the API server fills in their fields' defaults."""
    spec = resolve("spec")["properties"]
    for name in ("runtime", "parallelism", "placement", "scaling"):
        assert spec[name]["default"] == {}
    assert spec["runtime"]["properties"]["port"]["default"] == 8000
    assert not any("default" in node for _, node in walk(resolve("status")))


def test_scaling_knobs_have_no_schema_default() -> None:
    """Unset knobs must stay unset in etcd so that the operator-wide policy applies; the
    descriptions name the built-in defaults instead."""
    scaling = resolve("spec.scaling")
    with_default = sorted(
        path for path, node in walk(scaling) if "default" in node and node.get("type") != "object"
    )
    assert with_default == [".maxReplicas", ".minReplicas"]
    knobs = scaling["properties"]["scaleDown"]["properties"]
    assert (
        "Default (operator-wide policy): 300." in knobs["stabilizationWindowSeconds"]["description"]
    )


def _policy_default(path: str) -> str:
    value: Any = DEFAULT_POLICY.model_dump(by_alias=True)
    for part in path.strip(".").split("."):
        value = value[part]
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def test_scaling_descriptions_name_the_built_in_policy() -> None:
    """`kubectl explain` names each knob's built-in default; it must be the policy's."""
    named, expected = {}, {}
    for path, node in walk(resolve("spec.scaling")):
        if node.get("type") == "object" or path in {"", ".minReplicas", ".maxReplicas"}:
            continue
        found = re.search(r"Default(?: \(operator-wide policy\))?: (\S+?)[.,]?(?:\s|$)",
                          node["description"])  # fmt: skip
        named[path] = found.group(1) if found else None
        expected[path] = _policy_default(path)
    assert len(named) == 22  # every knob of PolicyConfig but the bounds
    assert named == expected


def test_list_types() -> None:
    assert resolve("spec.runtime.env")["x-kubernetes-list-type"] == "map"
    assert resolve("spec.runtime.env")["x-kubernetes-list-map-keys"] == ["name"]
    assert resolve("spec.placement.gpuTypes")["x-kubernetes-list-type"] == "set"
    assert resolve("status.conditions")["x-kubernetes-list-map-keys"] == ["type"]


CEL_RULES = [
    (path, rule) for path, node in walk(ROOT) for rule in node.get("x-kubernetes-validations", [])
]


def test_cross_field_rules_are_present() -> None:
    where = {(path, r.get("fieldPath")) for path, r in CEL_RULES}
    assert where >= {
        (".spec", ".replicas"),
        (".spec", ".parallelism.tensor"),
        (".spec.scaling", ".minReplicas"),
        (".spec.model", ".dtype"),
        (".spec.model", ".revision"),
        (".spec.model.source", None),
        (".spec.parallelism.tensor", None),
        (".spec.runtime", ".maxNumBatchedTokens"),
        (".spec.runtime.extraArgs", None),
    }


@pytest.mark.parametrize(
    ("path", "rule"), CEL_RULES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(CEL_RULES)]
)
def test_cel_rule_is_well_formed(path: str, rule: dict[str, str]) -> None:
    """A static check; the API server compiles the rules for real in e2e/."""
    assert set(rule) <= {"rule", "message", "fieldPath"}
    assert rule["message"] and rule["rule"]
    text = re.sub(r"'[^']*'", "''", rule["rule"])  # drop string literals
    assert text.count("(") == text.count(")")
    assert text.count("[") == text.count("]")
    assert "'" not in text.replace("''", "")
    node = dict(walk(ROOT))[path]
    for chain in re.findall(r"\bself((?:\.[A-Za-z_]\w*)+)", text):
        target = node
        for part in chain.strip(".").split("."):
            if part in {"all", "exists", "matches", "startsWith", "size"}:
                break
            assert part in target.get("properties", {}), (
                f"self{chain} is not in the schema at {path}"
            )
            target = target["properties"][part]
    if "fieldPath" in rule:
        target = node
        for part in rule["fieldPath"].strip(".").split("."):
            target = target["properties"][part]
