"""Per-revision analysis windows against a tiny fake Prometheus HTTP API on loopback.

The e2e (e2e/test_rollout_analysis.py) runs the same queries against the dev
cluster's real Prometheus; this checks the parsing and the error paths quickly.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from kvpilot.autoscaling.prometheus import PrometheusMetricsSource, PromQLTemplates
from kvpilot.autoscaling.revisions import (
    RevisionMetricsUnavailableError,
    RevisionQueries,
    fetch_windows,
    render_revision_queries,
)
from kvpilot.rollout.analysis import RevisionWindow
from kvpilot_runtime.metrics import QUERIED_FAMILIES, QUERIED_HTTP_FAMILIES

NOW = 1_800_000_000.0

# (revision, quantity) -> the value Prometheus returns; None = empty vector.
ANSWERS: dict[tuple[str, str], str | None] = {
    ("stable", "requests"): "120",
    ("stable", "errors"): None,
    ("stable", "ttft"): "0.25",
    ("stable", "itl"): "0.02",
    ("canary", "requests"): "30.5",
    ("canary", "errors"): "6",
    ("canary", "ttft"): "NaN",
    ("canary", "itl"): "0.06",
}


def quantity(query: str) -> str:
    if "time_to_first_token" in query:
        return "ttft"
    if "inter_token" in query:
        return "itl"
    return "errors" if 'status="5xx"' in query else "requests"


@pytest.fixture
def prom_url() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
            seen.append(params)
            query = params["query"]
            rev = re.search(r'revision="([^"]*)"', query)
            answer = ANSWERS.get((rev.group(1) if rev else "", quantity(query)), "boom")
            if answer == "boom":
                code, body = 500, {"status": "error", "errorType": "internal", "error": "boom"}
            else:
                result = [] if answer is None else [{"metric": {}, "value": [NOW, answer]}]
                body = {"status": "success", "data": {"resultType": "vector", "result": result}}
                code = 200
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_fetch_windows(prom_url: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = prom_url
    source = PrometheusMetricsSource(url)
    stable, canary = fetch_windows(source, "serving", "llm", "stable", "canary", 45, now=NOW)
    # Empty vector = nothing counted; NaN (a quantile over no samples) = no data.
    assert stable == RevisionWindow(requests=120, errors=0, ttft_p95_s=0.25, itl_p95_s=0.02)
    assert canary == RevisionWindow(requests=30.5, errors=6, ttft_p95_s=None, itl_p95_s=0.06)
    assert {p["time"] for p in seen} == {f"{NOW:.3f}"}
    assert all("45s" in p["query"] for p in seen)
    assert all('namespace="serving",inference_service="llm",revision=' in p["query"] for p in seen)


def test_unknown_revision_is_unavailable(prom_url: tuple[str, list[dict[str, str]]]) -> None:
    source = PrometheusMetricsSource(prom_url[0])
    with pytest.raises(RevisionMetricsUnavailableError, match="revision other"):
        fetch_windows(source, "serving", "llm", "stable", "other", 45, now=NOW)


def test_unreachable_is_unavailable() -> None:
    source = PrometheusMetricsSource("http://127.0.0.1:9", timeout_seconds=1)
    with pytest.raises(RevisionMetricsUnavailableError, match="requests"):
        fetch_windows(source, "serving", "llm", "a", "b", 60, now=NOW)


def test_queries_read_only_contract_checked_metrics() -> None:
    """The contract tests check these names against real vLLM's /metrics."""
    rendered = render_revision_queries(RevisionQueries(), 'namespace="n"', 60)
    names = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for promql in rendered.values()
        for name in re.findall(r"([a-z_:]+)\{", promql)
    }
    assert names <= set(QUERIED_FAMILIES) | set(QUERIED_HTTP_FAMILIES), names
    assert {"http_requests", "vllm:inter_token_latency_seconds"} <= names


def test_window_rounds_up_to_whole_seconds() -> None:
    rendered = render_revision_queries(RevisionQueries(), "x", 29.2)
    assert "offset 30s" in rendered["requests"]
    assert PromQLTemplates().revision_selector == ',revision="$revision"'
