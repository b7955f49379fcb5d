"""A settled service is a fixed point of the policy: the same observations give the very
same stored state and reason tick after tick, so the controller has nothing to write.

Each case runs the closed loop the controller runs (spec.replicas follows the decision,
the state goes through the status as JSON before every decision) on unchanging
observations, and names the tick from which nothing changes any more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from autoscaling_fleet import T0, FleetModel, constant, run

from kvpilot.autoscaling.policy import (
    Decision,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    decide,
)
from kvpilot.autoscaling.source import (
    MetricsResult,
    MetricsUnavailable,
    MetricsWindow,
    ReplicaSeries,
    Sample,
)

STEP = 15.0
CONFIG = PolicyConfig(min_replicas=1, max_replicas=8)


@dataclass(frozen=True)
class Load:
    """Totals over the service, spread evenly over the replicas that exist."""

    running: float = 0.0
    waiting: float = 0.0
    kv: float = 0.0
    """Replica-equivalents of KV cache in use (1.2 = 60% on each of 2 replicas)."""

    def window(self, replicas: int, now: float) -> MetricsWindow:
        stamps = [now - STEP * k for k in range(12, -1, -1)]
        n = max(replicas, 1)
        return MetricsWindow(
            start=now - 180,
            end=now,
            step=STEP,
            replicas=tuple(
                ReplicaSeries(
                    pod=f"pod-{i}",
                    samples=tuple(
                        Sample(t, self.waiting / n, self.running / n, min(1.0, self.kv / n))
                        for t in stamps
                    ),
                )
                for i in range(replicas)
            ),
        )


Observe = Callable[[int, float], MetricsResult]


@dataclass(frozen=True)
class Tick:
    t: float
    spec: int
    decision: Decision
    stored: dict[str, Any]


def closed_loop(
    config: PolicyConfig,
    spec: int,
    observe: Observe,
    *,
    seconds: float = 1800,
    paused: bool = False,
    reporting: Callable[[int], int] = lambda n: n,
) -> list[Tick]:
    stored = PolicyState().to_dict()
    ticks = []
    for k in range(int(seconds // STEP) + 1):
        now = T0 + STEP * k
        state = PolicyState.from_dict(json.loads(json.dumps(stored)))
        metrics = observe(reporting(spec), now)
        d = decide(
            config,
            state,
            PolicyInput(
                now=now, metrics=metrics, spec_replicas=spec, ready_replicas=spec, paused=paused
            ),
        )
        stored = d.state.to_dict()
        ticks.append(Tick(STEP * k, spec, d, stored))
        spec = d.desired_replicas
    return ticks


def quiet_from(ticks: list[Tick]) -> float:
    """The first tick from which every decision keeps replicas, stored state and reason."""
    first = len(ticks) - 1
    while first > 0:
        prev, cur = ticks[first - 1], ticks[first]
        if (
            cur.decision.desired_replicas != cur.spec
            or cur.stored != prev.stored
            or cur.decision.reason != prev.decision.reason
            or cur.decision.state != prev.decision.state
        ):
            break
        first -= 1
    return ticks[first].t


def load(value: Load) -> Observe:
    return value.window


def prometheus_down(replicas: int, now: float) -> MetricsResult:
    return MetricsUnavailable("connection refused")


ZERO = CONFIG.with_overrides(
    {"minReplicas": 0, "scaleToZero": {"enabled": True, "idleSeconds": 300}}
)


@dataclass(frozen=True)
class Case:
    name: str
    config: PolicyConfig
    spec: int
    observe: Observe
    replicas: int
    """Where it settles."""
    quiet: float
    """Seconds from the first decision to the first of the identical ones."""
    reason: str
    paused: bool = False


CASES = [
    # Windows start with the first decision; the scale-down window's countdown is in the
    # reason for 300 s, the state is the same from the second decision on.
    Case(
        "no load at minReplicas",
        CONFIG,
        1,
        load(Load()),
        1,
        300,
        "holding 1: no requests running or waiting (stable window); raised to the minimum 1",
    ),
    # One replica per 60 s after the window, then the last scale-down ages out of the
    # rate-limit period.
    Case(
        "no load from 4 replicas: down to the minimum, then quiet",
        CONFIG,
        4,
        load(Load()),
        1,
        480,
        "holding 1: no requests running or waiting (stable window); raised to the minimum 1",
    ),
    Case(
        "constant load sized for the replicas",
        CONFIG,
        2,
        load(Load(running=20, kv=1.2)),
        2,
        0,
        "holding 2: KV cache 60%, target 80% (stable window)",
    ),
    Case(
        "constant load: KV within tolerance of its target",
        CONFIG,
        4,
        load(Load(running=52, kv=3.4)),
        4,
        0,
        "holding 4: KV cache 85%, target 80% (stable window)",
    ),
    Case(
        "constant queue within the band",
        CONFIG,
        2,
        load(Load(running=32, waiting=8, kv=1.6)),
        2,
        0,
        "holding 2: queue 4.0 waiting/replica, target 4 (stable window)",
    ),
    Case(
        "constant load above what maxReplicas can serve",
        CONFIG.with_overrides({"maxReplicas": 3}),
        3,
        load(Load(running=48, waiting=200, kv=3.0)),
        3,
        # Panic re-triggers on every tick, but nothing more can be added: the state says
        # the trigger still holds instead of dating each one.
        15,
        "holding 3: queue 66.7 waiting/replica, target 4 (stable window, panic mode); "
        "rate limit +4 per 60s; capped at maxReplicas 3",
    ),
    Case(
        "constant load grows the fleet once, then holds",
        CONFIG,
        2,
        load(Load(running=64, kv=4.0)),
        5,
        # +1 per tick on KV (100% -> 80%), then the cold starts end; the scale events
        # and superseded change points that age out later are dropped with the next
        # real change, not written on their own.
        45,
        "holding 5: KV cache 80%, target 80% (stable window)",
    ),
    Case(
        "no load with scale-to-zero: down to zero, then held there",
        ZERO,
        1,
        load(Load()),
        0,
        315,
        "holding 0: no replica to measure; scale to 1 or more to resume autoscaling",
    ),
    Case(
        "Prometheus down",
        CONFIG,
        3,
        prometheus_down,
        3,
        0,
        "holding 3: metrics unavailable: connection refused",
    ),
    Case(
        "paused",
        CONFIG,
        3,
        load(Load(running=64, kv=4.0)),
        3,
        0,
        "holding 3: autoscaling is paused",
        paused=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_settled_service_is_a_fixed_point(case: Case) -> None:
    ticks = closed_loop(case.config, case.spec, case.observe, paused=case.paused)
    last = ticks[-1]
    assert (last.spec, quiet_from(ticks), last.decision.reason) == (
        case.replicas,
        case.quiet,
        case.reason,
    )
    # Quiet for the rest of the half hour: the controller writes nothing.
    assert ticks[-1].t - quiet_from(ticks) >= 1200
    assert "lastDecisionAt" not in last.stored


def test_constant_arrivals_through_the_fleet_become_quiet() -> None:
    """Four replicas serving a constant 2.56 req/s (the fleet's queueing model, completion
    rates reported): once the KV cache has filled to its level, every decision is the
    same, stored state included."""
    ticks = run(CONFIG, constant(2.56), 3600, replicas=4, model=FleetModel())
    stored = [x.decision.state.to_dict() for x in ticks]
    reasons = [x.decision.reason for x in ticks]
    changed = [
        x.t
        for x, s, r, s0, r0 in zip(
            ticks[1:], stored[1:], reasons[1:], stored, reasons, strict=False
        )
        if s != s0 or r != r0
    ]
    assert changed[-1] == 255
    assert {x.spec for x in ticks} == {x.decision.desired_replicas for x in ticks} == {4}
    assert reasons[-1] == "holding 4: KV cache 80%, target 80% (stable window)"


def test_a_pending_change_keeps_the_time_of_each_decision() -> None:
    """While a scale-down waits (here on a replica that does not report), the state dates
    every decision: a pause in decisions must then restart the windows."""
    ticks = closed_loop(CONFIG, 4, load(Load()), seconds=600, reporting=lambda n: n - 1)
    assert {x.spec for x in ticks} == {4}
    assert [x.stored.get("lastDecisionAt") for x in ticks[-3:]] == [T0 + x.t for x in ticks[-3:]]
    assert ticks[-1].decision.reason == (
        "holding 4: no requests running or waiting (stable window); only 3 of 4 ready "
        "replicas report metrics; not scaling down"
    )


# ------------------------------------------------------------------ pauses in decisions


def _decide(state: PolicyState, at: float, spec: int, observed: Load) -> Decision:
    return decide(
        CONFIG,
        state,
        PolicyInput(
            now=T0 + at,
            metrics=observed.window(spec, T0 + at),
            spec_replicas=spec,
            ready_replicas=spec,
        ),
    )


BUSY3 = Load(running=36, kv=2.1)
"""Three replicas at 70% KV: the recommendation is 3."""
IDLE = Load()


@pytest.mark.parametrize("pause", [0, 3600])
def test_a_pause_after_settling_still_needs_a_full_window_to_scale_down(pause: float) -> None:
    """A settled state keeps no time, yet after the operator was away for an hour the load
    that dropped meanwhile scales down exactly as late as without the pause: a full
    scale-down window after the first low recommendation."""
    state = PolicyState()
    for k in range(40):
        d = _decide(state, STEP * k, 3, BUSY3)
        state = d.state
    assert (d.desired_replicas, state.settled, state.last_decision_at) == (3, True, None)
    resume = STEP * 40 + pause
    downs = []
    spec = 3
    for k in range(40):
        at = resume + STEP * k
        d = _decide(state, at, spec, IDLE)
        state = d.state
        if d.desired_replicas < spec:
            downs.append((at - resume, spec, d.desired_replicas))
        spec = d.desired_replicas
    assert downs == [(300, 3, 2), (360, 2, 1)]


def test_a_pause_while_a_change_is_pending_restarts_the_windows() -> None:
    """Waiting out the scale-down window when the operator went away for an hour: the
    windows saw nothing of that hour, so scale-down needs a full window again."""
    state = PolicyState()
    for k in range(40):
        state = _decide(state, STEP * k, 3, BUSY3).state
    for k in range(40, 50):
        d = _decide(state, STEP * k, 3, IDLE)
        state = d.state
    assert (d.desired_replicas, d.constraints[0].value, state.settled) == (
        3,
        "stabilization",
        False,
    )
    after = _decide(state, STEP * 50 + 3600, 3, IDLE)
    assert after.reason == (
        "holding 3: no requests running or waiting (stable window); "
        "scale-down needs 300s of valid metrics (0s so far)"
    )


def test_overload_at_max_replicas_then_idle() -> None:
    """Panic re-triggers on every tick of an overload at maxReplicas; the state only says
    that it still holds, so the hold runs a stable window from the first decision without
    the trigger (one decision later than from the last one with it, which is not dated),
    and scale-down then waits out the window of the panic-era recommendations (the hold
    after a burst is off here; `test_burst_hold_then_idle` has it)."""
    config = CONFIG.with_overrides({"maxReplicas": 3, "scaleDown": {"burstHoldSeconds": 0}})
    overload = Load(running=48, waiting=200, kv=3.0)
    state, spec, changes = PolicyState(), 3, []
    for k in range(100):
        at = STEP * k
        d = decide(
            config,
            state,
            PolicyInput(
                now=T0 + at,
                metrics=(overload if k < 40 else IDLE).window(spec, T0 + at),
                spec_replicas=spec,
                ready_replicas=spec,
            ),
        )
        if k in (20, 39):
            assert (d.panic, d.state.panic_triggered, d.state == state) == (True, True, True)
        if k == 40 + 11:
            assert d.panic  # the last tick of the hold: 165 s after the overload ended
        if k == 40 + 12:
            assert not d.panic
        if d.desired_replicas != spec:
            changes.append((at - 600, spec, d.desired_replicas))
        state, spec = d.state, d.desired_replicas
    assert changes == [(480, 3, 2), (540, 2, 1)]


def test_burst_hold_then_idle() -> None:
    """An overload at maxReplicas is a burst: the state stays put while it lasts
    (``bursting``), the burst is dated by the first decision without it, and no
    replica is removed until ``burstHoldSeconds`` after that."""
    config = CONFIG.with_overrides({"maxReplicas": 3, "scaleDown": {"burstHoldSeconds": 900}})
    overload = Load(running=48, waiting=200, kv=3.0)
    state, spec, changes = PolicyState(), 3, []
    for k in range(140):
        at = STEP * k
        d = decide(
            config,
            state,
            PolicyInput(
                now=T0 + at,
                metrics=(overload if k < 40 else IDLE).window(spec, T0 + at),
                spec_replicas=spec,
                ready_replicas=spec,
            ),
        )
        if k in (20, 39):
            assert (d.state.bursting, d.state == state) == (True, True)
        if d.desired_replicas != spec:
            changes.append((at - 600, spec, d.desired_replicas))
        state, spec = d.state, d.desired_replicas
    # The first idle decision ends the burst; one is removed 900 s later, then one a period.
    assert changes == [(900, 3, 2), (960, 2, 1)]
