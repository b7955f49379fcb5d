"""The fidelity run's simulated side: the engine model driven through a load in simulated time."""

from __future__ import annotations

import pytest

from kvpilot_runtime.engine import Engine, EngineConfig, Sample
from kvpilot_runtime.fidelity import SimOutcome, simulate_plans, summarize_sim, time_mean
from kvpilot_runtime.latency import Effective, ModelShape, Profile
from kvpilot_runtime.probe import RequestPlan

# Step time = 10 ms + 1 ms per scheduled token (weights, KV and attention free).
PROFILE = Profile(
    name="unit",
    gpu="UNIT",
    memory_gib=1,
    effective=Effective(
        step_overhead_s=0.01,
        weight_bandwidth_bytes_per_s=1e30,
        kv_bandwidth_bytes_per_s=1e30,
        matmul_flops_per_s=1e6,
        attention_flops_per_s=1e30,
        allreduce_latency_s=0.0,
        allreduce_bandwidth_bytes_per_s=1e30,
    ),
)
SHAPE = ModelShape(
    parameters=500, layers=1, hidden_size=8, attention_heads=1, kv_heads=1, head_dim=8
)
FRONTEND = 0.005


def engine(max_num_seqs: int = 4) -> Engine:
    config = EngineConfig(
        num_blocks=65,
        max_model_len=256,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=64,
        block_size=4,
    )
    return Engine(config, PROFILE, SHAPE)


def plan(at: float, prompt: int = 10, out: int = 3) -> RequestPlan:
    return RequestPlan(at, tuple(range(2, 2 + prompt)), out)


def test_open_loop_request_times() -> None:
    # Reaches the engine at 5 ms; prefill of 10 tokens 20 ms; two decodes of 11 ms.
    outcomes, samples = simulate_plans(engine(), [plan(0.0)], FRONTEND)
    (o,) = outcomes
    assert (o.sent, o.output_tokens) == (0.0, 3)
    assert o.first_token == pytest.approx(0.025)
    assert o.finish == pytest.approx(0.047)
    assert [s.time for s in samples] == pytest.approx([0.025, 0.036, 0.047])
    assert [s.num_running for s in samples] == [1, 1, 0]


def test_closed_loop_sends_the_next_request_on_completion() -> None:
    outcomes, _ = simulate_plans(engine(), [plan(5.0), plan(9.0)], FRONTEND, concurrency=1)
    assert [o.sent for o in outcomes] == pytest.approx([0.0, 0.047])
    assert [o.finish for o in outcomes] == pytest.approx([0.047, 0.094])


def test_requests_beyond_max_num_seqs_wait() -> None:
    plans = [plan(0.0) for _ in range(3)]
    _, samples = simulate_plans(engine(max_num_seqs=2), plans, FRONTEND)
    assert (samples[0].num_running, samples[0].num_waiting) == (2, 1)
    assert samples[-1].num_running == samples[-1].num_waiting == 0


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0.0, 4.0, 1.0),  # 0 until the first sample at 1, then 2 until 3, then 0
        (1.0, 3.0, 2.0),
        (2.0, 5.0, 2 / 3),
        (3.5, 4.0, 0.0),
    ],
)
def test_time_mean_holds_each_sample_until_the_next(
    start: float, end: float, expected: float
) -> None:
    samples = [Sample(1.0, 2, 0, 0.0), Sample(3.0, 0, 0, 0.0)]
    assert time_mean(samples, start, end, "num_running") == pytest.approx(expected)


def test_summary_of_a_simulated_load() -> None:
    outcomes = [SimOutcome(0.0, 0.5, 1.5, 11), SimOutcome(1.0, 1.2, 2.2, 6)]
    samples = [Sample(0.5, 1, 1, 0.25), Sample(1.5, 1, 0, 0.125), Sample(2.2, 0, 0, 0.0)]
    summary = summarize_sim(outcomes, samples)
    assert summary["median_ttft_s"] == pytest.approx(0.35)
    assert summary["median_itl_s"] == pytest.approx(0.15)
    assert summary["mean_queue_depth"] == pytest.approx(1.0 / 2.2)
    assert summary["mean_running"] == pytest.approx(1.7 / 2.2)


def test_a_slower_machine_stretches_every_step() -> None:
    """The speed factor a fidelity run measures stretches step times, not the front end."""
    (fast,), _ = simulate_plans(engine(), [plan(0.0)], FRONTEND)
    slower = engine()
    slower.slowdown = 2.0
    (slow,), _ = simulate_plans(slower, [plan(0.0)], FRONTEND)
    # 20 ms prefill and two 11 ms decodes, each twice as long.
    assert slow.first_token - slow.sent == pytest.approx(FRONTEND + 0.040)
    assert slow.finish - slow.first_token == pytest.approx(2 * (fast.finish - fast.first_token))
    assert slow.finish - slow.first_token == pytest.approx(0.044)
