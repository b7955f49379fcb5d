"""Decision-level tests of the autoscaling policy: whole decisions for hand-made windows."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from kvpilot.autoscaling.policy import (
    DEFAULT_POLICY,
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

NOW = 1_700_000_000.0
STEP = 15.0
CONFIG = PolicyConfig(min_replicas=1, max_replicas=8)


def uniform(
    pods: int,
    *,
    waiting: float = 0.0,
    running: float = 8.0,
    kv: float = 0.5,
    ttft: float | None = None,
    completed: float | None = None,
    end: float = NOW,
    seconds: float = 180.0,
    last_scraped_at: float | None = None,
) -> MetricsWindow:
    """Every pod reports the same values at every step of the window."""
    stamps = [end - k * STEP for k in range(int(seconds // STEP), -1, -1)]
    return MetricsWindow(
        start=end - seconds,
        end=end,
        step=STEP,
        replicas=tuple(
            ReplicaSeries(
                pod=f"pod-{i}",
                samples=tuple(
                    Sample(
                        t, waiting, running, kv, ttft_seconds=ttft, completed_per_second=completed
                    )
                    for t in stamps
                ),
                last_scraped_at=last_scraped_at,
            )
            for i in range(pods)
        ),
    )


def with_bad_sample(window: MetricsWindow, **values: float) -> MetricsWindow:
    """The same window with one sample of the first pod changed."""
    first = window.replicas[0]
    samples = list(first.samples)
    s = samples[3]
    samples[3] = Sample(
        s.timestamp,
        values.get("waiting", s.waiting),
        values.get("running", s.running),
        values.get("kv", s.kv_cache_utilization),
    )
    bad = ReplicaSeries(first.pod, tuple(samples))
    return MetricsWindow(window.start, window.end, window.step, (bad, *window.replicas[1:]))


def settled(applied: int, rec: int | None = None, now: float = NOW) -> PolicyState:
    """An autoscaler that has held `applied` replicas for a while, recommending `rec`."""
    rec = applied if rec is None else rec
    return PolicyState(
        last_applied=applied,
        history=tuple((now - 300 + 15 * k, rec) for k in range(20)),
        history_since=now - 1000,
    )


def summary(d: Decision) -> tuple[object, ...]:
    return (
        d.desired_replicas,
        d.signal.value,
        tuple(c.value for c in d.constraints),
        d.panic,
        d.fail_static,
        d.condition_reason,
    )


def one(
    metrics: MetricsResult,
    *,
    spec: int = 4,
    ready: int | None = None,
    starting: int = 0,
    state: PolicyState | None = None,
    config: PolicyConfig = CONFIG,
    now: float = NOW,
    paused: bool = False,
) -> Decision:
    return decide(
        config,
        settled(spec) if state is None else state,
        PolicyInput(
            now=now,
            metrics=metrics,
            spec_replicas=spec,
            ready_replicas=spec - starting if ready is None else ready,
            starting_replicas=starting,
            paused=paused,
        ),
    )


IDLE4 = uniform(4, running=1.0, kv=0.05)
"""Four nearly idle replicas: left alone, the policy would remove one."""


# ------------------------------------------------------------------ fail-static


@dataclass(frozen=True)
class Case:
    name: str
    metrics: MetricsResult
    expected: tuple[object, ...]
    reason: str | None = None
    kwargs: dict[str, object] = field(default_factory=dict)


HOLD_FAIL = (4, "none", ("failStatic",), False, True)

FAIL_STATIC = [
    Case(
        "valid idle metrics scale down (reference)",
        IDLE4,
        (3, "kvCache", ("rateLimit",), False, False, "ValidMetrics"),
        "scaling down 4 -> 3: KV cache 5%, target 80% (stable window); rate limit -1 per 60s",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "prometheus down",
        MetricsUnavailable("Prometheus query for waiting failed: cannot connect"),
        (*HOLD_FAIL, "MetricsUnavailable"),
        "holding 4: metrics unavailable: Prometheus query for waiting failed: cannot connect",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "no series",
        MetricsWindow(NOW - 180, NOW, STEP, ()),
        (*HOLD_FAIL, "NoMetrics"),
        "holding 4: no replica reports metrics in the last 180s (4 ready, 0 starting)",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "samples stop two minutes ago",
        uniform(4, running=1.0, kv=0.05, end=NOW - 120, seconds=60),
        (*HOLD_FAIL, "MetricsStale"),
        "holding 4: newest metrics are 120s old (limit 60s)",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "range query repeats values the scraper stopped collecting",
        uniform(4, running=1.0, kv=0.05, last_scraped_at=NOW - 200),
        (*HOLD_FAIL, "MetricsStale"),
        "holding 4: newest metrics are 200s old (limit 60s)",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "NaN waiting",
        with_bad_sample(IDLE4, waiting=math.nan),
        (*HOLD_FAIL, "MetricsInvalid"),
        "holding 4: invalid metrics from pod-0: waiting is nan",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "negative running",
        with_bad_sample(IDLE4, running=-3),
        (*HOLD_FAIL, "MetricsInvalid"),
        "holding 4: invalid metrics from pod-0: running is negative (-3)",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "KV utilization reported in percent",
        with_bad_sample(IDLE4, kv=80),
        (*HOLD_FAIL, "MetricsInvalid"),
        "holding 4: invalid metrics from pod-0: kv cache utilization 80 is outside [0, 1]",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "infinite KV",
        with_bad_sample(IDLE4, kv=math.inf),
        (*HOLD_FAIL, "MetricsInvalid"),
        "holding 4: invalid metrics from pod-0: kv cache utilization is inf",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "bounds still apply while holding",
        MetricsUnavailable("Prometheus query for waiting failed: timed out"),
        (8, "none", ("failStatic", "maxReplicas"), False, True, "MetricsUnavailable"),
        "scaling down 12 -> 8: metrics unavailable: Prometheus query for waiting failed: "
        "timed out; capped at maxReplicas 8",
        {"spec": 12, "state": settled(12)},
    ),
    Case(
        "only one of four ready replicas reports: no scale-down",
        uniform(1, running=1.0, kv=0.05),
        (4, "kvCache", ("partialMetrics",), False, False, "ValidMetrics"),
        "holding 4: KV cache 5%, target 80% (stable window); only 1 of 4 ready replicas "
        "report metrics; not scaling down",
        {"state": settled(4, rec=1)},
    ),
    Case(
        "a stale replica counts as not reporting",
        MetricsWindow(
            NOW - 180,
            NOW,
            STEP,
            (
                *uniform(3, running=1.0, kv=0.05).replicas,
                ReplicaSeries(
                    "pod-3", uniform(1, running=1.0, kv=0.05, end=NOW - 90).replicas[0].samples
                ),
            ),
        ),
        (4, "kvCache", ("partialMetrics",), False, False, "ValidMetrics"),
        None,
        {"state": settled(4, rec=1)},
    ),
    Case(
        "NaN TTFT (no request finished) is no reason to hold",
        uniform(4, running=1.0, kv=0.05, ttft=math.nan),
        (3, "kvCache", ("rateLimit",), False, False, "ValidMetrics"),
        None,
        {
            "state": settled(4, rec=1),
            "config": CONFIG.model_copy(
                update={
                    "targets": CONFIG.targets.model_copy(
                        update={"time_to_first_token_seconds": 1.0}
                    )
                }
            ),
        },
    ),
]


@pytest.mark.parametrize("case", FAIL_STATIC, ids=lambda c: c.name)
def test_fail_static(case: Case) -> None:
    d = one(case.metrics, **case.kwargs)  # type: ignore[arg-type]
    assert summary(d) == case.expected
    if case.reason is not None:
        assert d.reason == case.reason
    assert d.scaling_active is not d.fail_static


def test_no_scale_down_on_the_first_good_data_after_an_outage() -> None:
    """Fail-static forgets the windows: scale-down waits for a full window of good data."""
    state = one(MetricsUnavailable("timed out"), state=settled(4, rec=1)).state
    got: list[tuple[object, ...]] = []
    reasons = []
    for k in range(1, 22):
        d = one(uniform_at(IDLE4, 15 * k), state=state, now=NOW + 15 * k)
        state = d.state
        got.append((15 * k, *summary(d)[:3]))
        reasons.append(d.reason)
    # The first recommendation after the outage is at +15 s; 300 s later it may scale down.
    assert got == [
        *[(15 * k, 4, "kvCache", ("windowNotCovered",)) for k in range(1, 21)],
        (315, 3, "kvCache", ("rateLimit",)),
    ]
    assert reasons[0] == (
        "holding 4: KV cache 5%, target 80% (stable window); scale-down needs 300s of valid "
        "metrics (0s so far)"
    )


def test_values_repeated_across_a_scrape_gap_are_not_measurements() -> None:
    """Prometheus was down until a minute ago: a range query fills the gap with the last
    value from before it (a deep queue); only the fresh, idle samples count."""

    def replica(i: int) -> ReplicaSeries:
        samples = []
        for k in range(13):
            t = NOW - 180 + STEP * k
            if t <= NOW - 60:
                samples.append(Sample(t, 20.0, 8.0, 0.9, scraped_at=NOW - 400))
            else:
                samples.append(Sample(t, 0.0, 1.0, 0.05, scraped_at=t - 1))
        return ReplicaSeries(f"pod-{i}", tuple(samples), last_scraped_at=NOW - 1)

    window = MetricsWindow(NOW - 180, NOW, STEP, tuple(replica(i) for i in range(4)))
    d = one(window, state=settled(4, rec=1))
    assert summary(d) == (3, "kvCache", ("rateLimit",), False, False, "ValidMetrics")
    assert d.observed is not None and d.observed.waiting_per_replica == 0


def test_no_scale_down_right_after_a_long_pause_in_decisions() -> None:
    """The operator was down for an hour: its old windows say nothing about that hour."""
    stale_state = settled(4, rec=1, now=NOW - 3600)
    d = one(IDLE4, state=stale_state)
    assert summary(d)[:3] == (4, "kvCache", ("windowNotCovered",))


# ------------------------------------------------------------------ signals


SIGNALS = [
    Case(
        "KV within tolerance holds",
        uniform(4, running=13.0, kv=0.85),
        (4, "kvCache", (), False, False, "ValidMetrics"),
        "holding 4: KV cache 85%, target 80% (stable window)",
    ),
    Case(
        "KV above tolerance adds replicas",
        uniform(4, running=15.0, kv=0.95),
        (5, "kvCache", (), False, False, "ValidMetrics"),
        "scaling up 4 -> 5: KV cache 95%, target 80% (stable window)",
    ),
    Case(
        "a small queue vetoes scale-down although KV is low",
        uniform(4, waiting=2.0, running=16.0, kv=0.3),
        (4, "queue", (), False, False, "ValidMetrics"),
        "holding 4: queue 2.0 waiting/replica, target 4 (stable window)",
        {"state": settled(4, rec=2)},
    ),
    Case(
        "queue over target, arrival rate known: size for arrivals and drain the backlog",
        # 4 replicas each finishing 0.8/s with 20 waiting: arrivals 3.2/s (flat queue),
        # excess backlog 64 over 180 s adds 0.36/s -> 4.44 replicas.
        uniform(4, waiting=20.0, running=16.0, kv=1.0, completed=0.8),
        (5, "queue", (), False, False, "ValidMetrics"),
        "scaling up 4 -> 5: queue 20.0 waiting/replica, target 4; arrivals 3.20/s, "
        "0.80/s per replica (stable window)",
    ),
    Case(
        "queue over target, level only: each replica keeps its concurrency",
        # (16 running + 20 waiting) / (16 + 4) = 1.8 per replica -> 7.2.
        uniform(4, waiting=20.0, running=16.0, kv=1.0),
        (8, "queue", (), True, False, "ValidMetrics"),
        None,
    ),
    Case(
        "TTFT above target asks for proportionally more, capped at the panic threshold",
        uniform(4, running=10.0, kv=0.6, ttft=1.5),
        (6, "ttft", (), False, False, "ValidMetrics"),
        "scaling up 4 -> 6: TTFT 1.50s, target 1s (stable window)",
        {
            "config": CONFIG.model_copy(
                update={
                    "targets": CONFIG.targets.model_copy(
                        update={"time_to_first_token_seconds": 1.0}
                    )
                }
            )
        },
    ),
    Case(
        "paused holds spec.replicas as it is, even above max",
        uniform(4, waiting=50.0, running=16.0, kv=1.0),
        (12, "none", ("paused",), False, False, "Paused"),
        "holding 12: autoscaling is paused",
        {"spec": 12, "paused": True, "state": settled(12)},
    ),
]


@pytest.mark.parametrize("case", SIGNALS, ids=lambda c: c.name)
def test_signals(case: Case) -> None:
    d = one(case.metrics, **case.kwargs)  # type: ignore[arg-type]
    assert summary(d) == case.expected
    if case.reason is not None:
        assert d.reason == case.reason


# ------------------------------------------------------------------ sequences


@dataclass(frozen=True)
class Step:
    at: float
    spec: int
    metrics: MetricsResult
    expected: tuple[object, ...]
    ready: int | None = None
    starting: int = 0


def run_steps(
    steps: list[Step], state: PolicyState, config: PolicyConfig = CONFIG
) -> list[tuple[object, ...]]:
    got = []
    for s in steps:
        d = decide(
            config,
            state,
            PolicyInput(
                now=NOW + s.at,
                metrics=uniform_at(s.metrics, s.at),
                spec_replicas=s.spec,
                ready_replicas=s.spec - s.starting if s.ready is None else s.ready,
                starting_replicas=s.starting,
            ),
        )
        state = d.state
        got.append(summary(d)[:4])
    return got


def uniform_at(metrics: MetricsResult, at: float) -> MetricsResult:
    """Shift a window built for NOW to NOW + at."""
    if not isinstance(metrics, MetricsWindow):
        return metrics
    return MetricsWindow(
        metrics.start + at,
        metrics.end + at,
        metrics.step,
        tuple(
            ReplicaSeries(
                r.pod,
                tuple(
                    Sample(
                        s.timestamp + at,
                        s.waiting,
                        s.running,
                        s.kv_cache_utilization,
                        s.ttft_seconds,
                        s.completed_per_second,
                    )
                    for s in r.samples
                ),
                None if r.last_scraped_at is None else r.last_scraped_at + at,
            )
            for r in metrics.replicas
        ),
    )


def load4(pods: int) -> MetricsWindow:
    """A load that needs four replicas at the KV target, spread over `pods` (4 or more)."""
    return uniform(pods, running=12.8 * 4 / pods, kv=0.8 * 4 / pods)


SATURATED1 = uniform(1, waiting=30.0, running=16.0, kv=1.0)


SEQUENCES = {
    "kubectl scale up is held, then autoscaling resumes from it": (
        CONFIG,
        settled(4),
        [
            Step(0, 8, load4(8), (8, "kvCache", ("manualOverride",), False)),
            Step(150, 8, load4(8), (8, "kvCache", ("manualOverride",), False)),
            Step(285, 8, load4(8), (8, "kvCache", ("manualOverride",), False)),
            # Hold over; the recommendations since the change cover the 300 s window.
            Step(300, 8, load4(8), (7, "kvCache", ("rateLimit",), False)),
        ],
    ),
    "kubectl scale above max is clamped and held": (
        CONFIG,
        settled(4),
        [
            Step(0, 20, load4(20), (8, "kvCache", ("manualOverride", "maxReplicas"), False)),
            Step(15, 8, load4(8), (8, "kvCache", ("manualOverride",), False)),
        ],
    ),
    "kubectl scale down under load is held, then undone at once": (
        CONFIG,
        settled(4),
        [
            # Level-only queue: (16 + 30) / (16 + 4) = 2.3 replicas.
            Step(0, 1, SATURATED1, (1, "queue", ("manualOverride",), False)),
            Step(299, 1, SATURATED1, (1, "queue", ("manualOverride",), False)),
            Step(300, 1, SATURATED1, (3, "queue", (), True)),
        ],
    ),
    "kubectl scale to zero is held until someone scales up again": (
        CONFIG,
        settled(4),
        [
            Step(
                0, 0, MetricsWindow(NOW - 180, NOW, STEP, ()), (0, "none", ("scaledToZero",), False)
            ),
            Step(
                600,
                0,
                MetricsWindow(NOW - 180, NOW, STEP, ()),
                (0, "none", ("scaledToZero",), False),
            ),
            Step(
                615, 2, uniform(2, running=12.8, kv=0.8), (2, "kvCache", ("manualOverride",), False)
            ),
        ],
    ),
    "rate limit: +4 per 60 s": (
        CONFIG.model_copy(update={"max_replicas": 16}),
        settled(2),
        [
            # Level-only queue: (16 + 80) / (16 + 4) = 4.8 per replica -> 9.6.
            Step(
                0,
                2,
                uniform(2, waiting=80.0, running=16.0, kv=1.0),
                (6, "queue", ("rateLimit",), True),
            ),
            # 9.6 again with six replicas: the four added 15 s ago use up the period.
            Step(
                15,
                6,
                uniform(6, waiting=16.0, running=16.0, kv=1.0),
                (6, "queue", ("rateLimit",), True),
            ),
            Step(75, 6, uniform(6, waiting=16.0, running=16.0, kv=1.0), (10, "queue", (), True)),
        ],
    ),
    "starting replicas count as capacity; after the grace they no longer do": (
        CONFIG.model_copy(update={"max_replicas": 16}),
        PolicyState(last_applied=2, history_since=NOW - 1000),
        [
            # Level-only queue: 2 * (16 + 20) / (16 + 4) = 3.6 -> 4.
            Step(0, 2, uniform(2, waiting=20.0, running=16.0, kv=1.0), (4, "queue", (), True)),
            # While the two new replicas load, the growing backlog asks for 5, then 8: held.
            # (At first their pods do not even exist yet: spec - ready counts as starting.)
            Step(
                15,
                4,
                uniform(2, waiting=30.0, running=16.0, kv=1.0),
                (4, "queue", ("coldStart",), True),
                ready=2,
                starting=0,
            ),
            Step(
                300,
                4,
                uniform(2, waiting=60.0, running=16.0, kv=1.0),
                (4, "queue", ("coldStart",), False),
                ready=2,
                starting=2,
            ),
            # Ten minutes after the scale-up the two still loading are presumed stuck.
            Step(
                600,
                4,
                uniform(2, waiting=80.0, running=16.0, kv=1.0),
                (8, "queue", ("rateLimit",), True),
                ready=2,
                starting=2,
            ),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_sequences(name: str) -> None:
    config, state, steps = SEQUENCES[name]
    assert run_steps(steps, state, config) == [s.expected for s in steps]


# ------------------------------------------------------------------ state and config


def test_state_round_trips_through_json() -> None:
    state = PolicyState(
        last_applied=5,
        history=((NOW - 30, 5), (NOW - 15, 6)),
        history_since=NOW - 400,
        scale_events=((NOW - 15, 1),),
        cold_start_at=NOW - 15,
        panic_since=NOW - 45,
        panic_last_trigger_at=NOW - 15,
        manual_at=None,
        idle_since=None,
        last_decision_at=NOW,
    )
    data = json.loads(json.dumps(state.to_dict()))
    assert data == {
        "version": 2,
        "lastApplied": 5,
        "history": [[NOW - 30, 5], [NOW - 15, 6]],
        "historySince": NOW - 400,
        "scaleEvents": [[NOW - 15, 1]],
        "coldStartAt": NOW - 15,
        "panicSince": NOW - 45,
        "panicLastTriggerAt": NOW - 15,
        "lastDecisionAt": NOW,
    }
    assert PolicyState.from_dict(data) == state
    assert PolicyState.from_dict(PolicyState().to_dict()) == PolicyState()
    settled_state = PolicyState(last_applied=2, history=((NOW - 30, 2),), settled=True)
    assert settled_state.to_dict() == {
        "version": 2,
        "lastApplied": 2,
        "history": [[NOW - 30, 2]],
        "settled": True,
    }
    assert PolicyState.from_dict(settled_state.to_dict()) == settled_state


def test_version_1_state_converts_to_change_points() -> None:
    """A state stored before change points (one history entry per decision) keeps its
    meaning: the same windows, and the last entry dates the last decision."""
    v1 = {
        "version": 1,
        "lastApplied": 4,
        "history": [[NOW - 60, 4], [NOW - 45, 4], [NOW - 30, 3], [NOW - 15, 3]],
        "historySince": NOW - 400,
        "idleSince": NOW - 100,
    }
    assert PolicyState.from_dict(v1) == PolicyState(
        last_applied=4,
        history=((NOW - 60, 4), (NOW - 30, 3)),
        history_since=NOW - 400,
        idle_since=NOW - 100,
        last_decision_at=NOW - 15,
    )


@pytest.mark.parametrize(
    "data",
    [
        None,
        "garbage",
        {},
        {"version": 3},
        {"version": True},
        {"version": 2, "lastApplied": -1},
        {"version": 2, "lastApplied": True},
        {"version": 2, "history": [[1.0]]},
        {"version": 2, "history": [["x", 1]]},
        {"version": 2, "history": [[2.0, 1], [1.0, 2]]},
        {"version": 2, "panicSince": "yesterday"},
        {"version": 2, "settled": "yes"},
        {"version": 1, "lastApplied": -1},
    ],
)
def test_unusable_state_restores_empty(data: object) -> None:
    assert PolicyState.restore(data) == PolicyState()


def test_state_stays_small() -> None:
    """A day of decisions every 15 s keeps only the windows' worth of history."""
    state = PolicyState()
    for k in range(24 * 240):
        d = one(load4(4), state=state, now=NOW + 15 * k)
        state = d.state
    assert len(json.dumps(state.to_dict())) < 1000


def test_config_accepts_the_crd_spelling() -> None:
    spec_scaling = {
        "minReplicas": 2,
        "maxReplicas": 10,
        "targets": {"queueDepthPerReplica": 5, "kvCacheUtilization": "0.75"},
        "stableWindowSeconds": 120,
        "panicWindowSeconds": 30,
        "panicThreshold": 3,
        "tolerance": 0.05,
        "scaleUp": {"stabilizationWindowSeconds": 30, "maxReplicasPerStep": 2, "periodSeconds": 30},
        "scaleDown": {"maxReplicasPerStep": 2},
        "scaleToZero": {"enabled": True, "idleSeconds": 900},
    }
    config = PolicyConfig.model_validate(spec_scaling)
    assert config.model_dump() == {
        "min_replicas": 2,
        "max_replicas": 10,
        "targets": {
            "queue_depth_per_replica": 5.0,
            "kv_cache_utilization": 0.75,
            "time_to_first_token_seconds": None,
            "concurrency_per_replica": None,
            "batch_utilization": 0.65,
        },
        "stable_window_seconds": 120.0,
        "panic_window_seconds": 30.0,
        "panic_threshold": 3.0,
        "tolerance": 0.05,
        "forecast_seconds": 120.0,
        "scale_up": {
            "stabilization_window_seconds": 30.0,
            "max_replicas_per_step": 2,
            "period_seconds": 30.0,
        },
        "scale_down": {
            "stabilization_window_seconds": 300.0,
            "max_replicas_per_step": 2,
            "period_seconds": 60.0,
            "burst_hold_seconds": None,
        },
        "scale_to_zero": {"enabled": True, "idle_seconds": 900.0},
        "max_metric_age_seconds": 60.0,
        "cold_start_grace_seconds": 600.0,
        "manual_override_seconds": 300.0,
    }
    # The snake_case dump of the same model validates back to it.
    assert PolicyConfig.model_validate(config.model_dump()) == config


def test_defaults_are_the_documented_ones() -> None:
    d = DEFAULT_POLICY
    assert (d.min_replicas, d.max_replicas) == (1, 1)
    assert (d.targets.queue_depth_per_replica, d.targets.kv_cache_utilization) == (4.0, 0.8)
    assert (d.stable_window_seconds, d.panic_window_seconds, d.panic_threshold) == (180, 60, 2.0)
    assert d.tolerance == 0.1
    assert (d.scale_up.stabilization_window_seconds, d.scale_down.stabilization_window_seconds) == (
        0,
        300,
    )
    assert d.scale_to_zero.enabled is False


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"minReplicas": 3, "maxReplicas": 2}, "minReplicas (3) exceeds maxReplicas (2)"),
        ({"panicWindowSeconds": 200}, "panicWindowSeconds (200) exceeds stableWindowSeconds (180)"),
        ({"targets": {"kvCacheUtilization": 1.5}}, "less than or equal to 1"),
        ({"panicThreshold": 1}, "greater than 1"),
        ({"tolerance": 1}, "less than 1"),
        ({"scaleUp": {"maxReplicasPerStep": 0}}, "greater than or equal to 1"),
        ({"windows": 3}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        PolicyConfig.model_validate({"maxReplicas": 4, **data})


def test_overrides_merge_into_an_operator_wide_policy() -> None:
    operator_wide = PolicyConfig.model_validate(
        {"maxReplicas": 4, "scaleDown": {"stabilizationWindowSeconds": 600, "periodSeconds": 120}}
    )
    config = operator_wide.with_overrides(
        {
            "maxReplicas": 8,
            "scaleDown": {"maxReplicasPerStep": 2},
            "targets": {"queueDepthPerReplica": 6},
        }
    )
    assert (config.max_replicas, config.scale_down.model_dump(), config.targets.model_dump()) == (
        8,
        {
            "stabilization_window_seconds": 600.0,
            "max_replicas_per_step": 2,
            "period_seconds": 120.0,
            "burst_hold_seconds": None,
        },
        {
            "queue_depth_per_replica": 6.0,
            "kv_cache_utilization": 0.8,
            "time_to_first_token_seconds": None,
            "concurrency_per_replica": None,
            "batch_utilization": 0.65,
        },
    )
    with pytest.raises(ValidationError, match="exceeds maxReplicas"):
        operator_wide.with_overrides({"minReplicas": 5})


# ------------------------------------------------------------------ concurrency


def in_flight(pods: int, start: float, end: float, *, seconds: float = 180.0) -> MetricsWindow:
    """Every pod's running requests move linearly from `start` to `end` over the window."""
    n = int(seconds // STEP)
    stamps = [NOW - k * STEP for k in range(n, -1, -1)]
    return MetricsWindow(
        start=NOW - seconds,
        end=NOW,
        step=STEP,
        replicas=tuple(
            ReplicaSeries(
                pod=f"pod-{i}",
                samples=tuple(
                    Sample(t, 0.0, start + (end - start) * k / n, 0.05)
                    for k, t in enumerate(stamps)
                ),
            )
            for i in range(pods)
        ),
    )


CONCURRENCY = PolicyConfig.model_validate(
    {"maxReplicas": 8, "targets": {"concurrencyPerReplica": 20}}
)


@pytest.mark.parametrize(
    ("name", "metrics", "expected"),
    [
        # 4 x 20 in flight: at target, holds (KV at 5 % alone would scale down)
        ("at target", in_flight(4, 20, 20), (4, "concurrency", (), False, False, "ValidMetrics")),
        # 4 x 30 = 120 in flight / 20 = 6 replicas
        ("above", in_flight(4, 30, 30), (6, "concurrency", (), False, False, "ValidMetrics")),
        # 10 -> 22 per pod: panic-window level ~82 plus 0.27/s x 120 s ahead = ~114 -> 6
        ("rising", in_flight(4, 10, 22), (6, "concurrency", (), False, False, "ValidMetrics")),
        # 8 per pod: with 3 replicas 8 x (4/3)^3 = 19 > 18 (target less tolerance): hold 4
        ("cautious down", in_flight(4, 8, 8), (4, "concurrency", (), False, False, "ValidMetrics")),
        # 4 per pod: 3 replicas give 9.5, 2 would give 32: down to 3
        ("down", in_flight(4, 4, 4), (3, "concurrency", (), False, False, "ValidMetrics")),
    ],
)
def test_concurrency_signal(
    name: str, metrics: MetricsWindow, expected: tuple[object, ...]
) -> None:
    # Low recommendations for the last 300 s: nothing but the signal holds replicas.
    assert summary(one(metrics, config=CONCURRENCY, state=settled(4, rec=1))) == expected


def test_no_concurrency_target_leaves_sizing_to_kv() -> None:
    d = one(in_flight(4, 30, 30), state=settled(4, rec=1))
    assert (d.signal.value, d.desired_replicas) == ("kvCache", 3)
