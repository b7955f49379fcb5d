"""Autoscaling (pure policy + metrics-source interface); Prometheus adapter in `.prometheus`.

Typical use by the controller, once per decision interval and service:

    config = DEFAULT_POLICY.with_overrides(cr["spec"].get("scaling", {}))
    state = PolicyState.restore(status.get("autoscaler", {}).get("state"))
    now = time.time()
    metrics = source.query(ServiceRef(ns, name), now=now,
                           window_seconds=query_window_seconds(config))   # in a thread
    d = decide(config, state, PolicyInput(now=now, metrics=metrics,
                                          spec_replicas=spec_replicas,
                                          ready_replicas=ready, starting_replicas=starting,
                                          paused=annotation_says_paused))
    if d.desired_replicas != spec_replicas: patch /scale to d.desired_replicas, then Event
    status.autoscaler = {"desiredReplicas": d.desired_replicas, "reason": d.reason,
                         "observed": d.observed.to_status() if d.observed else None,
                         "state": d.state.to_dict(), ...}
    condition ScalingActive = d.scaling_active, reason d.condition_reason, message d.reason
    metrics.record(ns, name, d)
"""

from kvpilot.autoscaling.policy import (
    DEFAULT_POLICY,
    Constraint,
    Decision,
    Observed,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    ScaleDownRules,
    ScaleToZero,
    ScaleUpRules,
    Signal,
    Targets,
    decide,
    query_window_seconds,
)
from kvpilot.autoscaling.source import (
    MetricsResult,
    MetricsSource,
    MetricsUnavailable,
    MetricsWindow,
    ReplicaSeries,
    Sample,
    ServiceRef,
    StaticMetricsSource,
)

__all__ = [
    "DEFAULT_POLICY",
    "Constraint",
    "Decision",
    "MetricsResult",
    "MetricsSource",
    "MetricsUnavailable",
    "MetricsWindow",
    "Observed",
    "PolicyConfig",
    "PolicyInput",
    "PolicyState",
    "ReplicaSeries",
    "Sample",
    "ScaleDownRules",
    "ScaleToZero",
    "ScaleUpRules",
    "ServiceRef",
    "Signal",
    "StaticMetricsSource",
    "Targets",
    "decide",
    "query_window_seconds",
]
