"""The rollout planner, one observed situation per row."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kvpilot.rollout.capacity import ReplicaCapacity
from kvpilot.rollout.plan import RevisionState, RolloutConfig, RolloutInput, plan_rollout

# BF16 at TP4 and AWQ at TP1: one TP4 replica serves as much as two TP1 replicas here.
BF16 = ReplicaCapacity(tokens_per_s=2000.0, kv_tokens=400_000)
AWQ = ReplicaCapacity(tokens_per_s=1000.0, kv_tokens=100_000)


def old(desired: int, ready: int | None = None, **kw: Any) -> RevisionState:
    ready = desired if ready is None else ready
    return RevisionState("old", desired, ready, 4, BF16, existing=desired, **kw)


def new(desired: int, ready: int | None = None, **kw: Any) -> RevisionState:
    ready = desired if ready is None else ready
    kw.setdefault("existing", desired)
    kw.setdefault("starting", kw["existing"] - ready)
    return RevisionState("new", desired, ready, 1, AWQ, **kw)


NO_GATES = RolloutConfig(analysis=False, steps=(50,))


def inp(target: RevisionState, *live: RevisionState, **kw: Any) -> RolloutInput:
    kw.setdefault("wanted", 8)
    kw.setdefault("stable", "old")
    kw.setdefault("config", NO_GATES)
    return RolloutInput(target=target, live=live, **kw)


# Stable: 4 BF16 TP4 replicas (16 GPUs, 8000 tok/s); the final state: 8 AWQ TP1 replicas.
# (id, input, expected replicas, phase, reason)
CASES = [
    ("no rollout: one revision", inp(new(8), stable=None), {"new": 8}, "Stable", "Stable"),
    ("start: surge the first step onto free GPUs",
     inp(new(0), old(4), free_gpus=8), {"new": 4, "old": 4}, "Surging", "Surging"),
    ("surge bounded by free GPUs",
     inp(new(0), old(4), free_gpus=1), {"new": 1, "old": 4}, "Surging", "Surging"),
    ("surge bounded by maxSurgeGPUs",
     inp(new(0), old(4), free_gpus=8, config=replace(NO_GATES, max_surge_gpus=1)),
     {"new": 1, "old": 4}, "Surging", "Surging"),
    ("step ready: on to promotion; stable goes only as canary capacity covers it",
     inp(new(4), old(4), free_gpus=8, baseline=8000.0), {"new": 8, "old": 2}, "Surging",
     "Surging"),
    ("no free GPU: replace one stable replica (its 4 GPUs hold 4 AWQ replicas)",
     inp(new(0), old(4), free_gpus=0), {"new": 4, "old": 3}, "Replacing", "Replacing"),
    ("replacement waits for the canary pods it started",
     inp(new(4, 0, existing=4), old(3), free_gpus=0, baseline=8000.0),
     {"new": 4, "old": 3}, "Waiting", "Progressing"),
    ("maxUnavailable 0 and no free GPU: blocked, says why",
     inp(new(0), old(4), free_gpus=0, config=replace(NO_GATES, max_unavailable=0)),
     {"new": 0, "old": 4}, "Blocked", "NoRoomToReplace"),
    ("maxUnavailable below one stable replica's share: blocked",
     inp(new(0), old(4), free_gpus=0, config=replace(NO_GATES, max_unavailable=20)),
     {"new": 0, "old": 4}, "Blocked", "NoRoomToReplace"),
    ("surge pods pending 61 s for GPUs: deadlock noticed, replace instead",
     inp(new(4, 0, existing=4, pending_s=61.0), old(4), free_gpus=0, baseline=8000.0),
     {"new": 4, "old": 3}, "Replacing", "SurgeBlocked"),
    ("surge pods pending 30 s: still waiting",
     inp(new(4, 0, existing=4, pending_s=30.0), old(4), free_gpus=0, baseline=8000.0),
     {"new": 4, "old": 4}, "Waiting", "Progressing"),
    ("analysis holds at the step until Promote",
     inp(new(4), old(2), free_gpus=8, baseline=8000.0, config=replace(NO_GATES, analysis=True),
         analysis="Continue"),
     {"new": 4, "old": 2}, "Waiting", "Analysis"),
    ("analysis says Promote: finish",
     inp(new(4), old(2), free_gpus=8, baseline=8000.0, config=replace(NO_GATES, analysis=True),
         analysis="Promote"),
     {"new": 8, "old": 2}, "Surging", "Surging"),
    ("all canary ready: stable scaled to zero",
     inp(new(8), old(2), free_gpus=8, baseline=8000.0), {"new": 8, "old": 0}, "Promoting",
     "Promoting"),
    ("stable pods gone: promoted",
     inp(new(8), RevisionState("old", 0, 0, 4, BF16), baseline=8000.0),
     {"new": 8, "old": 0}, "Stable", "Promoted"),
    ("analysis Rollback: canary removed, stable restored",
     inp(new(4), old(2), free_gpus=0, baseline=8000.0, config=replace(NO_GATES, analysis=True),
         analysis="Rollback", analysis_message="error rate 20% vs 0%"),
     {"new": 0, "old": 4}, "RollingBack", "AnalysisFailed"),
    ("quality gate failed: rollback",
     inp(new(1), old(4), config=replace(NO_GATES, quality=True), quality=False),
     {"new": 0, "old": 4}, "RollingBack", "QualityGateFailed"),
    ("quality gate pending: one canary replica only",
     inp(new(0), old(4), free_gpus=8, config=replace(NO_GATES, quality=True)),
     {"new": 1, "old": 4}, "Surging", "Surging"),
    ("failed revision not retried while the spec stays",
     inp(new(0, existing=0), old(4), failed="new", failed_reason="AnalysisFailed",
         baseline=8000.0),
     {"new": 0, "old": 4}, "RolledBack", "AnalysisFailed"),
    ("abort: roll back",
     inp(new(4), old(2), config=replace(NO_GATES, abort=True), baseline=8000.0),
     {"new": 0, "old": 4}, "RollingBack", "Aborted"),
    ("abort cleared: the aborted revision rolls out again",
     inp(new(0), old(4), failed="new", failed_reason="Aborted", free_gpus=8),
     {"new": 4, "old": 4}, "Surging", "Surging"),
    ("paused: nothing moves",
     inp(new(1), old(4), free_gpus=8, config=replace(NO_GATES, paused=True)),
     {"new": 1, "old": 4}, "Paused", "Paused"),
    ("autoscaler asked for less: the canary follows, stable retires",
     inp(new(4), old(4), wanted=2, free_gpus=8), {"new": 2, "old": 0}, "Promoting",
     "Promoting"),
]  # fmt: skip


@pytest.mark.parametrize(("given", "replicas", "phase", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_plan(given: RolloutInput, replicas: dict[str, int], phase: str, reason: str) -> None:
    plan = plan_rollout(given)
    assert (plan.replicas, plan.phase, plan.reason) == (replicas, phase, reason)


def test_ready_capacity_never_planned_below_the_bound() -> None:
    """Replacing without free GPUs, step after step: the plan never removes ready capacity
    below (1 - maxUnavailable) of the baseline, and ends promoted."""
    cfg = replace(NO_GATES, max_unavailable=50, steps=(25, 50, 75))
    t, s = new(0), old(2)
    baseline = 4000.0
    phases = []
    for _ in range(20):
        plan = plan_rollout(
            RolloutInput(target=t, live=(s,), wanted=4, stable="old", baseline=baseline,
                         config=cfg, free_gpus=max(0, 8 - 4 * s.desired - t.desired))
        )  # fmt: skip
        phases.append(plan.phase)
        assert plan.floor >= 0.5 * baseline - 1e-6, phases
        if plan.reason == "Promoted":
            break
        # the cluster does what was asked: pods start and become ready
        t = new(plan.replicas["new"])
        n_old = plan.replicas["old"]
        s = RevisionState("old", n_old, n_old, 4, BF16, existing=n_old)
    assert phases[-1] == "Stable" and "Replacing" in phases, phases


def test_deadlock_event_names_the_switch() -> None:
    plan = plan_rollout(
        inp(new(4, 0, existing=4, pending_s=75.0), old(4), free_gpus=0, baseline=8000.0)
    )
    (event,) = [e for e in plan.events if e.reason == "SurgeBlocked"]
    assert event.type == "Warning" and "75s" in event.message
