"""Metrics-source interface: what the autoscaling policy reads about one inference service.

A source returns either a `MetricsWindow` (per-replica time series of the vLLM
signals over the requested window) or a `MetricsUnavailable` that says why it
could not. It never raises for an unreachable or misbehaving backend: the
policy turns "unavailable" into fail-static (hold replicas), so a source that
raised would only move that decision into every caller.

Sources are synchronous and quick to time out; the controller calls them in a
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ServiceRef:
    """Identifies the replicas to read: one InferenceService, optionally one revision."""

    namespace: str
    name: str
    revision: str | None = None


@dataclass(frozen=True)
class Sample:
    """One replica's signals at one instant (epoch seconds).

    `ttft_seconds` is optional: vLLM only observes time-to-first-token when
    requests finish prefill, so an idle replica has none (NaN from PromQL).
    `completed_per_second` is optional: the rate of finished requests
    (vllm:request_success_total); with it the policy tells arrivals from backlog.
    `scraped_at` is when the raw value behind this point was collected, when the
    backend says (Prometheus: `timestamp()`); a range query fills a gap in the
    scrapes (say, Prometheus was down) with the last value from before it, and
    the policy drops points whose value is older than its metric age limit.
    Values are passed through unvalidated; the policy decides what is usable.
    """

    timestamp: float
    waiting: float
    running: float
    kv_cache_utilization: float
    ttft_seconds: float | None = None
    completed_per_second: float | None = None
    scraped_at: float | None = None


@dataclass(frozen=True)
class ReplicaSeries:
    """The samples of one replica (pod), oldest first.

    `last_scraped_at` is when the backend last actually collected this replica
    (Prometheus: `timestamp()` of the newest raw sample). Range queries repeat
    the last value for up to the lookback delta, so the sample timestamps alone
    can look fresh while the replica is no longer scraped.
    """

    pod: str
    samples: tuple[Sample, ...]
    last_scraped_at: float | None = None


@dataclass(frozen=True)
class MetricsWindow:
    """Per-replica series over [start, end] with the given step (seconds)."""

    start: float
    end: float
    step: float
    replicas: tuple[ReplicaSeries, ...] = ()


@dataclass(frozen=True)
class MetricsUnavailable:
    """The source could not produce a window; `reason` is a short human sentence."""

    reason: str


MetricsResult = MetricsWindow | MetricsUnavailable


@runtime_checkable
class MetricsSource(Protocol):
    """Reads the signal window for one inference service."""

    def query(self, service: ServiceRef, *, now: float, window_seconds: float) -> MetricsResult:
        """Return per-replica series over [now - window_seconds, now], or why not."""
        ...


@dataclass
class StaticMetricsSource:
    """A source that returns canned results per service; for tests and the simulator."""

    results: dict[ServiceRef, MetricsResult] = field(default_factory=dict)
    default: MetricsResult = field(
        default_factory=lambda: MetricsUnavailable("no metrics configured for this service")
    )

    def query(self, service: ServiceRef, *, now: float, window_seconds: float) -> MetricsResult:
        """Return the canned result for `service` (the window arguments are ignored)."""
        return self.results.get(service, self.default)
