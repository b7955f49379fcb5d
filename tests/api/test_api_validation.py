"""parse_spec refuses every manifest of the shared invalid table, naming the field.

The same table runs against the real API server in e2e/test_crd_validation.py, so the
CEL rules in the CRD and the Python checks in the models are held to one standard.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvpilot.api import InvalidObjectError, parse_spec

TABLE = yaml.safe_load((Path(__file__).parent / "invalid_manifests.yaml").read_text())
SPEC_CASES = [c for c in TABLE["cases"] if c.get("spec", True)]


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
    assert len(TABLE["cases"]) >= 25
    assert len({c["name"] for c in TABLE["cases"]}) == len(TABLE["cases"])


def test_base_manifest_is_valid() -> None:
    parse_spec(TABLE["base"]["spec"])


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c["name"] for c in SPEC_CASES])
def test_parse_spec_refuses_and_names_the_field(case: dict[str, Any]) -> None:
    manifest = merge_patch(TABLE["base"], case["patch"])
    with pytest.raises(InvalidObjectError) as err:
        parse_spec(manifest["spec"])
    assert any(path.startswith(case["field"]) for path in err.value.paths), str(err.value)
    assert case["field"] in str(err.value)
