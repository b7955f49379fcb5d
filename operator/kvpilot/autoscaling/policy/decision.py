"""`decide()`: one decision as a composition of its stages.

The state as of now -> (paused | adopt a manual change | at zero) -> evaluate
the metrics (fail-static on bad data) -> recommend -> stabilise -> rate-limit
-> bound -> reason text and the state to keep.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kvpilot.autoscaling.policy.config import PolicyConfig
from kvpilot.autoscaling.policy.contract import (
    Constraint,
    Decision,
    Observed,
    PolicyInput,
    Signal,
)
from kvpilot.autoscaling.policy.limits import bounded, rate_limited
from kvpilot.autoscaling.policy.reason import Hold, reason_text
from kvpilot.autoscaling.policy.recommend import Choice, choose
from kvpilot.autoscaling.policy.signals import Evaluation, Failure, evaluate
from kvpilot.autoscaling.policy.stabilize import stabilised
from kvpilot.autoscaling.policy.state import PolicyState


def decide(config: PolicyConfig, state: PolicyState, inp: PolicyInput) -> Decision:
    """Compute one decision. Pure: same inputs, same Decision.

    Call it on a steady cadence well under the stable window (e.g. every 15 s):
    a longer pause while a change waits on the windows restarts them. With
    nothing new observed, the returned state is the one passed in.
    """
    decision = _decision(config, state.as_of(config, inp.now), inp)
    if decision.state == state.pruned(config, inp.now):
        # Nothing new but entries that aged out: keep the stored state as it is (they go
        # with the next real change), so a settled service is written once, not once
        # more for every entry that expires.
        return replace(decision, state=state)
    return decision


def _decision(config: PolicyConfig, carried: PolicyState, inp: PolicyInput) -> Decision:
    if inp.paused:
        return _paused(carried, inp.spec_replicas)
    state = _adopted(carried, inp)
    if inp.spec_replicas == 0:
        return _at_zero(state)
    state, sit = _situation(config, state, inp)
    ev = evaluate(config, inp)
    if isinstance(ev, Failure):
        return _fail_static(config, state, inp, sit, ev)
    return _scale(config, state, inp, sit, ev, carried=carried)


@dataclass(frozen=True)
class _Situation:
    """What holds this decision before the metrics are read."""

    floor: int
    """The lowest replicas allowed unless scale-to-zero applies: max(minReplicas, 1)."""
    starting: int
    """Replicas in spec.replicas that are not Ready yet."""
    in_cold_start: bool
    """Starting replicas count as capacity (within the grace after the scale-up)."""
    manual_left: float | None
    """Seconds a manual change of spec.replicas is still held; None when none is."""


def _adopted(state: PolicyState, inp: PolicyInput) -> PolicyState:
    """Someone else wrote spec.replicas: adopt it, hold it, restart the windows."""
    spec, last = inp.spec_replicas, state.last_applied
    if last is None or spec == last:
        return state
    return replace(
        state.cleared(),
        burst_at=None,
        bursting=False,
        manual_at=inp.now,
        cold_start_at=inp.now if spec > last else state.cold_start_at,
    )


def _situation(
    config: PolicyConfig, state: PolicyState, inp: PolicyInput
) -> tuple[PolicyState, _Situation]:
    """Manual hold and cold start as of now (expired ones are dropped from the state)."""
    now, spec = inp.now, inp.spec_replicas
    manual_left = None
    if state.manual_at is not None:
        left = config.manual_override_seconds - (now - state.manual_at)
        manual_left = left if left > 0 else None
    if manual_left is None:
        state = replace(state, manual_at=None)
    starting = max(inp.starting_replicas, spec - inp.ready_replicas, 0)
    if starting == 0:
        state = replace(state, cold_start_at=None)
    elif state.cold_start_at is None:
        # Replicas already loading when first seen get their grace from now.
        state = replace(state, cold_start_at=now)
    in_cold_start = (
        starting > 0
        and state.cold_start_at is not None
        and now - state.cold_start_at < config.cold_start_grace_seconds
    )
    return state, _Situation(
        floor=max(config.min_replicas, 1),
        starting=starting,
        in_cold_start=in_cold_start,
        manual_left=manual_left,
    )


def _scale(
    config: PolicyConfig,
    state: PolicyState,
    inp: PolicyInput,
    sit: _Situation,
    ev: Evaluation,
    *,
    carried: PolicyState,
) -> Decision:
    """A decision on usable metrics; ``carried`` is the state as it came in."""
    now, spec = inp.now, inp.spec_replicas
    # Scale-to-zero needs the feature, minReplicas 0 and a long enough idle spell.
    idle_since = (state.idle_since if state.idle_since is not None else now) if ev.idle else None
    zero_ok = (
        config.scale_to_zero.enabled
        and config.min_replicas == 0
        and idle_since is not None
        and now - idle_since >= config.scale_to_zero.idle_seconds
    )
    counted_starting = sit.starting if sit.in_cold_start else 0
    choice = choose(
        config,
        ev,
        spec=spec,
        capacity=max(inp.ready_replicas, ev.reporting, 1) + counted_starting,
        cold_start=sit.in_cold_start,
        may_panic=sit.manual_left is None,
        # A trigger that held at the last (undated) decision is taken to hold until now.
        panic_last_trigger_at=now if state.panic_triggered else state.panic_last_trigger_at,
        now=now,
    )
    rec = choice.best.replicas
    state = state.recorded(now, rec)
    burst = choice.triggered or _saturated(config, ev)

    holds: list[Hold] = []
    if choice.cold_capped:
        note = (
            f"{sit.starting} starting replica(s) count as capacity until Ready "
            "(queue/TTFT wait for them)"
        )
        holds.append(Hold(Constraint.COLD_START, note))
    target, stab = stabilised(
        config,
        state,
        now=now,
        spec=spec,
        rec=rec,
        panic=choice.panic,
        manual_left=sit.manual_left,
        burst_left=_burst_left(config, state, now, bursting=burst or state.bursting),
        reporting=ev.reporting,
        ready=inp.ready_replicas,
    )
    holds += stab
    if sit.manual_left is None:
        target, limit = rate_limited(config, state.scale_events, now, spec, target)
        holds += [limit] if limit else []
    lo = 0 if zero_ok else sit.floor
    desired, bound = bounded(target, lo, config.max_replicas)
    holds += [bound] if bound else []
    # Nothing waits when the recommendation, within bounds, is what is applied.
    settled = bounded(rec, lo, config.max_replicas)[0] == desired

    window = f"{choice.window} window, panic mode" if choice.panic else f"{choice.window} window"
    next_state = _next_state(
        carried, state, choice, now=now, idle_since=idle_since, settled=settled, burst=burst
    ).after_change(now, spec, desired)
    return Decision(
        desired_replicas=desired,
        current_replicas=spec,
        recommendation=rec,
        signal=choice.best.signal,
        constraints=tuple(h.constraint for h in holds),
        panic=choice.panic,
        fail_static=False,
        reason=reason_text(spec, desired, f"{choice.best.text} ({window})", holds),
        condition_reason="ManualOverride" if sit.manual_left is not None else "ValidMetrics",
        observed=Observed(
            reporting_replicas=ev.reporting,
            waiting_per_replica=ev.stable.waiting_per_replica,
            running_per_replica=ev.stable.running_per_replica,
            kv_cache_utilization=ev.stable.kv_per_replica,
            ttft_seconds=ev.stable.ttft,
        ),
        state=next_state,
    )


def _saturated(config: PolicyConfig, ev: Evaluation) -> bool:
    """A queue over its target in the panic window: demand outran the replicas."""
    target = config.targets.queue_depth_per_replica * (1 + config.tolerance)
    return ev.panic.waiting_per_replica > target


def _burst_left(
    config: PolicyConfig, state: PolicyState, now: float, *, bursting: bool
) -> float | None:
    """Seconds scale-down still waits: the whole hold while a burst lasts, then what is
    left of it after the burst ended; None when nothing holds (or the hold is 0)."""
    hold = config.scale_down.burst_hold()
    if bursting:
        return hold if hold > 0 else None
    if state.burst_at is None:
        return None
    left = hold - (now - state.burst_at)
    return left if left > 0 else None


def _next_state(
    carried: PolicyState,
    state: PolicyState,
    choice: Choice,
    *,
    now: float,
    idle_since: float | None,
    settled: bool,
    burst: bool,
) -> PolicyState:
    """The state after a decision on usable metrics, before the change is applied."""
    last_trigger = now if state.panic_triggered else state.panic_last_trigger_at
    out = replace(
        state,
        # A burst is dated when it ends, so one that lasts leaves the state as it is.
        bursting=burst,
        burst_at=now if state.bursting and not burst else state.burst_at,
        idle_since=idle_since,
        panic_last_trigger_at=(now if choice.triggered else last_trigger) if choice.panic else None,
        panic_triggered=False,
        panic_since=(
            (state.panic_since if state.panic_since is not None else now) if choice.panic else None
        ),
    ).marked(now, settled=settled)
    if choice.triggered:
        # An overload at maxReplicas triggers panic on every tick. Dating each trigger
        # would be the only change: say "it still holds" instead, so the state stays put.
        undated = replace(
            out, panic_last_trigger_at=carried.panic_last_trigger_at, panic_triggered=True
        )
        if replace(undated, panic_triggered=carried.panic_triggered) == carried:
            return undated
    return out


def _fail_static(
    config: PolicyConfig, state: PolicyState, inp: PolicyInput, sit: _Situation, ev: Failure
) -> Decision:
    """Metrics that cannot be trusted: hold the current replicas (within bounds) and
    forget the windows, so scale-down again needs a full window of good data."""
    spec = inp.spec_replicas
    holds = [Hold(Constraint.FAIL_STATIC)]
    if sit.manual_left is not None:
        holds.append(Hold(Constraint.MANUAL_OVERRIDE))
    desired, bound = bounded(spec, sit.floor, config.max_replicas)
    holds += [bound] if bound else []
    return Decision(
        desired_replicas=desired,
        current_replicas=spec,
        recommendation=None,
        signal=Signal.NONE,
        constraints=tuple(h.constraint for h in holds),
        panic=False,
        fail_static=True,
        reason=reason_text(spec, desired, ev.message, holds),
        condition_reason=ev.condition_reason,
        observed=None,
        state=state.cleared().after_change(inp.now, spec, desired),
    )


def _paused(state: PolicyState, spec: int) -> Decision:
    return Decision(
        desired_replicas=spec,
        current_replicas=spec,
        recommendation=None,
        signal=Signal.NONE,
        constraints=(Constraint.PAUSED,),
        panic=False,
        fail_static=False,
        reason=f"holding {spec}: autoscaling is paused",
        condition_reason="Paused",
        observed=None,
        state=replace(state.cleared(), last_applied=spec, manual_at=None),
    )


def _at_zero(state: PolicyState) -> Decision:
    return Decision(
        desired_replicas=0,
        current_replicas=0,
        recommendation=None,
        signal=Signal.NONE,
        constraints=(Constraint.SCALED_TO_ZERO,),
        panic=False,
        fail_static=False,
        reason="holding 0: no replica to measure; scale to 1 or more to resume autoscaling",
        condition_reason="ScaledToZero",
        observed=None,
        state=replace(state.cleared(), last_applied=0, cold_start_at=None),
    )
