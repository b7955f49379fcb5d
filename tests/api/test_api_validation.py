"""parse_spec refuses every manifest of the shared invalid table, naming the field.

The same table runs against the real API server in e2e/test_crd_validation.py, so the
CEL rules in the CRD and the Python checks in the models are held to one standard.
Cases admission cannot judge (`admitted`) are accepted, and the planner answers them
with the reason the Placed condition carries.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvpilot.api import InvalidObjectError, dump, parse_spec
from kvpilot.planning.service import fit_service, service_from_manifest

TABLE = yaml.safe_load((Path(__file__).parent / "invalid_manifests.yaml").read_text())
SPEC_CASES = [c for c in TABLE["cases"] if c.get("spec", True)]
PLANNER_CASES = [c for c in TABLE["admitted"] if "where" not in c]
# Words of an evaluation failure rather than a refusal written for the user.
NOT_A_REFUSAL = ("modulus by zero", "evaluating rule", "no such overload", "Traceback")


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


def test_table_is_large_enough() -> None:
    assert len(TABLE["cases"]) >= 60
    names = [c["name"] for key in ("cases", "admitted", "accepted") for c in TABLE[key]]
    assert len(set(names)) == len(names)


def test_base_manifest_is_valid() -> None:
    parse_spec(TABLE["base"]["spec"])


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c["name"] for c in SPEC_CASES])
def test_parse_spec_refuses_and_names_the_field(case: dict[str, Any]) -> None:
    manifest = merge_patch(TABLE["base"], case["patch"])
    with pytest.raises(InvalidObjectError) as err:
        parse_spec(manifest["spec"])
    assert any(path.startswith(case["field"]) for path in err.value.paths), str(err.value)
    assert case["field"] in str(err.value)
    assert not any(words in str(err.value) for words in NOT_A_REFUSAL), str(err.value)


@pytest.mark.parametrize("case", TABLE["admitted"], ids=[c["name"] for c in TABLE["admitted"]])
def test_admitted_case_is_accepted(case: dict[str, Any]) -> None:
    parse_spec(merge_patch(TABLE["base"], case["patch"])["spec"])


@pytest.mark.parametrize("case", PLANNER_CASES, ids=[c["name"] for c in PLANNER_CASES])
def test_planner_answers_what_admission_cannot_judge(case: dict[str, Any]) -> None:
    manifest = merge_patch(TABLE["base"], case["patch"])
    spec = parse_spec(manifest["spec"])
    obj = {"metadata": {"name": "invalid", "namespace": "ns"}, "spec": dump(spec)}
    fit = fit_service(service_from_manifest(obj))
    assert fit.reason == case["reason"], fit
    assert fit.message  # the condition's message says why


@pytest.mark.parametrize("case", TABLE["accepted"], ids=[c["name"] for c in TABLE["accepted"]])
def test_ordinary_settings_are_accepted(case: dict[str, Any]) -> None:
    """The policy refuses what is hostile, not what ordinary deployments use."""
    parse_spec(merge_patch(TABLE["base"], case["patch"])["spec"])
