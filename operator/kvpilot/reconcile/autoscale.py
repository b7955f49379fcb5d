"""One autoscaler tick as a pure function: observations in, what to write out.

The controller reads the InferenceService and its Deployment from its caches and the
metrics from Prometheus, calls `plan_tick`, then writes /scale and the status only
when the plan says so, so a steady service costs no writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.autoscaling.policy import (
    Decision,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    decide,
)
from kvpilot.autoscaling.source import MetricsResult
from kvpilot.conditions import Condition, find, merge_conditions
from kvpilot.reconcile.plan import Event, EventType
from kvpilot.reconcile.status import (
    autoscaler_status,
    policy_config,
    scaling_condition,
    status_changed,
)

#: Annotation that pauses autoscaling of one service (holds spec.replicas as it is).
PAUSE_ANNOTATION = "kvpilot.io/autoscaling-paused"


@dataclass(frozen=True)
class TickPlan:
    """``scale_to``: replicas to write through /scale (None: leave spec.replicas);
    ``status``: the status patch (None: unchanged)."""

    scale_to: int | None = None
    status: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()
    decision: Decision | None = None


def tick_policy(isvc: InferenceService, base: PolicyConfig) -> PolicyConfig | Condition:
    """The merged policy of a service, or the ScalingActive condition that holds it."""
    scaling = isvc.spec.scaling
    if not scaling.autoscaling:
        return Condition(
            "ScalingActive",
            "False",
            "AutoscalingDisabled",
            f"minReplicas == maxReplicas ({scaling.max_replicas}); replicas follow spec.replicas",
        )
    try:
        return policy_config(isvc, base)
    except ValueError as exc:
        return Condition("ScalingActive", "False", "InvalidPolicy", f"holding replicas: {exc}")


@dataclass(frozen=True)
class TickInput:
    isvc: InferenceService
    generation: int
    previous: Mapping[str, Any]  # status
    annotations: Mapping[str, str]
    deployment: Mapping[str, Any] | None
    policy: PolicyConfig | Condition
    metrics: MetricsResult | None  # None when the policy holds (no query was made)
    now: float
    stamp: str


def plan_tick(inp: TickInput) -> TickPlan:
    """Decide, and say what to write (pure)."""
    if isinstance(inp.policy, Condition):
        return _status(inp, {}, inp.policy)
    assert inp.metrics is not None
    dep_status = (inp.deployment or {}).get("status", {}) or {}
    ready = int(dep_status.get("readyReplicas", 0) or 0)
    existing = int(dep_status.get("replicas", 0) or 0)
    state = PolicyState.restore((inp.previous.get("autoscaler") or {}).get("state"))
    spec_replicas = inp.isvc.spec.desired_replicas
    decision = decide(
        inp.policy,
        state,
        PolicyInput(
            now=inp.now,
            metrics=inp.metrics,
            spec_replicas=spec_replicas,
            ready_replicas=ready,
            starting_replicas=max(0, existing - ready),
            paused=inp.annotations.get(PAUSE_ANNOTATION) == "true",
        ),
    )
    events: list[Event] = []
    scale_to = None
    if decision.desired_replicas != spec_replicas:
        scale_to = decision.desired_replicas
        up = decision.desired_replicas > spec_replicas
        events.append(
            Event(
                "Normal",
                "ScaledUp" if up else "ScaledDown",
                f"{spec_replicas} -> {decision.desired_replicas}: {decision.reason}",
            )
        )
    plan = _status(inp, autoscaler_status(decision, inp.stamp), scaling_condition(decision))
    return TickPlan(
        scale_to=scale_to,
        status=plan.status,
        events=(*events, *plan.events),
        decision=decision,
    )


def _status(inp: TickInput, block: dict[str, Any], cond: Condition) -> TickPlan:
    previous = inp.previous
    conditions = merge_conditions(
        previous.get("conditions"), [cond], generation=inp.generation, now=inp.stamp
    )
    status: dict[str, Any] = {"conditions": conditions}
    if block:
        old = dict(previous.get("autoscaler") or {})
        # Re-stamp only when the decision says something new.
        same = {k: v for k, v in block.items() if k != "lastDecisionTime"} == {
            k: v for k, v in old.items() if k != "lastDecisionTime"
        }
        if same and "lastDecisionTime" in old:
            block = {**block, "lastDecisionTime": old["lastDecisionTime"]}
        status["autoscaler"] = block
    if not status_changed(previous, status):
        return TickPlan()
    before = find(previous.get("conditions"), "ScalingActive")
    events: tuple[Event, ...] = ()
    if before is None or before.get("status") != cond.status or before.get("reason") != cond.reason:
        etype: EventType = (
            "Warning"
            if cond.status == "False" and cond.reason != "AutoscalingDisabled"
            else "Normal"
        )
        events = (Event(etype, cond.reason, f"ScalingActive={cond.status}: {cond.message}"),)
    return TickPlan(status=status, events=events)
