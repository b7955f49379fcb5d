"""What Prometheus would answer about simulated replicas: scrapes, then range queries.

Each replica is scraped every ``scrape_interval_s`` (at its own phase, as
Prometheus spreads targets); a scrape stores the gauges vLLM exported at that
moment plus the success counter and the TTFT observations so far. A range
query over ``[now - window, now]`` at ``step`` then evaluates, per pod and
step, the autoscaler's PromQL (`kvpilot.autoscaling.prometheus.PromQLTemplates`)
the way Prometheus does:

* an instant vector selector takes the newest scrape at or before the step
  within the 5-minute lookback, and nothing once the target is gone (staleness);
* ``rate(x[1m])`` extrapolates as Prometheus' ``extrapolatedRate``;
* ``histogram_quantile(0.9, rate(bucket[1m]))`` interpolates within vLLM's
  TTFT buckets (NaN when no request got a first token in the minute);
* only scrapes ingested by ``now - query_delay_s`` are visible.

The result is the same `MetricsWindow` the real adapter returns.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvpilot.autoscaling.source import MetricsWindow, ReplicaSeries, Sample

LOOKBACK_S = 300.0
RATE_RANGE_S = 60.0
TTFT_QUANTILE = 0.9

#: vLLM's buckets of vllm:time_to_first_token_seconds.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


@dataclass
class ScrapeLog:
    """All scrapes of one replica (columnar, in time order)."""

    pod: str
    t: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    kv: list[float] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    ttft_count: list[int] = field(default_factory=list)
    ttft_values: list[float] = field(default_factory=list)
    """Every TTFT the replica observed, in order; ``ttft_count`` indexes into it."""
    gone_at: float | None = None
    """When the target disappeared (pod deleted); later steps see a stale series."""

    def add(self, t: float, waiting: int, running: int, kv: float, success: int) -> None:
        self.t.append(t)
        self.waiting.append(float(waiting))
        self.running.append(float(running))
        self.kv.append(kv)
        self.success.append(float(success))
        self.ttft_count.append(len(self.ttft_values))


def extrapolated_rate(  # noqa: PLR0917 - mirrors Prometheus' own signature
    ts: Sequence[float],
    values: Sequence[float],
    lo: int,
    hi: int,
    range_start: float,
    range_end: float,
) -> float | None:
    """Prometheus' ``rate()`` of a counter over points ``lo..hi`` (inclusive) of a range."""
    n = hi - lo + 1
    if n < 2:
        return None
    first_t, last_t = ts[lo], ts[hi]
    first_v, last_v = values[lo], values[hi]
    result = last_v - first_v
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    avg = sampled / (n - 1)
    threshold = avg * 1.1
    to_start = first_t - range_start
    to_end = range_end - last_t
    if to_start >= threshold:
        to_start = avg / 2
    if result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    if to_end >= threshold:
        to_end = avg / 2
    factor = (sampled + to_start + to_end) / sampled / (range_end - range_start)
    return result * factor


def histogram_quantile(
    q: float, values: Sequence[float], buckets: Sequence[float] = TTFT_BUCKETS
) -> float:
    """Prometheus' ``histogram_quantile`` of observations binned into ``buckets``."""
    if not values:
        return math.nan
    counts = [0] * (len(buckets) + 1)
    for v in values:
        counts[bisect.bisect_left(buckets, v)] += 1
    total = len(values)
    rank = q * total
    cumulative = 0
    for i, c in enumerate(counts):
        if cumulative + c >= rank and c > 0:
            if i == len(buckets):
                return buckets[-1]
            upper = buckets[i]
            lower = buckets[i - 1] if i > 0 else 0.0
            if i == 0 and upper <= 0:
                return upper
            return lower + (upper - lower) * (rank - cumulative) / c
        cumulative += c
    return buckets[-1]


def range_query(
    logs: Sequence[ScrapeLog],
    *,
    now: float,
    window_s: float,
    step_s: float,
    query_delay_s: float = 0.0,
) -> MetricsWindow:
    """The adapter's `MetricsWindow` for these replicas at ``now``."""
    start = math.floor(now - window_s)
    end = math.floor(now)
    steps: list[float] = []
    t = float(start)
    while t <= end + 1e-9:
        steps.append(t)
        t += step_s
    visible_until = now - query_delay_s
    out: list[ReplicaSeries] = []
    for log in logs:
        n_visible = bisect.bisect_right(log.t, visible_until)
        if n_visible == 0:
            continue
        ts = log.t
        samples: list[Sample] = []
        for step in steps:
            if log.gone_at is not None and step >= log.gone_at:
                break
            idx = min(bisect.bisect_right(ts, step, 0, n_visible), n_visible) - 1
            if idx < 0 or ts[idx] < step - LOOKBACK_S:
                continue
            lo = bisect.bisect_right(ts, step - RATE_RANGE_S, 0, idx + 1)
            completed = extrapolated_rate(
                ts, log.success, lo, idx, step - RATE_RANGE_S, float(step)
            )
            ttft: float | None = None
            if idx - lo + 1 >= 2:
                obs = log.ttft_values[log.ttft_count[lo] : log.ttft_count[idx]]
                ttft = histogram_quantile(TTFT_QUANTILE, obs)
            samples.append(
                Sample(
                    timestamp=float(step),
                    waiting=log.waiting[idx],
                    running=log.running[idx],
                    kv_cache_utilization=log.kv[idx],
                    ttft_seconds=ttft,
                    completed_per_second=completed,
                    scraped_at=ts[idx],
                )
            )
        if samples:
            last = max(s.scraped_at for s in samples if s.scraped_at is not None)
            out.append(ReplicaSeries(pod=log.pod, samples=tuple(samples), last_scraped_at=last))
    out.sort(key=lambda s: s.pod)
    return MetricsWindow(start=now - window_s, end=now, step=step_s, replicas=tuple(out))
