"""Per-revision windows for canary analysis, read from Prometheus.

Four instant queries per revision over the last ``window_s`` seconds, on the
same label convention as the autoscaler's queries (``PromQLTemplates.selector``
plus ``revision_selector``: the pod runner, and on clusters the chart's serving
PodMonitor, put the pod's ``kvpilot.io/revision`` label on every series as
``revision``):

* finished requests and failed requests: vLLM's front end counts every answered
  request in ``http_requests_total{handler, method, status}`` with grouped status.
  ``5xx`` on the completion handlers is what a client sees fail; it also covers
  failures outside the engine, which ``vllm:request_success_total`` never sees.
* TTFT p95 and inter-token latency p95 from vLLM's histograms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from string import Template
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from kvpilot.autoscaling.prometheus import PrometheusMetricsSource, render_selector
from kvpilot.autoscaling.source import ServiceRef
from kvpilot.rollout.analysis import RevisionWindow


def counted_in_window(series: str) -> str:
    """PromQL for what a counter counted over the last ``$window``, series born in the
    window included.

    ``increase()`` needs two samples of a series, so the first value of a series that
    appears mid-window is lost; and vLLM's front end creates the ``5xx`` series at the
    first failure, a new canary pod its series at its first request: exactly the
    evidence a canary analysis needs first. So: now minus a window ago for series
    that existed then (a reset counts as nothing), plus the whole value of newer ones.
    """
    return (
        f"(sum(clamp_min({series} - {series} offset $window, 0)) or vector(0)) + "
        f"(sum({series} unless {series} offset $window) or vector(0))"
    )


_COMPLETIONS = 'handler=~"/v1/(chat/)?completions"'


@dataclass(frozen=True)
class RevisionQueries:
    """PromQL per quantity; ``$selector`` is one revision's matchers, ``$window`` a range."""

    requests: str = counted_in_window(f"http_requests_total{{$selector,{_COMPLETIONS}}}")
    errors: str = counted_in_window(f'http_requests_total{{$selector,{_COMPLETIONS},status="5xx"}}')
    ttft_p95: str = (
        "histogram_quantile(0.95, sum by (le) "
        "(rate(vllm:time_to_first_token_seconds_bucket{$selector}[$window])))"
    )
    itl_p95: str = (
        "histogram_quantile(0.95, sum by (le) "
        "(rate(vllm:inter_token_latency_seconds_bucket{$selector}[$window])))"
    )


class RevisionMetricsUnavailableError(RuntimeError):
    """Prometheus did not answer; the analysis skips this interval (no verdict)."""


def render_revision_queries(
    queries: RevisionQueries, selector: str, window_s: float
) -> dict[str, str]:
    """The PromQL of one revision's window, by quantity."""
    window = f"{max(1, math.ceil(window_s))}s"
    return {
        key: Template(getattr(queries, key)).substitute(selector=selector, window=window)
        for key in ("requests", "errors", "ttft_p95", "itl_p95")
    }


def _scalar(result: Any, what: str) -> float | None:
    """The one value of an aggregated instant query; None when empty or not finite."""
    if not isinstance(result, list):
        raise ValueError(f"{what}: unexpected response shape")
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def fetch_window(
    prom: PrometheusMetricsSource,
    service: ServiceRef,
    window_s: float,
    *,
    now: float | None = None,
    queries: RevisionQueries | None = None,
) -> RevisionWindow:
    """One revision (``service.revision``) over the ``window_s`` seconds before ``now``."""
    selector = render_selector(prom.templates, service)
    rendered = render_revision_queries(queries or RevisionQueries(), selector, window_s)
    values: dict[str, float | None] = {}
    for key, promql in rendered.items():
        try:
            values[key] = _scalar(prom.instant_query(promql, at=now), key)
        except (
            requests.RequestException,
            PrometheusApiClientException,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
        ) as exc:
            raise RevisionMetricsUnavailableError(
                f"Prometheus query for {key} of revision {service.revision} failed: {exc}"
            ) from exc
    return RevisionWindow(
        requests=values["requests"] or 0.0,
        errors=values["errors"] or 0.0,
        ttft_p95_s=values["ttft_p95"],
        itl_p95_s=values["itl_p95"],
    )


def fetch_windows(  # noqa: PLR0917 (the shared rollout interface fixes this signature)
    prom: PrometheusMetricsSource,
    namespace: str,
    service: str,
    stable_rev: str,
    canary_rev: str,
    window_s: float,
    *,
    now: float | None = None,
    queries: RevisionQueries | None = None,
) -> tuple[RevisionWindow, RevisionWindow]:
    """(stable, canary) over the same window; raises RevisionMetricsUnavailableError."""
    return (
        fetch_window(
            prom, ServiceRef(namespace, service, stable_rev), window_s, now=now, queries=queries
        ),
        fetch_window(
            prom, ServiceRef(namespace, service, canary_rev), window_s, now=now, queries=queries
        ),
    )
