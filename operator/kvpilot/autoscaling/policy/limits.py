"""The last stages of a decision: rate limits, then min/max bounds (which win over all)."""

from __future__ import annotations

from kvpilot.autoscaling.policy.config import PolicyConfig
from kvpilot.autoscaling.policy.contract import Constraint
from kvpilot.autoscaling.policy.reason import Hold


def rate_limited(
    config: PolicyConfig,
    scale_events: tuple[tuple[float, int], ...],
    now: float,
    spec: int,
    target: int,
) -> tuple[int, Hold | None]:
    """Cap the change at maxReplicasPerStep minus what was changed within the period."""
    up, down = config.scale_up, config.scale_down
    limited = target
    if target > spec and up.max_replicas_per_step is not None:
        used = sum(d for t, d in scale_events if d > 0 and t > now - up.period_seconds)
        limited = min(target, spec + max(0, up.max_replicas_per_step - used))
    elif target < spec and down.max_replicas_per_step is not None:
        used = sum(-d for t, d in scale_events if d < 0 and t > now - down.period_seconds)
        limited = max(target, spec - max(0, down.max_replicas_per_step - used))
    if limited == target:
        return target, None
    # The direction asked for, not the one taken: a used-up budget leaves `limited` at spec.
    rules = up if target > spec else down
    sign = "+" if target > spec else "-"
    note = f"rate limit {sign}{rules.max_replicas_per_step} per {rules.period_seconds:g}s"
    return limited, Hold(Constraint.RATE_LIMIT, note)


def bounded(target: int, lo: int, hi: int) -> tuple[int, Hold | None]:
    """``target`` within [lo, hi] (hi wins if they cross), and the bound that moved it."""
    desired = min(max(target, lo), hi)
    if desired > target:
        return desired, Hold(Constraint.MIN_REPLICAS, f"raised to the minimum {lo}")
    if desired < target:
        return desired, Hold(Constraint.MAX_REPLICAS, f"capped at maxReplicas {hi}")
    return desired, None
