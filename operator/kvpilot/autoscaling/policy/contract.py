"""What one decision reads (`PolicyInput`) and what it returns (`Decision`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from kvpilot.autoscaling.policy.state import PolicyState
from kvpilot.autoscaling.source import MetricsResult


@dataclass(frozen=True)
class PolicyInput:
    """One decision's observations.

    ``spec_replicas``: spec.replicas now (includes replicas still starting).
    ``ready_replicas``: Ready pods. ``starting_replicas``: pods that exist but are
    not Ready yet (loading the model). Replicas in spec.replicas that are neither
    (not created yet, or Pending) are treated as starting too, so passing only
    spec and ready replicas is enough. ``paused``: hold spec.replicas as-is.
    """

    now: float
    metrics: MetricsResult
    spec_replicas: int
    ready_replicas: int
    starting_replicas: int = 0
    paused: bool = False


class Signal(StrEnum):
    """Which signal the recommendation came from."""

    QUEUE = "queue"
    CONCURRENCY = "concurrency"
    KV_CACHE = "kvCache"
    TTFT = "ttft"
    NONE = "none"


class Constraint(StrEnum):
    """What made the desired replicas differ from the plain recommendation (or hold them)."""

    STABILIZATION = "stabilization"
    RATE_LIMIT = "rateLimit"
    MIN_REPLICAS = "minReplicas"
    MAX_REPLICAS = "maxReplicas"
    COLD_START = "coldStart"
    PARTIAL_METRICS = "partialMetrics"
    WINDOW_NOT_COVERED = "windowNotCovered"
    MANUAL_OVERRIDE = "manualOverride"
    PAUSED = "paused"
    SCALED_TO_ZERO = "scaledToZero"
    FAIL_STATIC = "failStatic"


@dataclass(frozen=True)
class Observed:
    """Stable-window averages of the signals, for the status block and operator metrics."""

    reporting_replicas: int
    waiting_per_replica: float
    running_per_replica: float
    kv_cache_utilization: float
    ttft_seconds: float | None = None

    def to_status(self) -> dict[str, Any]:
        """camelCase, rounded, for status.autoscaler.observed."""
        out: dict[str, Any] = {
            "reportingReplicas": self.reporting_replicas,
            "waitingPerReplica": round(self.waiting_per_replica, 3),
            "runningPerReplica": round(self.running_per_replica, 3),
            "kvCacheUtilization": round(self.kv_cache_utilization, 4),
        }
        if self.ttft_seconds is not None:
            out["ttftSeconds"] = round(self.ttft_seconds, 4)
        return out


@dataclass(frozen=True)
class Decision:
    """The outcome of one decision; ``state`` is what to persist for the next one."""

    desired_replicas: int
    current_replicas: int
    recommendation: int | None
    signal: Signal
    constraints: tuple[Constraint, ...]
    panic: bool
    fail_static: bool
    reason: str
    condition_reason: str
    observed: Observed | None
    state: PolicyState

    @property
    def direction(self) -> Literal["up", "down", "none"]:
        if self.desired_replicas > self.current_replicas:
            return "up"
        if self.desired_replicas < self.current_replicas:
            return "down"
        return "none"

    @property
    def scaling_active(self) -> bool:
        """For the ScalingActive condition: False when holding for lack of data or by request."""
        inactive = {Constraint.PAUSED, Constraint.SCALED_TO_ZERO}
        return not self.fail_static and not inactive.intersection(self.constraints)
