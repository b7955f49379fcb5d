"""Operator metrics recorded from decisions."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from kvpilot.autoscaling.metrics import AutoscalerMetrics
from kvpilot.autoscaling.policy import (
    Decision,
    Observed,
    PolicyState,
    Signal,
)

LABELS = {"namespace": "serving", "inference_service": "llama-8b"}


def decision(desired: int, current: int, *, observed: Observed | None, signal: Signal) -> Decision:
    return Decision(
        desired_replicas=desired,
        current_replicas=current,
        recommendation=desired if observed else None,
        signal=signal,
        constraints=(),
        panic=desired > current,
        fail_static=observed is None,
        reason="",
        condition_reason="",
        observed=observed,
        state=PolicyState(),
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def test_records_decisions_and_signals() -> None:
    registry = CollectorRegistry()
    m = AutoscalerMetrics(registry)
    seen = Observed(
        reporting_replicas=2,
        waiting_per_replica=6.5,
        running_per_replica=16,
        kv_cache_utilization=0.97,
        ttft_seconds=None,
    )
    m.record("serving", "llama-8b", decision(4, 2, observed=seen, signal=Signal.QUEUE))
    m.record("serving", "llama-8b", decision(4, 4, observed=seen, signal=Signal.QUEUE))
    m.record("serving", "llama-8b", decision(4, 4, observed=None, signal=Signal.NONE))

    got = {
        "up/queue": sample(
            registry, "kvpilot_autoscaler_decisions_total", direction="up", signal="queue"
        ),
        "none/queue": sample(
            registry, "kvpilot_autoscaler_decisions_total", direction="none", signal="queue"
        ),
        "none/none": sample(
            registry, "kvpilot_autoscaler_decisions_total", direction="none", signal="none"
        ),
        "desired": sample(registry, "kvpilot_autoscaler_desired_replicas"),
        "current": sample(registry, "kvpilot_autoscaler_current_replicas"),
        "fail_static": sample(registry, "kvpilot_autoscaler_fail_static"),
        "panic": sample(registry, "kvpilot_autoscaler_panic_mode"),
        "reporting": sample(registry, "kvpilot_autoscaler_reporting_replicas"),
    }
    assert got == {
        "up/queue": 1.0,
        "none/queue": 1.0,
        "none/none": 1.0,
        "desired": 4.0,
        "current": 4.0,
        "fail_static": 1.0,
        "panic": 0.0,
        "reporting": 0.0,
    }
    # Fail-static blanks the observed signals instead of leaving stale values.
    kv = sample(registry, "kvpilot_autoscaler_observed_kv_cache_utilization")
    assert kv is not None and math.isnan(kv)

    m.record("serving", "llama-8b", decision(4, 4, observed=seen, signal=Signal.QUEUE))
    assert sample(registry, "kvpilot_autoscaler_observed_kv_cache_utilization") == 0.97
    assert sample(registry, "kvpilot_autoscaler_observed_waiting_per_replica") == 6.5
    ttft = sample(registry, "kvpilot_autoscaler_observed_ttft_seconds")
    assert ttft is not None and math.isnan(ttft)


def test_forget_drops_every_series_of_a_service() -> None:
    registry = CollectorRegistry()
    m = AutoscalerMetrics(registry)
    m.record("serving", "llama-8b", decision(3, 2, observed=None, signal=Signal.NONE))
    m.record("serving", "other", decision(1, 1, observed=None, signal=Signal.NONE))
    m.forget("serving", "llama-8b")
    names = {
        (s.name, s.labels.get("inference_service"))
        for family in registry.collect()
        for s in family.samples
    }
    assert {svc for _, svc in names} == {"other"}


def test_record_decision_uses_the_default_registry() -> None:
    from prometheus_client import REGISTRY

    from kvpilot.autoscaling.metrics import default_metrics, record_decision

    record_decision("ns-default-test", "svc", decision(2, 1, observed=None, signal=Signal.NONE))
    assert default_metrics() is default_metrics()
    labels = {"namespace": "ns-default-test", "inference_service": "svc"}
    assert REGISTRY.get_sample_value("kvpilot_autoscaler_desired_replicas", labels) == 2.0
    default_metrics().forget("ns-default-test", "svc")
