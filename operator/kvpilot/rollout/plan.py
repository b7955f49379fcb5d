"""The rollout planner: from what is observed to the replicas of each revision (pure).

No step counter is stored: the step reached is derived from the canary's ready
replicas every time, so an operator restarted mid-rollout continues from what it sees.
What is kept in status between reconciles is only what cannot be observed again: the
stable revision's capacity when the rollout began (the bound), the revision that failed
(not retried until the spec changes), and the gates' own state.

Capacity, not replica counts: each revision's replicas are weighed by their estimated
tokens/s (rollout.capacity). Ready capacity stays at or above
``(1 - maxUnavailable) x min(baseline, final)``; without a free GPU the canary grows by
replacing stable replicas, a GPU block at a time, each only after the previous
replacement is ready. While any step is short of promotion, the stable revision keeps
``(1 - last step)`` of its capacity, so a rollback restores it by starting at most that
share again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from kvpilot.rollout.capacity import ReplicaCapacity

Decision = Literal["Promote", "Rollback", "Continue"]
EventType = Literal["Normal", "Warning"]
Phase = Literal[
    "Stable", "Surging", "Replacing", "Waiting", "Blocked", "Paused", "Promoting",
    "RollingBack", "RolledBack",
]  # fmt: skip

#: A canary pod waiting this long for GPUs means the surge cannot happen: replace instead.
DEADLOCK_AFTER_S: Final = 60.0


@dataclass(frozen=True)
class RevisionState:
    """One live revision as observed: its Deployment's replicas and its pods."""

    revision: str
    desired: int
    ready: int
    gpus_per_replica: int
    capacity: ReplicaCapacity
    #: pods scheduled (or waiting for the scheduler) but not yet ready
    starting: int = 0
    #: pods that exist (any state, not terminating)
    existing: int = 0
    #: longest time one of its pods has waited unschedulable (0: none waits)
    pending_s: float = 0.0

    @property
    def ready_capacity(self) -> float:
        return self.ready * self.capacity.tokens_per_s


@dataclass(frozen=True)
class RolloutConfig:
    """spec.rollout, as the planner needs it."""

    max_unavailable: int = 25
    max_surge_gpus: int | None = None
    steps: tuple[int, ...] = (50,)
    paused: bool = False
    abort: bool = False
    analysis: bool = True
    quality: bool = False


@dataclass(frozen=True)
class RolloutInput:
    """Everything one decision looks at.

    ``target``: the revision the spec asks for (desired 0 when it has no Deployment yet);
    ``wanted``: its replicas once rolled out (the pool plan's, which follows the
    autoscaler); ``live``: every other revision with a Deployment; ``stable``,
    ``baseline``, ``failed``: from the previous status; ``free_gpus``: free GPUs of the
    target's GPU type; ``analysis``: the canary analysis decision (None: no analysis runs
    for this service, so readiness alone moves the steps; "Continue": hold);
    ``quality``: the quality gate result (None: not run yet).
    """

    target: RevisionState
    wanted: int
    live: tuple[RevisionState, ...] = ()
    stable: str | None = None
    baseline: float | None = None
    failed: str | None = None
    failed_reason: str | None = None
    free_gpus: int = 0
    config: RolloutConfig = field(default_factory=RolloutConfig)
    analysis: Decision | None = None
    analysis_message: str = ""
    quality: bool | None = None
    quality_message: str = ""
    previous_phase: str | None = None
    #: an earlier surge of this canary could not be scheduled: GPUs that look free are
    #: not usable for it (memory, CPU, taints), so only replacement moves it on
    surge_blocked: bool = False
    deadlock_after_s: float = DEADLOCK_AFTER_S


@dataclass(frozen=True)
class RolloutEvent:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutPlan:
    """Replicas per revision and what to say about it."""

    replicas: dict[str, int]
    stable: str
    canary: str | None
    phase: Phase
    reason: str
    message: str
    canary_weight: int | None = None
    step: str | None = None
    baseline: float | None = None
    ready_capacity: float = 0.0
    #: the lowest ready capacity this decision can lead to (for the bound's check)
    floor: float = 0.0
    events: tuple[RolloutEvent, ...] = ()
    failed: tuple[str, str, str] | None = None
    #: revisions whose Deployments go: no replicas wanted and no pod left
    retire: tuple[str, ...] = ()
    #: decide again after this many seconds even if nothing changes (a canary pod waits
    #: for GPUs: the deadlock check must not wait for the next event)
    recheck_s: float | None = None
    surge_blocked: bool = False

    @property
    def progressing(self) -> bool:
        return self.canary is not None


def plan_rollout(inp: RolloutInput) -> RolloutPlan:
    """The replicas of every live revision for one reconcile (see the module docstring)."""
    t = inp.target
    others = [r for r in inp.live if r.revision != t.revision]
    if not others:
        return RolloutPlan(
            replicas={t.revision: inp.wanted},
            stable=t.revision,
            canary=None,
            phase="Stable",
            reason="Stable",
            message=f"revision {t.revision} serves",
            ready_capacity=t.ready_capacity,
        )
    by_rev = {r.revision: r for r in others}
    s = by_rev.get(inp.stable or "") or max(
        others, key=lambda r: (r.ready_capacity, r.desired, r.revision)
    )
    extra = [r for r in others if r is not s]
    cfg = inp.config
    cap_t, cap_s = t.capacity.tokens_per_s, s.capacity.tokens_per_s
    ready_cap = t.ready_capacity + sum(r.ready_capacity for r in others)
    baseline = (
        inp.baseline
        if inp.baseline is not None
        else max(s.desired * cap_s, ready_cap - t.ready_capacity)
    )
    final = inp.wanted * cap_t
    need = min(baseline, final)
    bound = (1.0 - cfg.max_unavailable / 100.0) * need
    weight = round(100 * t.ready_capacity / ready_cap) if ready_cap > 0 else 0

    # --- rollback, abort, a revision that failed before ---------------------------------
    why = _rollback_reason(inp, t.revision)
    if why is not None:
        reason, message = why
        restore = max(s.desired, math.ceil(baseline / cap_s - 1e-9))
        replicas = {t.revision: 0, s.revision: restore} | {r.revision: 0 for r in extra}
        done = t.existing == 0 and t.ready == 0
        phase: Phase = "RolledBack" if done else "RollingBack"
        events: list[RolloutEvent] = []
        if inp.previous_phase not in ("RollingBack", "RolledBack"):
            events.append(RolloutEvent("Warning", reason, f"rolling back {t.revision}: {message}"))
        if done and inp.previous_phase != "RolledBack":
            events.append(
                RolloutEvent("Normal", "RolledBack", f"{t.revision} removed; {s.revision} serves")
            )
        retire = tuple(r.revision for r in (t, *extra) if r.existing == 0 and r.ready == 0)
        return RolloutPlan(
            replicas=replicas, canary=None, phase=phase, reason=reason,
            message=message, events=tuple(events), failed=(t.revision, reason, message),
            retire=retire, floor=ready_cap, stable=s.revision, baseline=baseline,
            ready_capacity=ready_cap,
        )  # fmt: skip

    # --- progress, derived from the canary's ready replicas ----------------------------
    steps = [p / 100.0 for p in cfg.steps]
    goals = [max(1, math.ceil(p * inp.wanted - 1e-9)) for p in steps]
    reached = sum(1 for g in goals if t.ready >= g)
    # No decision source (analysis not running for this service): readiness moves steps.
    gate = (not cfg.analysis) or inp.analysis is None or inp.analysis == "Promote"
    quality_wait = cfg.quality and inp.quality is None
    if quality_wait:
        share = min(steps[0], 1.0 / max(1, inp.wanted)) if steps else 1.0
    elif reached == 0:
        share = steps[0] if steps else (1.0 if gate else 0.0)
    elif reached < len(steps):
        share = steps[reached] if gate else steps[reached - 1]
    else:
        share = 1.0 if gate else steps[-1]
    waiting = (reached > 0 or not steps) and not gate and not quality_wait
    step_text = f"{min(reached, len(steps))}/{len(steps)}" + (" promoting" if share >= 1.0 else "")

    if cfg.paused:
        replicas = {r.revision: r.desired for r in (t, *others)}
        return RolloutPlan(
            replicas=replicas, canary=t.revision, phase="Paused", reason="Paused",
            message=f"spec.rollout.paused: canary {t.revision} at {weight}% of ready capacity",
            canary_weight=weight, step=step_text, floor=ready_cap,
            events=_on_change(inp, "Paused", "Normal", "Paused",
                              f"rollout of {t.revision} paused at {weight}%"),
            stable=s.revision, baseline=baseline, ready_capacity=ready_cap,
        )  # fmt: skip

    n_t_goal = inp.wanted if share >= 1.0 else max(1, math.ceil(share * inp.wanted - 1e-9))
    n_s_goal = 0 if share >= 1.0 else math.ceil((1.0 - share) * baseline / cap_s - 1e-9)
    n_s_goal = min(n_s_goal, s.desired)
    desired_t, desired_s = t.desired, s.desired
    desired_t = min(desired_t, n_t_goal)  # the autoscaler may have asked for less
    extra_desired = {r.revision: r.desired for r in extra}
    events = []

    # 1. Surge onto free GPUs, within maxSurgeGPUs.
    held = sum(r.desired * r.gpus_per_replica for r in (t, *others))
    base_gpus = math.ceil(baseline / cap_s - 1e-9) * s.gpus_per_replica
    final_gpus = inp.wanted * t.gpus_per_replica
    surge_used = max(0, held - max(base_gpus, final_gpus))
    budget = inp.free_gpus
    if cfg.max_surge_gpus is not None:
        budget = min(budget, max(0, cfg.max_surge_gpus - surge_used))
    blocked = t.pending_s >= inp.deadlock_after_s
    add = max(0, n_t_goal - desired_t)
    no_surge = blocked or inp.surge_blocked
    surge = 0 if no_surge else min(add, budget // t.gpus_per_replica)
    desired_t += surge
    phase = "Surging" if surge else "Waiting"
    reason, message = "Surging", ""

    # 2. Retire old capacity the canary's ready capacity already covers (make before break).
    def removable(cap: float, desired: int, ready: int, floor: float, keep: int) -> int:
        k = 0
        lost = 0.0
        while desired - k > keep:
            unready = max(0, desired - ready - k)
            loss = 0.0 if unready > 0 else cap
            if ready_cap - lost - loss < floor - 1e-6:
                break
            lost += loss
            k += 1
        return k

    for r in extra:
        k = removable(r.capacity.tokens_per_s, r.desired, r.ready, need, 0)
        extra_desired[r.revision] = r.desired - k
    k_s = removable(cap_s, desired_s, s.ready, need, n_s_goal)
    desired_s -= k_s

    # 3. No free GPU (or a surge pod that cannot schedule): replace stable replicas.
    short = n_t_goal - desired_t
    if (short > 0 or blocked) and not surge and not quality_wait and not (waiting and share < 1.0):
        # One replacement at a time: the previous one's canary pods load first (a pod
        # that waits for GPUs is not loading; it waits for this replacement).
        if t.starting == 0 or blocked:
            per = max(1, math.ceil(t.gpus_per_replica / s.gpus_per_replica))
            unready_s = max(0, desired_s - s.ready)
            lost = max(0, per - unready_s) * cap_s
            # Replacement moves whole GPU blocks, so the stable share rounds down here; one
            # stable replica stays until promotion (rollback restores from it).
            keep = 0 if share >= 1.0 else max(1, math.floor((1.0 - share) * baseline / cap_s))
            room_ok = desired_s - per >= keep
            if desired_s <= keep:
                pass  # nothing left to replace: the canary waits for what was released
            elif room_ok and ready_cap - lost >= bound - 1e-6:
                desired_s -= per
                freed = per * s.gpus_per_replica + max(0, budget - surge * t.gpus_per_replica)
                desired_t += max(0, min(short, freed // t.gpus_per_replica))
                phase, reason = "Replacing", "Replacing"
                cause = (
                    "its surge pods could not be scheduled"
                    if inp.surge_blocked
                    else "no free GPU for a surge"
                )
                message = (
                    f"{cause}: replacing {per} stable replica(s) of {s.revision} with {t.revision}"
                )
            elif t.starting == 0 or blocked:
                phase, reason = "Blocked", "NoRoomToReplace"
                message = (
                    f"no free {t.gpus_per_replica}-GPU slot for {t.revision}, and replacing a "
                    f"stable replica would drop ready capacity below {cfg.max_unavailable}% "
                    "unavailable; raise spec.rollout.maxUnavailable or free GPUs"
                )
        if blocked and phase != "Blocked":
            if inp.previous_phase not in ("Replacing",):
                events.append(
                    RolloutEvent(
                        "Warning",
                        "SurgeBlocked",
                        f"a {t.revision} pod has waited {t.pending_s:.0f}s for GPUs: no surge "
                        "is possible, replacing stable replicas one at a time instead",
                    )
                )
            phase, reason = "Replacing", "SurgeBlocked"
            message = message or (
                f"{t.revision} pods wait for GPUs; replacing stable replicas of {s.revision}"
            )
    if phase == "Surging":
        message = (
            f"surging {t.revision} onto free GPUs ({surge} replica(s) added, "
            f"{inp.free_gpus} GPU(s) were free)"
        )
    if phase == "Waiting":
        if quality_wait:
            reason, message = "QualityGate", f"comparing {t.revision} with {s.revision}"
        elif waiting:
            reason = "Analysis"
            message = f"step {reached}/{len(steps)} reached; waiting for the canary analysis" + (
                f": {inp.analysis_message}" if inp.analysis_message else ""
            )
        else:
            reason, message = "Progressing", f"{t.revision} replicas starting"

    # 4. Promotion complete: the old revisions are gone.
    replicas = {t.revision: desired_t, s.revision: desired_s, **extra_desired}
    retire = tuple(r.revision for r in others if replicas[r.revision] == 0 and r.existing == 0)
    if share >= 1.0 and t.ready >= inp.wanted and all(replicas[r.revision] == 0 for r in others):
        if all(r.existing == 0 for r in others):
            return RolloutPlan(
                replicas={t.revision: inp.wanted} | {r.revision: 0 for r in others},
                stable=t.revision, canary=None, phase="Stable", reason="Promoted",
                message=f"{t.revision} promoted; {s.revision} removed", baseline=None,
                ready_capacity=ready_cap, retire=retire, floor=ready_cap,
                events=(RolloutEvent("Normal", "Promoted",
                                     f"{t.revision} promoted; {s.revision} removed"),),
            )  # fmt: skip
        phase, reason = "Promoting", "Promoting"
        message = f"{t.revision} serves; waiting for {s.revision}'s pods to go"
    if phase == "Waiting" and share >= 1.0 and reason == "Progressing":
        phase, reason = "Promoting", "Promoting"
        message = f"promoting {t.revision}: replacing the rest of {s.revision}"
    floor = ready_cap - sum(
        max(0, (r.desired - replicas[r.revision]) - max(0, r.desired - r.ready))
        * r.capacity.tokens_per_s
        for r in others
    )
    said = any(e.reason == reason for e in events)
    if not said and (phase in ("Surging", "Replacing", "Blocked") or inp.previous_phase is None):
        events.extend(
            _on_change(inp, phase, "Warning" if phase == "Blocked" else "Normal", reason,
                       message)
        )  # fmt: skip
    elif phase == "Promoting":
        events.extend(_on_change(inp, phase, "Normal", "Promoting", message))
    recheck = None
    if 0 < t.pending_s < inp.deadlock_after_s:
        recheck = inp.deadlock_after_s - t.pending_s + 1.0
    return RolloutPlan(
        replicas=replicas, canary=t.revision, phase=phase, reason=reason, message=message,
        canary_weight=weight, step=step_text, events=tuple(events), retire=retire,
        floor=floor, recheck_s=recheck, surge_blocked=no_surge, stable=s.revision,
        baseline=baseline,
        ready_capacity=ready_cap,
    )  # fmt: skip


def _rollback_reason(inp: RolloutInput, target: str) -> tuple[str, str] | None:
    if inp.config.abort:
        return "Aborted", "spec.rollout.abort is set; the stable revision keeps serving"
    if inp.failed == target and inp.failed_reason != "Aborted":
        return inp.failed_reason or "Failed", f"{target} failed before; change the spec to retry"
    if inp.config.quality and inp.quality is False:
        return "QualityGateFailed", inp.quality_message or "the quality gate failed"
    if inp.config.analysis and inp.analysis == "Rollback":
        return "AnalysisFailed", inp.analysis_message or "the canary analysis failed"
    return None


def _on_change(
    inp: RolloutInput, phase: str, etype: EventType, reason: str, message: str
) -> tuple[RolloutEvent, ...]:
    """One Event when the phase changes (a steady phase says nothing new)."""
    if inp.previous_phase == phase:
        return ()
    return (RolloutEvent(etype, reason, message),)


def capacity_floor(revisions: Sequence[RevisionState]) -> float:
    """Ready capacity of a set of revisions (what the bound is checked against)."""
    return sum(r.ready_capacity for r in revisions)
