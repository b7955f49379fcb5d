"""Property-based tests of the autoscaling policy: for arbitrary policies and arbitrary
sequences of observations (good, partial, missing, NaN, negative, stale; manual scales,
pauses, pauses in decisions), run through the controller's closed loop.

Invariants: desired replicas within [minReplicas, maxReplicas] (zero only by
scale-to-zero, or held when someone scaled to zero); never below the current replicas on
unusable or partial data; scale-down only after a full scale-down window of valid
decisions; the rate limits hold; the state round-trips through the status; constant
observations end in a fixed point.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpilot.autoscaling.policy import (
    Constraint,
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

T0 = 1_700_000_000.0
STEP = 15.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ strategies

seconds = st.integers(min_value=0, max_value=600).map(float)
period = st.integers(min_value=15, max_value=120).map(float)
step_limit = st.one_of(st.none(), st.integers(min_value=1, max_value=5))


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    lo = draw(st.integers(min_value=0, max_value=4))
    hi = draw(st.integers(min_value=lo, max_value=lo + 8))
    stable = draw(st.integers(min_value=30, max_value=300))
    return PolicyConfig.model_validate(
        {
            "minReplicas": lo,
            "maxReplicas": hi,
            "targets": {
                "queueDepthPerReplica": draw(st.sampled_from([0.5, 1, 4, 10])),
                "kvCacheUtilization": draw(st.sampled_from([0.3, 0.5, 0.8, 1.0])),
                "timeToFirstTokenSeconds": draw(st.sampled_from([None, 0.5, 2.0])),
            },
            "stableWindowSeconds": stable,
            "panicWindowSeconds": draw(st.integers(min_value=15, max_value=stable)),
            "panicThreshold": draw(st.sampled_from([1.5, 2.0, 4.0])),
            "tolerance": draw(st.sampled_from([0.0, 0.1, 0.3])),
            "scaleUp": {
                "stabilizationWindowSeconds": draw(st.sampled_from([0.0, 30.0, 120.0])),
                "maxReplicasPerStep": draw(step_limit),
                "periodSeconds": draw(period),
            },
            "scaleDown": {
                "stabilizationWindowSeconds": draw(seconds),
                "maxReplicasPerStep": draw(step_limit),
                "periodSeconds": draw(period),
            },
            "scaleToZero": {"enabled": draw(st.booleans()), "idleSeconds": draw(seconds)},
            "maxMetricAgeSeconds": draw(st.sampled_from([20.0, 60.0])),
            "coldStartGraceSeconds": draw(seconds),
            "manualOverrideSeconds": draw(seconds),
        }
    )


GOOD, PARTIAL = "good", "partial"
BAD = ("unavailable", "empty", "nan", "inf", "negative", "kv above 1", "stale")


@dataclass(frozen=True)
class Tick:
    dt: float
    """Seconds since the previous decision (a long one: the operator was away)."""
    kind: str
    waiting: float
    running: float
    kv: float
    ttft: float | None
    starting: int
    manual: int | None
    """spec.replicas written by someone else before this decision."""
    paused: bool


ticks = st.builds(
    Tick,
    dt=st.sampled_from([15.0] * 12 + [1.0, 5.0, 30.0, 61.0, 400.0, 3600.0]),
    kind=st.sampled_from([GOOD] * 24 + [PARTIAL] * 3 + list(BAD)),
    waiting=st.sampled_from([0.0, 0.0, 0.5, 2.0, 6.0, 40.0]),
    running=st.sampled_from([0.0, 1.0, 8.0, 16.0]),
    kv=st.sampled_from([0.0, 0.05, 0.4, 0.8, 0.95, 1.0]),
    ttft=st.sampled_from([None, 0.1, 3.0, math.nan]),
    starting=st.sampled_from([0] * 6 + [1, 2]),
    manual=st.one_of(st.none(), st.none(), st.none(), st.none(), st.integers(0, 14)),
    paused=st.sampled_from([False] * 15 + [True]),
)


@st.composite
def sequences(draw: st.DrawFn) -> list[Tick]:
    """Stretches of unchanging observations (each stretch starts with its own pause,
    manual scale or pause annotation), so that windows fill and scale-downs happen."""
    out: list[Tick] = []
    for tick, repeat in draw(
        st.lists(st.tuples(ticks, st.integers(1, 40)), min_size=1, max_size=8)
    ):
        out.append(tick)
        out += [replace(tick, dt=STEP, manual=None)] * (repeat - 1)
    return out


def window(config: PolicyConfig, tick: Tick, reporting: int, now: float) -> MetricsResult:
    """What the metrics source returns for ``tick``: every replica reports the same."""
    if tick.kind == "unavailable":
        return MetricsUnavailable("connection refused")
    if tick.kind == "empty":
        reporting = 0
    bad = {
        "nan": {"waiting": math.nan},
        "inf": {"running": math.inf},
        "negative": {"running": -1.0},
        "kv above 1": {"kv": 1.5},
    }.get(tick.kind, {})
    end = now - (config.max_metric_age_seconds + STEP if tick.kind == "stale" else 0.0)
    stamps = [end - STEP * k for k in range(12, -1, -1)]

    def sample(t: float) -> Sample:
        values = {"waiting": tick.waiting, "running": tick.running, "kv": tick.kv}
        if t == stamps[-1]:
            values.update(bad)
        return Sample(t, values["waiting"], values["running"], values["kv"], tick.ttft)

    return MetricsWindow(
        start=now - config.stable_window_seconds,
        end=now,
        step=STEP,
        replicas=tuple(
            ReplicaSeries(f"pod-{i}", tuple(sample(t) for t in stamps)) for i in range(reporting)
        ),
    )


@dataclass(frozen=True)
class Step:
    now: float
    spec: int
    ready: int
    tick: Tick
    decision: Decision
    manual: bool


def closed_loop(config: PolicyConfig, spec: int, sequence: list[Tick]) -> list[Step]:
    """The controller's loop: state through the status as JSON, /scale follows the decision
    (unless someone else writes spec.replicas first)."""
    stored: dict[str, Any] = {}
    now = T0
    out = []
    for tick in sequence:
        now += tick.dt
        manual = tick.manual is not None and tick.manual != spec
        if tick.manual is not None:
            spec = tick.manual
        starting = min(tick.starting, spec)
        ready = spec - starting
        reporting = max(ready - 1, 0) if tick.kind == PARTIAL else ready
        state = PolicyState.restore(json.loads(json.dumps(stored)))
        d = decide(
            config,
            state,
            PolicyInput(
                now=now,
                metrics=window(config, tick, reporting, now),
                spec_replicas=spec,
                ready_replicas=ready,
                starting_replicas=starting,
                paused=tick.paused,
            ),
        )
        stored = d.state.to_dict()
        out.append(Step(now, spec, ready, tick, d, manual))
        spec = d.desired_replicas
    return out


def floor(config: PolicyConfig) -> int:
    """The fewest replicas the autoscaler itself goes to."""
    if config.scale_to_zero.enabled and config.min_replicas == 0:
        return 0
    return min(max(config.min_replicas, 1), config.max_replicas)


# ------------------------------------------------------------------ properties


@SETTINGS
@given(configs(), st.integers(1, 10), sequences())
def test_desired_replicas_stay_within_bounds(
    config: PolicyConfig, start: int, sequence: list[Tick]
) -> None:
    for s in closed_loop(config, start, sequence):
        d = s.decision
        if s.tick.paused:
            assert d.desired_replicas == s.spec  # paused holds spec.replicas as it is
        elif s.spec == 0:
            assert d.desired_replicas == 0  # held at zero until someone scales up
        else:
            assert floor(config) <= d.desired_replicas <= config.max_replicas, d.reason


@SETTINGS
@given(configs(), st.integers(1, 10), sequences())
def test_never_scales_down_on_missing_invalid_stale_or_partial_data(
    config: PolicyConfig, start: int, sequence: list[Tick]
) -> None:
    for s in closed_loop(config, start, sequence):
        d = s.decision
        if s.tick.paused or s.spec == 0:
            continue
        if s.tick.kind in BAD or s.ready == 0:
            # Fail-static: the current replicas, within bounds (never zero by itself).
            held = min(max(s.spec, config.min_replicas, 1), config.max_replicas)
            assert (d.fail_static, d.desired_replicas) == (True, held), d.reason
            assert Constraint.FAIL_STATIC in d.constraints
        if s.tick.kind in BAD or s.tick.kind == PARTIAL or s.ready == 0:
            # Only maxReplicas may take replicas away on such data.
            assert d.desired_replicas >= min(s.spec, config.max_replicas), d.reason


@SETTINGS
@given(configs(), st.integers(1, 10), sequences())
def test_scale_down_needs_a_full_window_of_valid_decisions(
    config: PolicyConfig, start: int, sequence: list[Tick]
) -> None:
    window_s = config.scale_down.stabilization_window_seconds
    valid_since: float | None = None
    for s in closed_loop(config, start, sequence):
        d = s.decision
        if s.tick.paused or s.spec == 0 or d.fail_static:
            valid_since = None  # the windows are forgotten
        elif s.manual or valid_since is None:
            valid_since = s.now  # they restart with this decision
        if d.desired_replicas < min(s.spec, config.max_replicas):
            assert valid_since is not None and s.now - valid_since >= window_s, d.reason


def assert_rate_limits(config: PolicyConfig, steps: list[Step]) -> None:
    """No change of the autoscaler's own takes a period's changes past maxReplicasPerStep."""
    changes = [(s.now, s.decision.desired_replicas - s.spec) for s in steps]
    for s in steps:
        d = s.decision
        delta = d.desired_replicas - s.spec
        bound = {Constraint.MIN_REPLICAS, Constraint.MAX_REPLICAS} & set(d.constraints)
        if delta == 0 or bound or d.fail_static or s.tick.paused or s.spec == 0:
            continue
        rules = config.scale_up if delta > 0 else config.scale_down
        if rules.max_replicas_per_step is None:
            continue
        sign = 1 if delta > 0 else -1
        used = sum(
            sign * c
            for t, c in changes
            if s.now - rules.period_seconds < t < s.now and sign * c > 0
        )
        assert used + abs(delta) <= rules.max_replicas_per_step, d.reason


@SETTINGS
@given(configs(), st.integers(1, 10), sequences())
def test_rate_limits_hold(config: PolicyConfig, start: int, sequence: list[Tick]) -> None:
    assert_rate_limits(config, closed_loop(config, start, sequence))


GROWING = Tick(15.0, GOOD, 40.0, 16.0, 1.0, None, 0, None, False)
"""Every replica saturated whatever their number: the policy always wants more."""
IDLE_PARTIAL = Tick(15.0, PARTIAL, 0.0, 0.0, 0.0, None, 0, None, False)
"""Idle, but one Ready replica does not report."""


@SETTINGS
@given(configs(), st.integers(1, 4), st.lists(st.sampled_from([1.0, 15.0, 30.0]), max_size=40))
def test_rate_limits_hold_under_unbounded_demand(
    config: PolicyConfig, start: int, gaps: list[float]
) -> None:
    sequence = [replace(GROWING, dt=dt) for dt in [STEP, *gaps]]
    assert_rate_limits(config, closed_loop(config, start, sequence))


@SETTINGS
@given(configs(), st.integers(2, 10), st.integers(0, 60))
def test_no_scale_down_while_a_ready_replica_does_not_report(
    config: PolicyConfig, start: int, good: int
) -> None:
    idle = replace(IDLE_PARTIAL, kind=GOOD, waiting=0.0)
    steps = closed_loop(
        config, start, [replace(GROWING, kind=GOOD)] + [idle] * good + [IDLE_PARTIAL] * 60
    )
    for s in steps[1 + good :]:
        if s.ready >= 2 and not s.decision.fail_static:
            assert s.decision.desired_replicas >= min(s.spec, config.max_replicas)


@SETTINGS
@given(configs(), st.integers(1, 10), sequences())
def test_every_state_round_trips_through_the_status(
    config: PolicyConfig, start: int, sequence: list[Tick]
) -> None:
    for s in closed_loop(config, start, sequence):
        state = s.decision.state
        assert PolicyState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def _ms(x: float) -> float:
    return round(x, 3)


times = st.floats(min_value=0, max_value=2e9, allow_nan=False).map(_ms)
pairs = st.lists(st.tuples(times, st.integers(-20, 20)), max_size=6)


@SETTINGS
@given(
    st.builds(
        PolicyState,
        last_applied=st.one_of(st.none(), st.integers(0, 100)),
        history=pairs.map(lambda p: tuple(sorted((t, abs(r)) for t, r in p))),
        history_since=st.one_of(st.none(), times),
        scale_events=pairs.map(tuple),
        cold_start_at=st.one_of(st.none(), times),
        panic_since=st.one_of(st.none(), times),
        panic_last_trigger_at=st.one_of(st.none(), times),
        manual_at=st.one_of(st.none(), times),
        idle_since=st.one_of(st.none(), times),
        last_decision_at=st.one_of(st.none(), times),
        settled=st.booleans(),
        panic_triggered=st.booleans(),
        burst_at=st.one_of(st.none(), times),
        bursting=st.booleans(),
    )
)
def test_any_state_round_trips(state: PolicyState) -> None:
    assert PolicyState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
state_keys = st.sampled_from(
    [
        "version",
        "lastApplied",
        "history",
        "historySince",
        "scaleEvents",
        "coldStartAt",
        "panicSince",
        "panicLastTriggerAt",
        "manualAt",
        "idleSince",
        "lastDecisionAt",
        "settled",
        "panicTriggered",
        "burstAt",
        "bursting",
    ]
)


@SETTINGS
@given(
    st.one_of(
        json_values,
        st.dictionaries(state_keys, json_values).map(lambda d: {**d, "version": 2}),
        st.dictionaries(state_keys, json_values).map(lambda d: {**d, "version": 1}),
    )
)
def test_restore_never_fails(data: Any) -> None:
    """Whatever the status holds, restoring gives a usable state (the empty one at worst)."""
    state = PolicyState.restore(data)
    assert PolicyState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


@settings(SETTINGS, max_examples=25)
@given(
    configs(),
    st.integers(1, 10),
    st.sampled_from([0.0, 0.5, 2.0, 6.0, 40.0]),
    st.sampled_from([0.0, 1.0, 8.0, 16.0, 60.0]),
    st.sampled_from([0.0, 0.3, 1.0, 2.5, 6.0]),
)
def test_constant_load_ends_in_a_fixed_point(
    config: PolicyConfig, start: int, waiting: float, running: float, kv: float
) -> None:
    """A constant total load (spread over the replicas there are), decided every 15 s:
    within an hour and a half nothing changes any more, stored state and reason included."""
    stored: dict[str, Any] = {}
    spec = start
    seen = []
    for k in range(360):
        now = T0 + STEP * k
        n = spec
        stamps = [now - STEP * j for j in range(12, -1, -1)]
        metrics = MetricsWindow(
            now - config.stable_window_seconds,
            now,
            STEP,
            tuple(
                ReplicaSeries(
                    f"pod-{i}",
                    tuple(Sample(t, waiting / n, running / n, min(1.0, kv / n)) for t in stamps),
                )
                for i in range(n)
            ),
        )
        d = decide(
            config,
            PolicyState.restore(stored),
            PolicyInput(now=now, metrics=metrics, spec_replicas=spec, ready_replicas=spec),
        )
        stored = json.loads(json.dumps(d.state.to_dict()))
        seen.append((d.desired_replicas, spec, json.dumps(stored, sort_keys=True), d.reason))
        spec = d.desired_replicas
    tail = seen[-40:]
    assert all(x == tail[0] for x in tail), tail[-2:]
    assert tail[0][0] == tail[0][1]
