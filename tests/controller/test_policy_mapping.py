"""spec.scaling maps onto the autoscaling policy knob for knob."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvpilot.api.parse import parse_inference_service
from kvpilot.autoscaling.policy import DEFAULT_POLICY
from kvpilot.reconcile import policy_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _isvc(spec: dict[str, object]) -> object:
    return parse_inference_service(
        {"metadata": {"name": "x", "namespace": "ns", "uid": "u"}, "spec": spec}
    )


def test_defaults_are_the_operator_policy() -> None:
    isvc = _isvc({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}})
    assert policy_config(isvc) == DEFAULT_POLICY  # type: ignore[arg-type]


def test_every_knob_reaches_the_policy() -> None:
    scaling = {
        "minReplicas": 2,
        "maxReplicas": 9,
        "targets": {"queueDepthPerReplica": 2.5, "kvCacheUtilization": 0.7,
                    "timeToFirstTokenSeconds": 1.5},
        "stableWindowSeconds": 120,
        "panicWindowSeconds": 30,
        "panicThreshold": 3.0,
        "tolerance": 0.05,
        "scaleUp": {"stabilizationWindowSeconds": 10, "maxReplicasPerStep": 2, "periodSeconds": 30},
        "scaleDown": {"stabilizationWindowSeconds": 90, "maxReplicasPerStep": 3,
                      "periodSeconds": 20},
        "scaleToZero": {"enabled": True, "idleSeconds": 900},
        "coldStartGraceSeconds": 240,
        "manualOverrideSeconds": 60,
        "maxMetricAgeSeconds": 20,
    }  # fmt: skip
    cfg = policy_config(_isvc({"model": {"source": "hf://x/y"}, "scaling": scaling}))  # type: ignore[arg-type]
    assert cfg.model_dump(by_alias=True) == scaling


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_map(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    body["metadata"].update(namespace="ns", uid="u")
    cfg = policy_config(parse_inference_service(body))
    assert cfg.max_replicas == body["spec"].get("scaling", {}).get("maxReplicas", 1)
