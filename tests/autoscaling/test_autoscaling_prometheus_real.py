"""The default PromQL against a real Prometheus (Debian's `prometheus`), when installed.

Two loopback exporters serve vLLM-shaped metrics; Prometheus scrapes them every
second with the labels the pod runner attaches. This checks the query syntax and
the shape of what comes back, not autoscaling behaviour.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kvpilot.autoscaling.prometheus import PrometheusMetricsSource
from kvpilot.autoscaling.source import MetricsResult, MetricsWindow, ServiceRef

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not installed"),
]


def exporter(waiting: int) -> ThreadingHTTPServer:
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            done = int((time.monotonic() - started) * 4)
            lbl = 'model_name="m",engine="0"'
            body = "\n".join(
                [
                    "# TYPE vllm:num_requests_waiting gauge",
                    f"vllm:num_requests_waiting{{{lbl}}} {waiting}",
                    "# TYPE vllm:num_requests_running gauge",
                    f"vllm:num_requests_running{{{lbl}}} 7",
                    "# TYPE vllm:kv_cache_usage_perc gauge",
                    f"vllm:kv_cache_usage_perc{{{lbl}}} 0.42",
                    "# TYPE vllm:request_success counter",
                    f'vllm:request_success_total{{{lbl},finished_reason="stop"}} {done}',
                    "# TYPE vllm:time_to_first_token_seconds histogram",
                    f'vllm:time_to_first_token_seconds_bucket{{{lbl},le="0.1"}} 0',
                    f'vllm:time_to_first_token_seconds_bucket{{{lbl},le="0.5"}} {done}',
                    f'vllm:time_to_first_token_seconds_bucket{{{lbl},le="+Inf"}} {done}',
                    f"vllm:time_to_first_token_seconds_sum{{{lbl}}} {done * 0.3}",
                    f"vllm:time_to_first_token_seconds_count{{{lbl}}} {done}",
                    "",
                ]
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def prometheus_url(tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None
    exporters = [exporter(3), exporter(5)]
    labels = {"namespace": "serving", "inference_service": "llama-8b", "revision": "r1"}
    static = [
        {
            "targets": [f"127.0.0.1:{e.server_address[1]}"],
            "labels": {**labels, "pod": f"llama-8b-{i}"},
        }
        for i, e in enumerate(exporters)
    ]
    config = tmp_path / "prometheus.yml"  # JSON is YAML
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "vllm", "static_configs": static}],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        for e in exporters:
            e.shutdown()
            e.server_close()


def complete(result: MetricsResult) -> bool:
    """Both pods, with completion rates and TTFT on the newest sample."""
    if not isinstance(result, MetricsWindow) or len(result.replicas) != 2:
        return False
    return all(
        r.last_scraped_at is not None
        and r.samples[-1].completed_per_second is not None
        and r.samples[-1].ttft_seconds is not None
        for r in result.replicas
    )


@pytest.mark.timeout(120)
def test_default_queries_on_a_real_prometheus(prometheus_url: str) -> None:
    source = PrometheusMetricsSource(prometheus_url, step_seconds=1, timeout_seconds=2)
    service = ServiceRef("serving", "llama-8b", revision="r1")
    deadline = time.monotonic() + 90
    result: MetricsResult = source.query(service, now=time.time(), window_seconds=30)
    while not complete(result) and time.monotonic() < deadline:
        time.sleep(0.5)  # polling Prometheus until two scrapes give rates
        result = source.query(service, now=time.time(), window_seconds=30)
    assert complete(result), result
    assert isinstance(result, MetricsWindow)
    newest = {r.pod: r.samples[-1] for r in result.replicas}
    assert {pod: (s.waiting, s.running, s.kv_cache_utilization) for pod, s in newest.items()} == {
        "llama-8b-0": (3.0, 7.0, 0.42),
        "llama-8b-1": (5.0, 7.0, 0.42),
    }
    for s in newest.values():
        assert s.completed_per_second is not None and s.completed_per_second > 0
        assert s.ttft_seconds is not None and 0.1 < s.ttft_seconds <= 0.5
    # Each step says when its value was scraped: within a scrape interval (1 s) or two.
    for r in result.replicas:
        scraped = [s for s in r.samples if s.scraped_at is not None]
        assert scraped, r
        assert all(0 <= s.timestamp - s.scraped_at <= 3 for s in scraped), scraped  # type: ignore[operator]
    other = source.query(ServiceRef("serving", "other"), now=time.time(), window_seconds=30)
    assert isinstance(other, MetricsWindow) and other.replicas == ()
