"""Signals: the replicas' samples over a window -> per-window statistics.

The first stage of a decision (`evaluate`): drop what is not a measurement,
refuse what is unusable (fail-static), then aggregate per sample instant and
summarise the stable and panic windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from kvpilot.autoscaling.policy.config import PolicyConfig, Targets
from kvpilot.autoscaling.policy.contract import PolicyInput
from kvpilot.autoscaling.source import MetricsUnavailable, ReplicaSeries, Sample


@dataclass(frozen=True)
class Point:
    """Totals over the replicas reporting at one instant."""

    t: float
    n: int
    waiting: float
    running: float
    kv: float
    ttft: float | None
    completed: float | None


@dataclass(frozen=True)
class Stats:
    """One window's signals, per replica where that is how targets are set."""

    waiting_per_replica: float
    running_per_replica: float
    kv_per_replica: float
    kv_need: float
    queue_need: float
    """Level-only queue need (used when completion rates are missing)."""
    ttft: float | None
    arrival_rate: float | None
    """Mean arrivals/s over the window: completions + growth of requests in the system."""
    service_rate: float | None
    """Completions/s per replica at saturation (instants with a queue)."""
    excess_backlog: float
    """Waiting requests beyond the target at the window's last instant."""
    in_system_trend: float
    """Change of requests in the system (running + waiting) per second over the window."""
    in_flight_slope: float = 0.0
    """Least-squares trend of requests in the system per second (0 on a window under 60 s)."""
    in_flight: float = 0.0
    """Mean requests in the system (running + waiting, all replicas) over the window."""


@dataclass(frozen=True)
class Failure:
    """Why the metrics cannot be used: the decision holds replicas (fail-static)."""

    condition_reason: str
    message: str


@dataclass(frozen=True)
class Evaluation:
    """Usable metrics: both windows' statistics and who reports."""

    stable: Stats
    panic: Stats
    reporting: int
    partial: bool
    idle: bool


_KV_SLACK = 1e-6
_CLOCK_SLACK = 1.0
"""Samples up to this far after `now` still count (sources round times to seconds)."""


def _invalid(s: Sample) -> str | None:
    for name, value in (
        ("waiting", s.waiting),
        ("running", s.running),
        ("kv cache utilization", s.kv_cache_utilization),
    ):
        if not math.isfinite(value):
            return f"{name} is {value}"
        if value < 0:
            return f"{name} is negative ({value:g})"
    if s.kv_cache_utilization > 1 + _KV_SLACK:
        return f"kv cache utilization {s.kv_cache_utilization:g} is outside [0, 1]"
    return None


def _usable(value: float | None) -> float | None:
    """Optional signals (TTFT, completions) are NaN when nothing finished: treat as absent."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def _aggregate(series: Iterable[ReplicaSeries]) -> list[Point]:
    acc: dict[float, list[Sample]] = {}
    for s in series:
        for sample in s.samples:
            acc.setdefault(round(sample.timestamp, 3), []).append(sample)
    points = []
    for t in sorted(acc):
        group = acc[t]
        ttfts = [v for v in (_usable(x.ttft_seconds) for x in group) if v is not None]
        done = [_usable(x.completed_per_second) for x in group]
        points.append(
            Point(
                t=t,
                n=len(group),
                waiting=sum(x.waiting for x in group),
                running=sum(x.running for x in group),
                kv=sum(min(x.kv_cache_utilization, 1.0) for x in group),
                ttft=sum(ttfts) / len(ttfts) if ttfts else None,
                completed=None if None in done else sum(v for v in done if v is not None),
            )
        )
    return points


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _queue_need(p: Point, target: float) -> float:
    """Replicas at which this instant's demand leaves `target` waiting per replica.

    Each replica keeps running what it runs now (its achieved concurrency); the
    rest of the demand waits. With nothing running this is the plain
    waiting / target.
    """
    r, w = p.running / p.n, p.waiting / p.n
    return p.n * (r + w) / (r + target)


_SATURATED_WAITING = 1.0
"""Waiting requests per replica from which an instant counts as saturated."""


def _trend(points: Sequence[Point]) -> float:
    first, last = points[0], points[-1]
    if last.t <= first.t:
        return 0.0
    return ((last.waiting + last.running) - (first.waiting + first.running)) / (last.t - first.t)


_MIN_SLOPE_SPAN = 60.0
"""Seconds of samples below which a slope is noise: the trend then reads 0."""


def _slope(points: Sequence[Point]) -> float:
    """Least-squares slope of requests in the system (running + waiting) per second."""
    if points[-1].t - points[0].t < _MIN_SLOPE_SPAN:
        return 0.0
    ts = [p.t for p in points]
    ys = [p.waiting + p.running for p in points]
    tm, ym = mean(ts), mean(ys)
    var = sum((t - tm) ** 2 for t in ts)
    return sum((t - tm) * (y - ym) for t, y in zip(ts, ys, strict=True)) / var


def _rates(points: Sequence[Point]) -> tuple[float | None, float | None]:
    """(arrivals/s, completions/s per saturated replica) when completion rates are known.

    Requests are conserved: arrivals over the window = completions + the change
    in requests in the system (running + waiting). Unlike the queue level, this
    does not grow with a backlog that is merely waiting for capacity.
    """
    known = [p for p in points if p.completed is not None]
    if not known:
        return None, None
    completed = mean([p.completed for p in known if p.completed is not None])
    growth = _trend(points)
    saturated = [
        p.completed / p.n
        for p in known
        if p.completed is not None and p.waiting / p.n >= _SATURATED_WAITING
    ]
    service = mean(saturated) if saturated else None
    return max(0.0, completed + growth), service if service and service > 0 else None


def _stats(points: Sequence[Point], targets: Targets) -> Stats:
    ttfts = [p.ttft for p in points if p.ttft is not None]
    arrivals, service = _rates(points)
    last = points[-1]
    return Stats(
        waiting_per_replica=mean([p.waiting / p.n for p in points]),
        running_per_replica=mean([p.running / p.n for p in points]),
        kv_per_replica=mean([p.kv / p.n for p in points]),
        kv_need=mean([p.kv for p in points]) / targets.kv_cache_utilization,
        queue_need=mean([_queue_need(p, targets.queue_depth_per_replica) for p in points]),
        ttft=mean(ttfts) if ttfts else None,
        arrival_rate=arrivals,
        service_rate=service,
        excess_backlog=max(0.0, last.waiting - targets.queue_depth_per_replica * last.n),
        in_system_trend=_trend(points),
        in_flight=mean([p.running + p.waiting for p in points]),
        in_flight_slope=_slope(points),
    )


def evaluate(config: PolicyConfig, inp: PolicyInput) -> Failure | Evaluation:
    """The stable and panic windows' statistics, or why the metrics cannot be trusted."""
    metrics = inp.metrics
    if isinstance(metrics, MetricsUnavailable):
        return Failure("MetricsUnavailable", f"metrics unavailable: {metrics.reason}")
    now = inp.now
    start = now - config.stable_window_seconds
    in_window: list[ReplicaSeries] = []
    max_age = config.max_metric_age_seconds
    for series in metrics.replicas:
        samples = tuple(
            s
            for s in series.samples
            if start <= s.timestamp <= now + _CLOCK_SLACK
            # A repeat of a value from before a scrape gap is not a measurement.
            and (s.scraped_at is None or s.timestamp - s.scraped_at <= max_age)
        )
        if samples:
            in_window.append(replace(series, samples=samples))
    if not in_window:
        return Failure(
            "NoMetrics",
            f"no replica reports metrics in the last {config.stable_window_seconds:g}s "
            f"({inp.ready_replicas} ready, {inp.starting_replicas} starting)",
        )
    ages = []
    for series in in_window:
        seen = series.last_scraped_at
        if seen is None:
            seen = series.samples[-1].timestamp
        ages.append(now - seen)
    reporting = sum(1 for age in ages if age <= config.max_metric_age_seconds)
    if reporting == 0:
        return Failure(
            "MetricsStale",
            f"newest metrics are {min(ages):.0f}s old (limit {config.max_metric_age_seconds:g}s)",
        )
    # Past the last real scrape a range query repeats the old value: drop those samples.
    trimmed = []
    for series in in_window:
        kept = series
        if series.last_scraped_at is not None:
            until = series.last_scraped_at + max(metrics.step, 0.0)
            kept = replace(series, samples=tuple(s for s in series.samples if s.timestamp <= until))
        if kept.samples:
            trimmed.append(kept)
    if not trimmed:
        return Failure("MetricsStale", "no sample newer than the replicas' last scrape")
    in_window = trimmed
    for series in in_window:
        for sample in series.samples:
            problem = _invalid(sample)
            if problem is not None:
                return Failure("MetricsInvalid", f"invalid metrics from {series.pod}: {problem}")
    points = _aggregate(in_window)
    panic_points = [p for p in points if p.t >= now - config.panic_window_seconds] or points
    stable = _stats(points, config.targets)
    return Evaluation(
        stable=stable,
        panic=_stats(panic_points, config.targets),
        reporting=reporting,
        partial=reporting < inp.ready_replicas,
        idle=all(p.waiting == 0 and p.running == 0 for p in points),
    )
