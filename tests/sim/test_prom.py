"""The Prometheus emulation: rate(), histogram_quantile(), range queries over scrapes."""

from __future__ import annotations

import math

import pytest

from kvpilot.sim.prom import ScrapeLog, extrapolated_rate, histogram_quantile, range_query


def test_rate_inside_the_range_extrapolates_half_an_interval() -> None:
    # Scrapes every 15 s at 5, 20, 35, 50 within (0, 60]: counter 0, 15, 30, 45.
    ts, vs = [5.0, 20.0, 35.0, 50.0], [0.0, 15.0, 30.0, 45.0]
    # Sampled 45 s. The start would extrapolate 5 s but the counter reaches zero at
    # the first point (0 s); the end is 10 s away, under 1.1 intervals: extended fully.
    rate = extrapolated_rate(ts, vs, 0, 3, 0.0, 60.0)
    assert rate == pytest.approx(45.0 * (45.0 + 0.0 + 10.0) / 45.0 / 60.0)
    # Far from the range's end (over 1.1 intervals), only half an interval is added.
    assert extrapolated_rate(ts, vs, 0, 3, 0.0, 80.0) == pytest.approx(
        45.0 * (45.0 + 7.5) / 45.0 / 80.0
    )


def test_rate_needs_two_points() -> None:
    assert extrapolated_rate([5.0], [1.0], 0, 0, 0.0, 60.0) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], math.nan),
        # 10 observations in (0.25, 0.5]: rank 9 -> 0.25 + 0.25 * 9/10.
        ([0.3] * 10, 0.25 + 0.25 * 0.9),
        # 9 in (0.01, 0.02], 1 in (1, 2.5]: rank 9 falls at the top of the first.
        ([0.015] * 9 + [2.0], 0.02),
        ([5000.0] * 3, 2560.0),  # beyond the last bucket: its upper bound
    ],
)
def test_histogram_quantile(values: list[float], expected: float) -> None:
    got = histogram_quantile(0.9, values)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def _log() -> ScrapeLog:
    log = ScrapeLog("pod-a")
    for i, t in enumerate([1.0, 16.0, 31.0, 46.0, 61.0]):
        log.add(t, waiting=i, running=2, kv=0.1 * i, success=3 * i)
    return log


def test_range_query_takes_the_newest_visible_scrape_per_step() -> None:
    w = range_query([_log()], now=62.0, window_s=60.0, step_s=15.0, query_delay_s=0.0)
    (series,) = w.replicas
    assert [s.timestamp for s in series.samples] == [2.0, 17.0, 32.0, 47.0, 62.0]
    assert [s.waiting for s in series.samples] == [0, 1, 2, 3, 4]
    assert [s.scraped_at for s in series.samples] == [1.0, 16.0, 31.0, 46.0, 61.0]
    assert series.last_scraped_at == 61.0


def test_query_delay_hides_recent_scrapes() -> None:
    w = range_query([_log()], now=62.0, window_s=60.0, step_s=15.0, query_delay_s=5.0)
    assert w.replicas[0].samples[-1].scraped_at == 46.0


def test_a_deleted_target_goes_stale() -> None:
    log = _log()
    log.gone_at = 50.0
    w = range_query([log], now=62.0, window_s=60.0, step_s=15.0)
    assert [s.timestamp for s in w.replicas[0].samples] == [2.0, 17.0, 32.0, 47.0]


def test_ttft_is_nan_without_first_tokens_and_a_quantile_with_them() -> None:
    log = ScrapeLog("p")
    log.add(0.0, 0, 0, 0.0, 0)
    log.add(15.0, 0, 1, 0.1, 0)
    log.ttft_values.extend([0.3] * 10)
    log.add(30.0, 0, 1, 0.1, 10)
    w = range_query([log], now=30.0, window_s=30.0, step_s=15.0)
    samples = w.replicas[0].samples
    assert samples[0].ttft_seconds is None  # a single scrape in the minute: no rate
    assert samples[1].ttft_seconds is not None and math.isnan(samples[1].ttft_seconds)
    assert samples[2].ttft_seconds == pytest.approx(0.25 + 0.25 * 0.9)
