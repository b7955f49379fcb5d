"""`plan_tick` decides what one autoscaler tick writes: nothing when nothing changed."""

from __future__ import annotations

import copy
from typing import Any

from kvpilot.api.parse import parse_inference_service
from kvpilot.autoscaling.policy import DEFAULT_POLICY
from kvpilot.autoscaling.source import MetricsUnavailable
from kvpilot.objects import merge_patch
from kvpilot.reconcile.autoscale import TickInput, plan_tick, tick_policy

BODY: dict[str, Any] = {
    "apiVersion": "kvpilot.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "x", "namespace": "ns", "uid": "u", "generation": 1},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "scaling": {"minReplicas": 1, "maxReplicas": 4},
    },
}
DEP = {"status": {"replicas": 1, "readyReplicas": 1}}


def tick(previous: dict[str, Any], now: float, body: dict[str, Any] = BODY) -> Any:
    isvc = parse_inference_service(body)
    return plan_tick(
        TickInput(
            isvc=isvc,
            generation=1,
            previous=previous,
            annotations={},
            deployment=DEP,
            policy=tick_policy(isvc, DEFAULT_POLICY),
            metrics=MetricsUnavailable("Prometheus is down"),
            now=now,
            stamp=f"t{now:.0f}",
        )
    )


def apply_patch(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores after a JSON merge patch."""
    out = copy.deepcopy(status)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = apply_patch(out[k], v)
        else:
            out[k] = v
    return out


def test_holding_on_missing_metrics_writes_once_then_nothing() -> None:
    status: dict[str, Any] = {}
    written = 0
    for i in range(20):
        plan = tick(status, 1000.0 + 15 * i)
        assert plan.scale_to is None, "never scales on absent data"
        if plan.status is not None:
            written += 1
            status = apply_patch(status, merge_patch(status, plan.status))
    assert written <= 2, f"{written} status writes in 20 identical ticks"
    final = tick(status, 2000.0)
    assert final.status is None and final.events == ()


def test_autoscaling_disabled_is_reported_once() -> None:
    body = copy.deepcopy(BODY)
    body["spec"]["scaling"]["maxReplicas"] = 1
    first = tick({}, 1000.0, body)
    assert first.status is not None
    assert [e.reason for e in first.events] == ["AutoscalingDisabled"]
    second = tick(apply_patch({}, first.status), 1015.0, body)
    assert second.status is None and second.events == ()
