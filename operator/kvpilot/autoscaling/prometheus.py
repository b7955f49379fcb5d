"""`MetricsSource` on Prometheus (prometheus-api-client's `PrometheusConnect`).

One range query per signal over [now - window, now] at a fixed step gives the
policy aligned per-pod time series. The PromQL is a set of `string.Template`s
so it fits any label convention; ``$selector`` expands to the label matchers
of one inference service. The defaults match the labels the kvpilot pod
runner (and a typical kubernetes-pods scrape config) attach: ``namespace``,
``pod``, ``inference_service``, ``revision``; and only current vLLM (V1)
metric names.

Synchronous, no retries, short timeouts: the controller calls it in a worker
thread every decision interval, and a slow or broken Prometheus must turn into
fail-static quickly rather than stall the loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from kvpilot.autoscaling.source import (
    MetricsResult,
    MetricsUnavailable,
    MetricsWindow,
    ReplicaSeries,
    Sample,
    ServiceRef,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromQLTemplates:
    """PromQL per signal. Every query must return one series per pod (label `pod_label`).

    Placeholders: ``$selector`` (in the signal queries) and, in ``selector`` /
    ``revision_selector``, ``$namespace``, ``$name``, ``$revision``. ``ttft``,
    ``completed`` and ``last_scrape`` are optional (None leaves them out).
    ``last_scrape`` gives, at each step, when the value used there was scraped:
    it tells real samples from the lookback's repeats across a scrape gap.
    """

    selector: str = 'namespace="$namespace",inference_service="$name"'
    revision_selector: str = ',revision="$revision"'
    waiting: str = "sum by (pod) (vllm:num_requests_waiting{$selector})"
    running: str = "sum by (pod) (vllm:num_requests_running{$selector})"
    kv_cache: str = "avg by (pod) (vllm:kv_cache_usage_perc{$selector})"
    completed: str | None = "sum by (pod) (rate(vllm:request_success_total{$selector}[1m]))"
    ttft: str | None = (
        "histogram_quantile(0.9, sum by (pod, le) "
        "(rate(vllm:time_to_first_token_seconds_bucket{$selector}[1m])))"
    )
    last_scrape: str | None = "max by (pod) (timestamp(vllm:num_requests_waiting{$selector}))"
    pod_label: str = "pod"


_TEMPLATE_KEYS = {
    "selector": "selector",
    "revisionSelector": "revision_selector",
    "waiting": "waiting",
    "running": "running",
    "kvCache": "kv_cache",
    "completed": "completed",
    "ttft": "ttft",
    "lastScrape": "last_scrape",
    "podLabel": "pod_label",
}
_OPTIONAL = {"completed", "ttft", "last_scrape"}
_SERVICE_NAMES = {"namespace", "name", "revision"}


class TemplatesError(ValueError):
    """A PromQL templates file that cannot be used; the message names the key."""


def _placeholders(template: str) -> set[str]:
    return {
        m.group("named") or m.group("braced")
        for m in Template.pattern.finditer(template)
        if m.group("named") or m.group("braced")
    }


def load_templates(text: str, source: str = "PromQL templates") -> PromQLTemplates:
    """PromQL templates from YAML (keys as in ``_TEMPLATE_KEYS``; others keep their default).

    Checked before use, so a mistake stops the operator at start-up with the key named
    rather than turning every decision fail-static: unknown keys, non-strings, a signal
    query without ``$selector``, a selector with placeholders other than ``$namespace``,
    ``$name``, ``$revision``, and ``null`` for a query the autoscaler cannot do without.
    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplatesError(f"{source}: not YAML: {exc}") from None
    if data is None:
        return PromQLTemplates()
    if not isinstance(data, dict):
        raise TemplatesError(f"{source}: expected a mapping of template names to PromQL")
    values: dict[str, str | None] = {}
    for key, value in data.items():
        field_name = _TEMPLATE_KEYS.get(str(key))
        if field_name is None:
            raise TemplatesError(
                f"{source}: unknown key {key!r}; expected one of {', '.join(_TEMPLATE_KEYS)}"
            )
        if value is None:
            if field_name not in _OPTIONAL:
                raise TemplatesError(
                    f"{source}: {key} is required (only optional queries "
                    "completed, ttft, lastScrape may be null)"
                )
            values[field_name] = None
            continue
        if not isinstance(value, str) or not value.strip():
            raise TemplatesError(f"{source}: {key} must be a non-empty string")
        found = _placeholders(value)
        if field_name in {"selector", "revision_selector"}:
            extra = found - _SERVICE_NAMES
            if extra:
                raise TemplatesError(
                    f"{source}: {key} uses ${', $'.join(sorted(extra))}; "
                    "only $namespace, $name and $revision are known"
                )
        elif field_name != "pod_label" and found != {"selector"}:
            raise TemplatesError(
                f"{source}: {key} must use $selector (and no other placeholder), got "
                f"{', '.join('$' + f for f in sorted(found)) or 'none'}"
            )
        values[field_name] = value
    return PromQLTemplates(**values)  # type: ignore[arg-type]


def _quote(value: str) -> str:
    """Escape a value for a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_selector(templates: PromQLTemplates, service: ServiceRef) -> str:
    """The label matchers of one service (and of its revision, when it names one)."""
    names = {
        "namespace": _quote(service.namespace),
        "name": _quote(service.name),
        "revision": _quote(service.revision or ""),
    }
    selector = Template(templates.selector).substitute(names)
    if service.revision:
        selector += Template(templates.revision_selector).substitute(names)
    return selector


def render_queries(templates: PromQLTemplates, service: ServiceRef) -> dict[str, str]:
    """The PromQL for one service, by signal name (optional ones only when set)."""
    selector = render_selector(templates, service)
    out = {}
    for key in ("waiting", "running", "kv_cache", "completed", "ttft", "last_scrape"):
        template = getattr(templates, key)
        if template is not None:
            out[key] = Template(template).substitute(selector=selector)
    return out


_CORE = ("waiting", "running", "kv_cache")
_Values = dict[str, dict[float, float]]


def _parse_value(raw: Any) -> float:
    # Prometheus encodes sample values as strings ("1.5", "NaN", "+Inf").
    return float(raw)


def _by_pod(result: Any, pod_label: str, what: str) -> _Values:
    if not isinstance(result, list):
        raise ValueError(f"{what}: unexpected response shape")
    out: _Values = {}
    for entry in result:
        metric = entry.get("metric", {})
        pod = metric.get(pod_label)
        if not pod:
            raise ValueError(f"{what}: a series has no {pod_label!r} label: {metric}")
        points = out.setdefault(pod, {})
        if "values" in entry:
            for ts, value in entry["values"]:
                points[round(float(ts), 3)] = _parse_value(value)
        elif "value" in entry:
            ts, value = entry["value"]
            points[round(float(ts), 3)] = _parse_value(value)
    return out


def _join(values: Mapping[str, _Values], last_scrape: Mapping[str, float]) -> list[ReplicaSeries]:
    waiting, running, kv = values["waiting"], values["running"], values["kv_cache"]
    ttft, completed = values.get("ttft", {}), values.get("completed", {})
    scraped = values.get("last_scrape", {})
    series = []
    for pod in sorted(set(waiting) & set(running) & set(kv)):
        stamps = sorted(set(waiting[pod]) & set(running[pod]) & set(kv[pod]))
        samples = tuple(
            Sample(
                timestamp=t,
                waiting=waiting[pod][t],
                running=running[pod][t],
                kv_cache_utilization=kv[pod][t],
                ttft_seconds=ttft.get(pod, {}).get(t),
                completed_per_second=completed.get(pod, {}).get(t),
                scraped_at=scraped.get(pod, {}).get(t),
            )
            for t in stamps
        )
        if samples:
            series.append(
                ReplicaSeries(pod=pod, samples=samples, last_scraped_at=last_scrape.get(pod))
            )
    return series


class PrometheusMetricsSource:
    """Reads the vLLM signals of one inference service from the Prometheus HTTP API."""

    def __init__(
        self,
        url: str,
        *,
        templates: PromQLTemplates | None = None,
        step_seconds: float = 15.0,
        timeout_seconds: float = 5.0,
        headers: Mapping[str, str] | None = None,
        disable_ssl: bool = False,
        client: PrometheusConnect | None = None,
    ) -> None:
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        self.templates = templates or PromQLTemplates()
        self.step_seconds = step_seconds
        self.timeout_seconds = timeout_seconds
        self._client = client or PrometheusConnect(
            url=url.rstrip("/"),
            headers=dict(headers) if headers else None,
            disable_ssl=disable_ssl,
            # No retries: a failed read is fail-static now and retried next decision.
            retry=Retry(total=0, read=False),
            timeout=timeout_seconds,
        )

    def close(self) -> None:
        self._client.close()

    def instant_query(self, promql: str, *, at: float | None = None) -> Any:
        """The raw result of one instant query (at ``at``, or now); backend errors raise."""
        params = {"time": f"{at:.3f}"} if at is not None else None
        return self._client.custom_query(promql, params=params)

    def query(self, service: ServiceRef, *, now: float, window_seconds: float) -> MetricsResult:
        """Per-pod series over [now - window_seconds, now]; never raises for backend errors."""
        queries = render_queries(self.templates, service)
        # Whole seconds (the client rounds); floor so that no step lies after `now`.
        start = datetime.fromtimestamp(math.floor(now - window_seconds), tz=UTC)
        end = datetime.fromtimestamp(math.floor(now), tz=UTC)
        step = f"{self.step_seconds:g}"
        values: dict[str, _Values] = {}
        for key, promql in queries.items():
            try:
                raw = self._client.custom_query_range(promql, start, end, step)
                values[key] = _by_pod(raw, self.templates.pod_label, key)
            except (
                requests.RequestException,
                PrometheusApiClientException,
                ValueError,
                KeyError,
                TypeError,
            ) as exc:
                reason = f"Prometheus query for {key} failed: {_describe(exc)}"
                if key in _CORE:
                    return MetricsUnavailable(reason)
                log.warning("Skipped optional signal, %s query=%r", reason, promql)
        present = [key for key in _CORE if values[key]]
        if present and len(present) < len(_CORE):
            missing = [key for key in _CORE if not values[key]]
            return MetricsUnavailable(
                f"no series for {', '.join(missing)} while {', '.join(present)} has some; "
                f"check the PromQL templates ({queries[missing[0]]})"
            )
        last_scrape = {
            pod: max(points.values())
            for pod, points in values.get("last_scrape", {}).items()
            if points and all(math.isfinite(v) for v in points.values())
        }
        return MetricsWindow(
            start=now - window_seconds,
            end=now,
            step=self.step_seconds,
            replicas=tuple(_join(values, last_scrape)),
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    text = str(exc)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}"
