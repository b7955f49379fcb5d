"""The operator's own metrics (besides the autoscaler's, in kvpilot.autoscaling.metrics)."""

from __future__ import annotations

import contextlib

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from kvpilot.conditions import CONDITION_ORDER

_SERVICE = ("namespace", "inference_service")


class OperatorMetrics:
    """Reconcile timing and errors, decisions, and per-service state."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reconcile_duration = Histogram(
            "kvpilot_reconcile_duration_seconds",
            "Time of one reconcile of an InferenceService (read caches, plan, apply, status).",
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "kvpilot_reconcile_errors",
            "Reconciles that failed, by reason (api_error, unreachable, invalid, conflict).",
            ("reason",),
            registry=registry,
        )
        self.decisions = Counter(
            "kvpilot_decisions",
            "Decisions that changed something, by kind (apply, status, event, scale, placement, "
            "rollout) and reason.",
            ("kind", "reason"),
            registry=registry,
        )
        self.desired = Gauge(
            "kvpilot_service_desired_replicas", "Replicas the plan gives the service.", _SERVICE,
            registry=registry,
        )  # fmt: skip
        self.ready = Gauge(
            "kvpilot_service_ready_replicas", "Ready replicas of the service.", _SERVICE,
            registry=registry,
        )  # fmt: skip
        self.condition = Gauge(
            "kvpilot_service_condition",
            "1 when the service's condition `type` is True, else 0.",
            (*_SERVICE, "type"),
            registry=registry,
        )
        self.gpus = Gauge(
            "kvpilot_service_gpus", "GPUs the pool plan gives the service.", _SERVICE,
            registry=registry,
        )  # fmt: skip
        self.rollbacks = Counter(
            "kvpilot_rollout_rollbacks", "Rollouts rolled back automatically.", _SERVICE,
            registry=registry,
        )  # fmt: skip
        self.leader = Gauge(
            "kvpilot_leader", "1 on the replica that holds the leader Lease, 0 on a standby.",
            registry=registry,
        )  # fmt: skip
        self.plan_duration = Histogram(
            "kvpilot_pool_plan_duration_seconds",
            "Time of one plan of the whole GPU pool.",
            registry=registry,
        )

    def service(self, namespace: str, name: str, status: dict[str, object], gpus: int) -> None:
        """Per-service gauges from the status just computed."""
        self.desired.labels(namespace, name).set(float(str(status.get("desiredReplicas", 0))))
        self.ready.labels(namespace, name).set(float(str(status.get("readyReplicas", 0))))
        self.gpus.labels(namespace, name).set(gpus)
        conds = status.get("conditions")
        for c in conds if isinstance(conds, list) else []:
            if isinstance(c, dict) and c.get("type") in CONDITION_ORDER:
                self.condition.labels(namespace, name, str(c["type"])).set(
                    1 if c.get("status") == "True" else 0
                )

    def forget(self, namespace: str, name: str) -> None:
        for g in (self.desired, self.ready, self.gpus):
            with contextlib.suppress(KeyError):
                g.remove(namespace, name)
        for t in CONDITION_ORDER:
            with contextlib.suppress(KeyError):
                self.condition.remove(namespace, name, t)
