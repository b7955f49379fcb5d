"""Canary analysis: verdicts per window and the decision they add up to (table-driven)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvpilot.rollout.analysis import (
    AnalysisConfig,
    AnalysisState,
    RevisionWindow,
    Verdict,
    advance,
    evaluate,
    needs_window,
    step,
    unavailable_verdict,
)

CFG = AnalysisConfig()
T0 = 1_800_000_000.0


def win(
    requests: float, errors: float = 0, ttft: float | None = 0.2, itl: float | None = 0.02
) -> RevisionWindow:
    return RevisionWindow(requests=requests, errors=errors, ttft_p95_s=ttft, itl_p95_s=itl)


# (id, stable, canary, kind, reason) — hand-checked against the defaults:
# min 20 requests, error limit max(2 x stable, 1 %), latency limits 1.5 x stable.
VERDICTS = [
    ("same", win(100), win(100), "Pass", "WithinThresholds"),
    # 0-error stable: the 1 % floor, not a division by zero, decides.
    ("floor-pass", win(100), win(100, 1), "Pass", "WithinThresholds"),
    ("floor-fail", win(100), win(100, 2), "Fail", "ErrorRateTooHigh"),
    # stable 2 % -> limit 4 %: 4 % passes (not above), 5 % fails.
    ("ratio-edge", win(100, 2), win(100, 4), "Pass", "WithinThresholds"),
    ("ratio-fail", win(100, 2), win(100, 5), "Fail", "ErrorRateTooHigh"),
    ("twenty-pct", win(200), win(50, 10), "Fail", "ErrorRateTooHigh"),
    # More errors than requests (counters read a moment apart) is a 100 % rate.
    ("errors>requests", win(100), win(20, 25), "Fail", "ErrorRateTooHigh"),
    # Too few canary requests: Inconclusive, even when every one failed.
    ("few-canary", win(100), win(19, 19), "Inconclusive", "TooFewRequests"),
    ("zero-canary", win(100), win(0, ttft=None, itl=None), "Inconclusive", "TooFewRequests"),
    ("few-stable", win(5), win(100), "Inconclusive", "TooFewStableRequests"),
    # TTFT 0.2 s -> limit 0.3 s.
    ("ttft-edge", win(100), win(100, ttft=0.3), "Pass", "WithinThresholds"),
    ("ttft-3x", win(100), win(100, ttft=0.6), "Fail", "TimeToFirstTokenTooHigh"),
    ("itl-3x", win(100), win(100, itl=0.06), "Fail", "InterTokenLatencyTooHigh"),
    # Latency with no data (no histogram samples, or a zero baseline) is no data.
    ("no-ttft", win(100), win(100, ttft=None), "Inconclusive", "NoData"),
    ("zero-baseline", win(100, ttft=0.0), win(100), "Inconclusive", "NoData"),
    ("nan", win(100), win(100, itl=float("nan")), "Inconclusive", "NoData"),
    # A failing check with data wins over another check without.
    ("fail-beats-nodata", win(100), win(100, 10, ttft=None), "Fail", "ErrorRateTooHigh"),
    # Faster or cleaner than stable is fine.
    ("better", win(100, 5), win(100, 0, ttft=0.1, itl=0.01), "Pass", "WithinThresholds"),
]


@pytest.mark.parametrize(
    ("stable", "canary", "kind", "reason"),
    [v[1:] for v in VERDICTS],
    ids=[v[0] for v in VERDICTS],
)
def test_evaluate(stable: RevisionWindow, canary: RevisionWindow, kind: str, reason: str) -> None:
    verdict = evaluate(stable, canary, CFG)
    assert (verdict.kind, verdict.reason) == (kind, reason)
    assert verdict.message


def test_fail_message_names_the_figures() -> None:
    verdict = evaluate(win(200), win(50, 10), CFG)
    assert verdict.message == (
        "error rate 20.0 % vs stable 0.0 % (limit 1.0 %: 2x stable, at least 1.0 %)"
    )
    check = verdict.checks[0]
    assert (check.canary, check.stable, check.limit) == (0.2, 0.0, 0.01)


def test_latency_message() -> None:
    verdict = evaluate(win(100), win(100, ttft=0.6), CFG)
    assert verdict.message == "TTFT p95 600 ms vs stable 200 ms (limit 1.5x)"


def test_too_few_requests_message() -> None:
    assert evaluate(win(100), win(3), CFG).message == (
        "canary served 3 requests in the last 60 s, fewer than the 20 needed"
    )


P = Verdict("Pass", "WithinThresholds", "ok")
F = Verdict("Fail", "ErrorRateTooHigh", "bad")
I = Verdict("Inconclusive", "TooFewRequests", "quiet")  # noqa: E741

HOLD = AnalysisConfig(interval_s=30, failure_limit=2, passes_to_promote=3)
STALL = replace(HOLD, inconclusive_policy="Rollback", inconclusive_timeout_s=90)

# (id, config, verdicts one interval (30 s) apart, decision after the last, failures, passes)
SEQUENCES = [
    ("fresh", HOLD, [], "Continue", 0, 0),
    ("three-passes", HOLD, [P, P, P], "Promote", 0, 3),
    ("two-passes", HOLD, [P, P], "Continue", 0, 2),
    ("fail-breaks-run", HOLD, [P, P, F, P, P], "Continue", 1, 2),
    ("fail-limit", HOLD, [F, P, F], "Rollback", 2, 0),
    ("fail-limit-cumulative", HOLD, [F, P, P, F], "Rollback", 2, 0),
    ("one-fail", HOLD, [F], "Continue", 1, 0),
    # An inconclusive window neither counts as a pass nor breaks the run.
    ("inconclusive-neutral", HOLD, [P, I, P, I, P], "Promote", 0, 3),
    ("hold-forever", HOLD, [I] * 40, "Continue", 0, 0),
    # Stall: inconclusive since the first I; 3 more intervals = 90 s -> roll back.
    ("stall-short", STALL, [I, I, I], "Continue", 0, 0),
    ("stall-rollback", STALL, [I, I, I, I], "Rollback", 0, 0),
    ("stall-reset-by-pass", STALL, [I, I, I, P, I, I, I], "Continue", 0, 1),
    # A breach wins even when passes are enough.
    ("fail-limit-wins", replace(HOLD, passes_to_promote=1), [F, F, P], "Rollback", 2, 1),
]


@pytest.mark.parametrize(
    ("cfg", "verdicts", "decision", "failures", "passes"),
    [s[1:] for s in SEQUENCES],
    ids=[s[0] for s in SEQUENCES],
)
def test_advance_and_decide(
    cfg: AnalysisConfig, verdicts: list[Verdict], decision: str, failures: int, passes: int
) -> None:
    state = AnalysisState.start("abc123", T0)
    now = T0
    for v in verdicts:
        now += cfg.interval_s
        state = advance(state, v, now)
        # Every step survives the trip through status.
        state = AnalysisState.from_dict(state.to_dict())
    assert state.decision(cfg, now) == decision
    assert (state.failures, state.consecutive_passes) == (failures, passes)
    assert state.explain(cfg, now)


def test_readiness_timeout() -> None:
    cfg = AnalysisConfig(ready_timeout_s=120)
    state = AnalysisState.start("abc123", T0)
    assert state.decision(cfg, T0 + 119, canary_ready=False) == "Continue"
    assert state.decision(cfg, T0 + 120, canary_ready=False) == "Rollback"
    assert "not Ready within 120 s" in state.explain(cfg, T0 + 120, canary_ready=False)


def test_due_once_per_interval() -> None:
    state = AnalysisState.start("r", T0)
    assert state.due(HOLD, T0)
    state = advance(state, P, T0)
    assert not state.due(HOLD, T0 + 29)
    assert state.due(HOLD, T0 + 30)


def test_status_round_trip() -> None:
    state = advance(advance(AnalysisState.start("r1", T0), F, T0 + 30), I, T0 + 60)
    data = state.to_dict()
    assert data == {
        "revision": "r1",
        "startedAt": "2027-01-15T08:00:00Z",
        "failures": 1,
        "consecutivePasses": 0,
        "inconclusiveSince": "2027-01-15T08:01:00Z",
        "lastVerdict": "Inconclusive",
        "lastReason": "TooFewRequests",
        "lastMessage": "quiet",
        "lastChecked": "2027-01-15T08:01:00Z",
    }
    assert AnalysisState.from_dict(data) == state
    assert AnalysisState.from_dict(None) == AnalysisState()


def test_rollback_explanation() -> None:
    state = AnalysisState.start("r1", T0)
    for i in range(2):
        state = advance(state, F, T0 + 30 * (i + 1))
    assert state.explain(HOLD, T0 + 60) == "revision r1 failed 2 of 2 allowed analyses; last: bad"


@pytest.mark.parametrize(
    "bad",
    [
        {"min_requests": 0},
        {"max_error_rate_ratio": 0.5},
        {"failure_limit": 0},
        {"interval_s": 0},
        {"error_rate_floor": 2},
    ],
)
def test_config_refuses(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AnalysisConfig(**bad)  # type: ignore[arg-type]


GOOD = (win(100), win(50))
BAD = (win(100), win(50, 10))


def test_step_from_fresh_status_to_rollback() -> None:
    cfg = AnalysisConfig(interval_s=10, failure_limit=2)
    first = step(None, cfg, "r2", T0, canary_ready=True, observed=BAD)
    assert first.decision == "Continue"
    assert [e.reason for e in first.events] == ["CanaryAnalysisFailed"]
    assert first.events[0].message.endswith("(1/2 failures)")
    stored = first.state.to_dict()
    assert not needs_window(stored, cfg, "r2", T0 + 9)
    assert needs_window(stored, cfg, "r2", T0 + 10)
    second = step(stored, cfg, "r2", T0 + 10, canary_ready=True, observed=BAD)
    assert second.decision == "Rollback"
    assert [(e.type, e.reason) for e in second.events] == [("Warning", "CanaryAnalysisFailed")]
    assert second.message.startswith("revision r2 failed 2 of 2 allowed analyses")


def test_step_promotes_and_restarts_for_a_new_canary() -> None:
    cfg = AnalysisConfig(interval_s=10, passes_to_promote=2)
    s = step(None, cfg, "r2", T0, canary_ready=True, observed=GOOD)
    s = step(s.state.to_dict(), cfg, "r2", T0 + 10, canary_ready=True, observed=GOOD)
    assert (s.decision, s.events) == ("Promote", ())
    # Another canary: the stored state is stale and starts over.
    assert needs_window(s.state.to_dict(), cfg, "r3", T0 + 11)
    fresh = step(s.state.to_dict(), cfg, "r3", T0 + 11, canary_ready=True, observed=None)
    assert (fresh.decision, fresh.state.revision, fresh.state.consecutive_passes) == (
        "Continue",
        "r3",
        0,
    )


def test_step_unavailable_metrics_count_as_stall() -> None:
    cfg = AnalysisConfig(interval_s=10, inconclusive_policy="Rollback", inconclusive_timeout_s=20)
    v = unavailable_verdict("cannot connect")
    s = step(None, cfg, "r2", T0, canary_ready=True, observed=v)
    s = step(s.state.to_dict(), cfg, "r2", T0 + 10, canary_ready=True, observed=v)
    assert s.decision == "Continue"
    s = step(s.state.to_dict(), cfg, "r2", T0 + 20, canary_ready=True, observed=v)
    assert s.decision == "Rollback"
    assert s.state.last_reason == "MetricsUnavailable"


def test_step_waits_for_readiness_without_evaluating() -> None:
    cfg = AnalysisConfig(ready_timeout_s=60)
    s = step(None, cfg, "r2", T0, canary_ready=False, observed=BAD)
    assert (s.decision, s.state.failures, s.events) == ("Continue", 0, ())
    s = step(s.state.to_dict(), cfg, "r2", T0 + 60, canary_ready=False, observed=None)
    assert s.decision == "Rollback"


def test_a_new_step_needs_fresh_passes() -> None:
    cfg = AnalysisConfig(interval_s=10, passes_to_promote=2)
    s = step(None, cfg, "r2", T0, canary_ready=True, observed=GOOD, rollout_step="1/2")
    s = step(
        s.state.to_dict(), cfg, "r2", T0 + 10, canary_ready=True, observed=GOOD, rollout_step="1/2"
    )
    assert s.decision == "Promote"
    # Promoting to the next share is the same step: no reset (no oscillation).
    s = step(
        s.state.to_dict(),
        cfg,
        "r2",
        T0 + 11,
        canary_ready=True,
        observed=None,
        rollout_step="1/2 promoting",
    )
    assert s.decision == "Promote"
    s = step(
        s.state.to_dict(), cfg, "r2", T0 + 20, canary_ready=True, observed=BAD, rollout_step="2/2"
    )
    s = step(
        s.state.to_dict(), cfg, "r2", T0 + 21, canary_ready=True, observed=None, rollout_step="2/2"
    )
    assert (s.decision, s.state.step, s.state.consecutive_passes, s.state.failures) == (
        "Continue",
        "2/2",
        0,
        1,
    )
