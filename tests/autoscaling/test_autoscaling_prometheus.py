"""The Prometheus metrics source against a tiny fake Prometheus HTTP API on loopback."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from kvpilot.autoscaling.policy import PolicyConfig, PolicyInput, PolicyState, decide
from kvpilot.autoscaling.prometheus import (
    PrometheusMetricsSource,
    PromQLTemplates,
    TemplatesError,
    load_templates,
    render_queries,
)
from kvpilot.autoscaling.source import (
    MetricsSource,
    MetricsUnavailable,
    MetricsWindow,
    ReplicaSeries,
    Sample,
    ServiceRef,
)

NOW = 1_700_000_000.0
SERVICE = ServiceRef("serving", "llama-8b")

# Which canned answer a query gets: the first marker found in its PromQL.
MARKERS = [
    ("timestamp(", "last_scrape"),
    ("time_to_first_token", "ttft"),
    ("request_success", "completed"),
    ("kv_cache_usage_perc", "kv_cache"),
    ("num_requests_running", "running"),
    ("num_requests_waiting", "waiting"),
]


@dataclass
class FakePrometheus:
    """Serves /api/v1/query and /api/v1/query_range from canned per-signal series."""

    series: dict[str, dict[str, list[tuple[float, str]]]] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def respond(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.seen.append((path, params))
        query = params.get("query", "")
        signal = next((name for marker, name in MARKERS if marker in query), "unknown")
        if signal in self.hang:
            self.release.wait(timeout=30)
        code = self.status.get(signal, 200)
        if code != 200:
            return code, {"status": "error", "errorType": "internal", "error": "boom"}
        by_pod = self.series.get(signal, {})
        result: list[dict[str, Any]]
        if path.endswith("/query_range"):
            result = [
                {"metric": {"pod": pod}, "values": [[t, v] for t, v in points]}
                for pod, points in by_pod.items()
            ]
            kind = "matrix"
        else:
            result = [
                {"metric": {"pod": pod}, "value": [points[-1][0], points[-1][1]]}
                for pod, points in by_pod.items()
                if points
            ]
            kind = "vector"
        return 200, {"status": "success", "data": {"resultType": kind, "result": result}}


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
            code, body = fake.respond(parsed.path, params)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


STAMPS = [NOW - 30, NOW - 15, NOW]


def canned(values: list[str]) -> list[tuple[float, str]]:
    return list(zip(STAMPS, values, strict=True))


def two_pods(prom: FakePrometheus) -> None:
    prom.series = {
        "waiting": {"pod-a": canned(["0", "2", "5"]), "pod-b": canned(["1", "1", "1"])},
        "running": {"pod-a": canned(["8", "16", "16"]), "pod-b": canned(["4", "4", "4"])},
        "kv_cache": {"pod-a": canned(["0.4", "0.9", "1"]), "pod-b": canned(["0.2", "0.2", "0.2"])},
        # pod-b's first completion rate is not there yet (fresh counter).
        "completed": {
            "pod-a": canned(["0.4", "0.8", "0.8"]),
            "pod-b": canned(["0.2", "0.2", "0.2"])[1:],
        },
        "ttft": {"pod-a": canned(["NaN", "0.5", "1.5"])},
        # When each step's value was scraped; pod-b's older ones are not known.
        "last_scrape": {
            "pod-a": canned([str(NOW - 34), str(NOW - 19), str(NOW - 4)]),
            "pod-b": [(NOW, str(NOW - 9))],
        },
    }


def test_reads_aligned_series_per_pod(prom: FakePrometheus) -> None:
    two_pods(prom)
    source = PrometheusMetricsSource(prom.url, step_seconds=15)
    assert isinstance(source, MetricsSource)
    got = source.query(SERVICE, now=NOW, window_seconds=30)
    assert isinstance(got, MetricsWindow)
    nan_first = got.replicas[0].samples[0]
    assert nan_first.ttft_seconds is not None and math.isnan(nan_first.ttft_seconds)
    expected = MetricsWindow(
        start=NOW - 30,
        end=NOW,
        step=15,
        replicas=(
            ReplicaSeries(
                "pod-a",
                (
                    Sample(NOW - 30, 0, 8, 0.4, nan_first.ttft_seconds, 0.4, NOW - 34),
                    Sample(NOW - 15, 2, 16, 0.9, 0.5, 0.8, NOW - 19),
                    Sample(NOW, 5, 16, 1.0, 1.5, 0.8, NOW - 4),
                ),
                last_scraped_at=NOW - 4,
            ),
            ReplicaSeries(
                "pod-b",
                (
                    Sample(NOW - 30, 1, 4, 0.2, None, None),
                    Sample(NOW - 15, 1, 4, 0.2, None, 0.2),
                    Sample(NOW, 1, 4, 0.2, None, 0.2, NOW - 9),
                ),
                last_scraped_at=NOW - 9,
            ),
        ),
    )
    assert got == expected


def test_sends_the_default_promql(prom: FakePrometheus) -> None:
    two_pods(prom)
    PrometheusMetricsSource(prom.url, step_seconds=15).query(
        ServiceRef("serving", "llama-8b", revision="5d8f"), now=NOW, window_seconds=180
    )
    sel = 'namespace="serving",inference_service="llama-8b",revision="5d8f"'
    ranged = {"start": str(int(NOW - 180)), "end": str(int(NOW)), "step": "15"}
    assert prom.seen == [
        (
            "/api/v1/query_range",
            {"query": f"sum by (pod) (vllm:num_requests_waiting{{{sel}}})", **ranged},
        ),
        (
            "/api/v1/query_range",
            {"query": f"sum by (pod) (vllm:num_requests_running{{{sel}}})", **ranged},
        ),
        (
            "/api/v1/query_range",
            {"query": f"avg by (pod) (vllm:kv_cache_usage_perc{{{sel}}})", **ranged},
        ),
        (
            "/api/v1/query_range",
            {"query": f"sum by (pod) (rate(vllm:request_success_total{{{sel}}}[1m]))", **ranged},
        ),
        (
            "/api/v1/query_range",
            {
                "query": "histogram_quantile(0.9, sum by (pod, le) "
                f"(rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[1m])))",
                **ranged,
            },
        ),
        (
            "/api/v1/query_range",
            {
                "query": f"max by (pod) (timestamp(vllm:num_requests_waiting{{{sel}}}))",
                **ranged,
            },
        ),
    ]


def test_templates_fit_other_label_conventions() -> None:
    templates = PromQLTemplates(
        selector='kubernetes_namespace="$namespace",app_kubernetes_io_name="$name"',
        waiting="sum by (kubernetes_pod_name) (vllm:num_requests_waiting{$selector})",
        ttft=None,
        last_scrape=None,
        pod_label="kubernetes_pod_name",
    )
    queries = render_queries(templates, ServiceRef("team-a", 'odd"name'))
    assert queries["waiting"] == (
        "sum by (kubernetes_pod_name) (vllm:num_requests_waiting"
        '{kubernetes_namespace="team-a",app_kubernetes_io_name="odd\\"name"})'
    )
    assert set(queries) == {"waiting", "running", "kv_cache", "completed"}


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (
            {"status": {"running": 500}},
            "Prometheus query for running failed: PrometheusApiClientException: "
            "HTTP Status Code 500",
        ),
        (
            {"drop": "kv_cache"},
            "no series for kv_cache while waiting, running has some; check the PromQL templates "
            '(avg by (pod) (vllm:kv_cache_usage_perc{namespace="serving",'
            'inference_service="llama-8b"}))',
        ),
        ({"hang": {"waiting"}}, "Prometheus query for waiting failed: timed out"),
        (
            {"no_pod_label": True},
            "Prometheus query for waiting failed: ValueError: waiting: a series has no 'pod' label",
        ),
    ],
    ids=["server error", "a signal missing", "timeout", "no pod label"],
)
def test_unavailable_with_reason(prom: FakePrometheus, setup: dict[str, Any], reason: str) -> None:
    two_pods(prom)
    prom.status = setup.get("status", {})
    prom.hang = setup.get("hang", set())
    if "drop" in setup:
        prom.series[setup["drop"]] = {}
    templates = PromQLTemplates()
    if setup.get("no_pod_label"):
        templates = PromQLTemplates(waiting="sum(vllm:num_requests_waiting{$selector})")
        prom.series["waiting"] = {"": canned(["1", "1", "1"])}
    source = PrometheusMetricsSource(prom.url, templates=templates, timeout_seconds=0.5)
    got = source.query(SERVICE, now=NOW, window_seconds=30)
    assert isinstance(got, MetricsUnavailable)
    assert got.reason.startswith(reason)


def test_prometheus_not_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = PrometheusMetricsSource(f"http://127.0.0.1:{port}", timeout_seconds=0.5)
    got = source.query(SERVICE, now=NOW, window_seconds=30)
    assert got == MetricsUnavailable("Prometheus query for waiting failed: cannot connect")


def test_optional_signals_degrade_quietly(prom: FakePrometheus) -> None:
    two_pods(prom)
    prom.status = {"ttft": 500, "completed": 500, "last_scrape": 500}
    got = PrometheusMetricsSource(prom.url).query(SERVICE, now=NOW, window_seconds=30)
    assert isinstance(got, MetricsWindow)
    assert [r.last_scraped_at for r in got.replicas] == [None, None]
    assert {(s.ttft_seconds, s.completed_per_second) for r in got.replicas for s in r.samples} == {
        (None, None)
    }


def test_no_series_at_all_is_an_empty_window(prom: FakePrometheus) -> None:
    got = PrometheusMetricsSource(prom.url).query(SERVICE, now=NOW, window_seconds=30)
    assert got == MetricsWindow(start=NOW - 30, end=NOW, step=15, replicas=())


def test_feeds_the_policy(prom: FakePrometheus) -> None:
    """Source and policy fit together: the window read here drives a decision."""
    two_pods(prom)
    source = PrometheusMetricsSource(prom.url)
    config = PolicyConfig(min_replicas=1, max_replicas=4)
    window = source.query(SERVICE, now=NOW, window_seconds=config.stable_window_seconds)
    d = decide(
        config,
        PolicyState(),
        PolicyInput(now=NOW, metrics=window, spec_replicas=2, ready_replicas=2),
    )
    assert (d.desired_replicas, d.fail_static, d.observed is not None) == (2, False, True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", PromQLTemplates()),
        ("# nothing set\n", PromQLTemplates()),
        (
            'selector: \'kubernetes_namespace="$namespace",app="$name"\'\n'
            "podLabel: kubernetes_pod_name\n"
            "waiting: sum by (kubernetes_pod_name) (vllm:num_requests_waiting{$selector})\n"
            "ttft: null\n",
            PromQLTemplates(
                selector='kubernetes_namespace="$namespace",app="$name"',
                pod_label="kubernetes_pod_name",
                waiting="sum by (kubernetes_pod_name) (vllm:num_requests_waiting{$selector})",
                ttft=None,
            ),
        ),
        ("completed: null\nlastScrape: null\n", PromQLTemplates(completed=None, last_scrape=None)),
    ],
)
def test_load_templates(text: str, expected: PromQLTemplates) -> None:
    assert load_templates(text, "t.yaml") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- waiting\n", "t.yaml: expected a mapping of template names to PromQL"),
        ("kv_cache: x\n", "t.yaml: unknown key 'kv_cache'; expected one of selector, "
         "revisionSelector, waiting, running, kvCache, completed, ttft, lastScrape, podLabel"),
        ("waiting: null\n", "t.yaml: waiting is required (only optional queries completed, "
         "ttft, lastScrape may be null)"),
        ("running: 3\n", "t.yaml: running must be a non-empty string"),
        ("kvCache: avg(vllm:kv_cache_usage_perc)\n",
         "t.yaml: kvCache must use $selector (and no other placeholder), got none"),
        ("waiting: sum(x{$selector,ns=$namespace})\n",
         "t.yaml: waiting must use $selector (and no other placeholder), got $namespace, "
         "$selector"),
        ("selector: 'ns=\"$ns\"'\n",
         "t.yaml: selector uses $ns; only $namespace, $name and $revision are known"),
        ("waiting: [\n", None),
    ],
)  # fmt: skip
def test_load_templates_rejects(text: str, message: str | None) -> None:
    with pytest.raises(TemplatesError) as err:
        load_templates(text, "t.yaml")
    if message is None:
        assert str(err.value).startswith("t.yaml: not YAML:")
    else:
        assert str(err.value) == message


def test_loaded_templates_render_for_a_service() -> None:
    templates = load_templates(
        'selector: \'kubernetes_namespace="$namespace",app="$name"\'\n', "t.yaml"
    )
    queries = render_queries(templates, ServiceRef("team-a", "llama"))
    assert queries["waiting"] == (
        'sum by (pod) (vllm:num_requests_waiting{kubernetes_namespace="team-a",app="llama"})'
    )
