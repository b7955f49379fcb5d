"""Operator metrics (prometheus-client) for autoscaling decisions and the signals behind them.

Labels stay low-cardinality: namespace and inference service name, plus the
decision's direction and driving signal on the counter. Observed signals are
set to NaN while the autoscaler is fail-static, so dashboards show a gap
instead of a stale value.
"""

from __future__ import annotations

import contextlib
import math

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from kvpilot.autoscaling.policy import Decision

_SERVICE = ("namespace", "inference_service")


class AutoscalerMetrics:
    """The autoscaler's metric families, registered once per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"kvpilot_autoscaler_{name}", doc, _SERVICE, registry=registry)

        self.decisions = Counter(
            "kvpilot_autoscaler_decisions",
            "Autoscaling decisions, by direction (up, down, none) and the signal that drove "
            "them (queue, kvCache, ttft; none when holding without a recommendation).",
            (*_SERVICE, "direction", "signal"),
            registry=registry,
        )
        self.desired_replicas = gauge("desired_replicas", "Replicas the autoscaler wants.")
        self.current_replicas = gauge(
            "current_replicas", "spec.replicas when the decision was made."
        )
        self.waiting_per_replica = gauge(
            "observed_waiting_per_replica",
            "Waiting requests per replica (vllm:num_requests_waiting), stable-window mean.",
        )
        self.running_per_replica = gauge(
            "observed_running_per_replica",
            "Running requests per replica (vllm:num_requests_running), stable-window mean.",
        )
        self.kv_cache_utilization = gauge(
            "observed_kv_cache_utilization",
            "KV-cache utilization 0..1 (vllm:kv_cache_usage_perc), stable-window mean.",
        )
        self.ttft_seconds = gauge(
            "observed_ttft_seconds", "Time to first token (seconds), stable-window mean."
        )
        self.reporting_replicas = gauge(
            "reporting_replicas", "Replicas with fresh metrics at the last decision."
        )
        self.fail_static = gauge(
            "fail_static", "1 while replicas are held because metrics are unusable."
        )
        self.panic = gauge("panic_mode", "1 while the autoscaler is in panic mode.")
        self._counted: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def record(self, namespace: str, name: str, decision: Decision) -> None:
        """Count one decision and update the gauges of its inference service."""
        direction, signal = decision.direction, decision.signal.value
        self.decisions.labels(namespace, name, direction, signal).inc()
        self._counted.setdefault((namespace, name), set()).add((direction, signal))
        self.desired_replicas.labels(namespace, name).set(decision.desired_replicas)
        self.current_replicas.labels(namespace, name).set(decision.current_replicas)
        self.fail_static.labels(namespace, name).set(1 if decision.fail_static else 0)
        self.panic.labels(namespace, name).set(1 if decision.panic else 0)
        seen = decision.observed
        nan = math.nan
        self.waiting_per_replica.labels(namespace, name).set(
            seen.waiting_per_replica if seen else nan
        )
        self.running_per_replica.labels(namespace, name).set(
            seen.running_per_replica if seen else nan
        )
        self.kv_cache_utilization.labels(namespace, name).set(
            seen.kv_cache_utilization if seen else nan
        )
        ttft = seen.ttft_seconds if seen else None
        self.ttft_seconds.labels(namespace, name).set(nan if ttft is None else ttft)
        self.reporting_replicas.labels(namespace, name).set(seen.reporting_replicas if seen else 0)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted inference service."""
        for direction, signal in self._counted.pop((namespace, name), set()):
            self.decisions.remove(namespace, name, direction, signal)
        for gauge in (
            self.desired_replicas,
            self.current_replicas,
            self.waiting_per_replica,
            self.running_per_replica,
            self.kv_cache_utilization,
            self.ttft_seconds,
            self.reporting_replicas,
            self.fail_static,
            self.panic,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)


_default: AutoscalerMetrics | None = None


def default_metrics() -> AutoscalerMetrics:
    """The metric families on prometheus-client's default registry (created on first use)."""
    global _default  # noqa: PLW0603 - one set of families per process registry
    if _default is None:
        _default = AutoscalerMetrics(REGISTRY)
    return _default


def record_decision(namespace: str, name: str, decision: Decision) -> None:
    """Record one decision on the default registry (what the operator's /metrics serves)."""
    default_metrics().record(namespace, name, decision)
