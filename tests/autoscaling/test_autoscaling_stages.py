"""Table tests of single stages of a decision (rate limits, bounds)."""

from __future__ import annotations

import pytest

from kvpilot.autoscaling.policy import Constraint, PolicyConfig
from kvpilot.autoscaling.policy.limits import bounded, rate_limited
from kvpilot.autoscaling.policy.reason import Hold

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
