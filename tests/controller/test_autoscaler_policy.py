"""The autoscaler runs each service on spec.scaling over the operator-wide policy, and holds
with a reason (never raises out of its tick) when the two do not merge."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from kvpilot.autoscaling.metrics import AutoscalerMetrics
from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyConfig
from kvpilot.autoscaling.source import MetricsResult, MetricsUnavailable, ServiceRef
from kvpilot.controller.autoscaler import Autoscaler
from kvpilot.controller.kube import Kube

CLASH = (
    "holding replicas: spec.scaling over the operator-wide policy: "
    "panicWindowSeconds (200) exceeds stableWindowSeconds (180)"
)


@dataclass
class FakeKube:
    """The two writes the autoscaler makes, against one InferenceService in memory."""

    body: dict[str, Any]
    scaled: list[int] = field(default_factory=list)

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return copy.deepcopy(self.body) if kind == "InferenceService" else None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.body["status"] = {**self.body.get("status", {}), **status}
        return self.body

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.scaled.append(replicas)
        return self.body


@dataclass
class RecordingSource:
    """Answers every query with no data, remembering the windows asked for."""

    windows: list[float] = field(default_factory=list)

    def query(self, service: ServiceRef, *, now: float, window_seconds: float) -> MetricsResult:
        self.windows.append(window_seconds)
        return MetricsUnavailable("no data in this test")


def _isvc(scaling: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"source": "hf://x/y"}, "scaling": scaling},
    }


def _run(
    base: PolicyConfig, scaling: dict[str, Any]
) -> tuple[FakeKube, RecordingSource, list[Any]]:
    """Two ticks; the second sees the status the first wrote."""
    kube, source = FakeKube(_isvc(scaling)), RecordingSource()
    scaler = Autoscaler(
        cast(Kube, kube),
        source,
        AutoscalerMetrics(CollectorRegistry()),
        clock=lambda: 1_000_000.0,
        base=base,
    )
    events = [
        [(e.type, e.reason, e.message) for e in scaler.tick(copy.deepcopy(kube.body), None).events]
        for _ in range(2)
    ]
    return kube, source, events


CLASHING = {"minReplicas": 1, "maxReplicas": 3, "panicWindowSeconds": 200}
SITE = DEFAULT_POLICY.with_overrides({"stableWindowSeconds": 600})


@pytest.mark.parametrize(
    ("base", "scaling", "condition", "windows", "events"),
    [
        # Passes admission, clashes with the built-in 180 s stable window: held, one Warning.
        (
            DEFAULT_POLICY,
            CLASHING,
            ("False", "InvalidPolicy", CLASH),
            [],
            [[("Warning", "InvalidPolicy", f"ScalingActive=False: {CLASH}")], []],
        ),
        # The same spec over a site policy with a 600 s stable window is valid: it is
        # autoscaled and reads metrics over the site's window.
        (
            SITE,
            CLASHING,
            ("False", "MetricsUnavailable", None),
            [600.0, 600.0],
            None,
        ),
        (
            SITE,
            {"minReplicas": 1, "maxReplicas": 3, "stableWindowSeconds": 240},
            ("False", "MetricsUnavailable", None),
            [240.0, 240.0],
            None,
        ),
    ],
)
def test_tick_uses_the_operator_policy(
    base: PolicyConfig,
    scaling: dict[str, Any],
    condition: tuple[str, str, str | None],
    windows: list[float],
    events: list[list[tuple[str, str, str]]] | None,
) -> None:
    kube, source, seen = _run(base, scaling)
    (cond,) = (c for c in kube.body["status"]["conditions"] if c["type"] == "ScalingActive")
    status, reason, message = condition
    assert (cond["status"], cond["reason"]) == (status, reason)
    if message is not None:
        assert cond["message"] == message
    assert source.windows == windows
    assert kube.scaled == []
    if events is not None:
        assert seen == events
    if reason == "InvalidPolicy":
        assert "autoscaler" not in kube.body["status"]
