"""Table tests of single stages of a decision (rate limits, bounds, the hold after a burst)."""

from __future__ import annotations

import pytest

from kvpilot.autoscaling.policy import Constraint, PolicyConfig, PolicyState
from kvpilot.autoscaling.policy.decision import _burst_left
from kvpilot.autoscaling.policy.limits import bounded, rate_limited
from kvpilot.autoscaling.policy.reason import Hold
from kvpilot.autoscaling.policy.stabilize import stabilised

NOW = 1_700_000_000.0
CONFIG = PolicyConfig(min_replicas=1, max_replicas=16)


@pytest.mark.parametrize(
    ("events", "spec", "target", "expected"),
    [
        ((), 2, 9, (6, Hold(Constraint.RATE_LIMIT, "rate limit +4 per 60s"))),
        ((), 2, 5, (5, None)),
        # Four added 15 s ago use up the period: held at spec, and the note says so.
        (((NOW - 15, 4),), 6, 10, (6, Hold(Constraint.RATE_LIMIT, "rate limit +4 per 60s"))),
        # Outside the period they no longer count.
        (((NOW - 60, 4),), 6, 10, (10, None)),
        ((), 6, 2, (5, Hold(Constraint.RATE_LIMIT, "rate limit -1 per 60s"))),
        (((NOW - 30, -1),), 5, 2, (5, Hold(Constraint.RATE_LIMIT, "rate limit -1 per 60s"))),
        # Removals do not use up the scale-up budget, nor the other way round.
        (((NOW - 30, -1),), 5, 7, (7, None)),
        ((), 4, 4, (4, None)),
    ],
)
def test_rate_limited(
    events: tuple[tuple[float, int], ...],
    spec: int,
    target: int,
    expected: tuple[int, Hold | None],
) -> None:
    assert rate_limited(CONFIG, events, NOW, spec, target) == expected


def test_unlimited_steps() -> None:
    config = CONFIG.with_overrides(
        {"scaleUp": {"maxReplicasPerStep": None}, "scaleDown": {"maxReplicasPerStep": None}}
    )
    assert rate_limited(config, ((NOW, 9),), NOW, 1, 16) == (16, None)
    assert rate_limited(config, ((NOW, -9),), NOW, 16, 1) == (1, None)


@pytest.mark.parametrize(
    ("target", "lo", "hi", "expected"),
    [
        (3, 1, 8, (3, None)),
        (0, 1, 8, (1, Hold(Constraint.MIN_REPLICAS, "raised to the minimum 1"))),
        (9, 1, 8, (8, Hold(Constraint.MAX_REPLICAS, "capped at maxReplicas 8"))),
        (0, 0, 8, (0, None)),
        # minReplicas = maxReplicas = 0 puts the floor of 1 above the maximum: max wins.
        (0, 1, 0, (0, None)),
        (2, 1, 0, (0, Hold(Constraint.MAX_REPLICAS, "capped at maxReplicas 0"))),
    ],
)
def test_bounded(target: int, lo: int, hi: int, expected: tuple[int, Hold | None]) -> None:
    assert bounded(target, lo, hi) == expected


@pytest.mark.parametrize(
    ("hold", "burst_at", "bursting", "expected"),
    [
        (None, None, False, None),  # no burst seen
        (None, None, True, 1800.0),  # while it lasts: six scale-down windows
        (None, NOW - 600, False, 1200.0),  # what is left after it ended
        (None, NOW - 1800, False, None),  # over
        (900, NOW - 600, False, 300.0),
        (0, None, True, None),  # 0 turns the hold off
        (0, NOW - 10, False, None),
    ],
)
def test_burst_left(
    hold: float | None, burst_at: float | None, bursting: bool, expected: float | None
) -> None:
    config = CONFIG.with_overrides({"scaleDown": {"burstHoldSeconds": hold}})
    state = PolicyState(burst_at=burst_at, bursting=bursting)
    assert _burst_left(config, state, NOW, bursting=bursting) == expected


def test_a_burst_holds_scale_down_but_not_scale_up() -> None:
    # Recommendations 6 (from 600 s ago) then 2: the window alone would allow 6 -> 2.
    state = PolicyState(history=((NOW - 600, 6), (NOW - 400, 2)), history_since=NOW - 600)
    common = {"now": NOW, "panic": False, "manual_left": None, "reporting": 6, "ready": 6}
    assert stabilised(CONFIG, state, spec=6, rec=2, **common) == (2, [])
    held = stabilised(CONFIG, state, spec=6, rec=2, burst_left=300.0, **common)
    assert held == (
        6,
        [Hold(Constraint.STABILIZATION, "a burst 1500s ago holds replicas for 300s more "
              "(recommendation 2)")],
    )  # fmt: skip
    up = PolicyState(history=((NOW - 600, 8),), history_since=NOW - 600)
    assert stabilised(CONFIG, up, spec=6, rec=8, burst_left=300.0, **common) == (8, [])
