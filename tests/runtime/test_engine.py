"""The engine model: scheduling, chunked prefill, KV blocks, preemption, prefix caching."""

from __future__ import annotations

import dataclasses
import random

import pytest

from kvpilot_runtime.engine import (
    Engine,
    EngineConfig,
    EngineStats,
    RequestRecord,
    RequestSpec,
    cpu_kv_cache_blocks,
    gpu_kv_cache_blocks,
    simulate,
)
from kvpilot_runtime.latency import Batch, Effective, ModelShape, PrefillChunk, Profile
from kvpilot_runtime.models import CATALOG, TINY_LLAMA

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


def cfg(**kw: object) -> EngineConfig:
    base: dict[str, object] = {
        "num_blocks": 65,
        "max_model_len": 256,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 64,
        "block_size": 4,
        "enable_prefix_caching": False,
    }
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


def req(rid: str, prompt: int, out: int, at: float = 0.0, first: int = 0) -> RequestSpec:
    return RequestSpec(rid, tuple(range(first + 2, first + 2 + prompt)), out, at)


def rec(rid: str, arrival: float, times: tuple[float, ...]) -> RequestRecord:
    return RequestRecord(rid, arrival, times[0], times[-1], times)


def rounded(records: tuple[RequestRecord, ...]) -> list[RequestRecord]:
    return sorted(
        (
            RequestRecord(
                r.request_id,
                round(r.arrival_time, 6),
                round(r.first_token_time, 6),
                round(r.finish_time, 6),
                tuple(round(t, 6) for t in r.token_times),
            )
            for r in records
        ),
        key=lambda r: r.request_id,
    )


@pytest.mark.parametrize(
    ("config", "arrivals", "expected"),
    [
        pytest.param(
            cfg(),
            [req("a", 10, 3)],
            # prefill 10 tokens: 20 ms; each decode: 11 ms.
            [rec("a", 0.0, (0.02, 0.031, 0.042))],
            id="single-request",
        ),
        pytest.param(
            cfg(max_num_batched_tokens=8),
            [req("a", 20, 2)],
            # chunks of 8, 8, 4 (18, 18, 14 ms), then one decode.
            [rec("a", 0.0, (0.05, 0.061))],
            id="chunked-prefill",
        ),
        pytest.param(
            cfg(),
            [req("a", 10, 2), req("b", 10, 2)],
            # Both prefill in one 30 ms step, then decode together (12 ms).
            [rec("a", 0.0, (0.03, 0.042)), rec("b", 0.0, (0.03, 0.042))],
            id="batched-prefill",
        ),
        pytest.param(
            cfg(max_num_seqs=1),
            [req("a", 10, 2), req("b", 10, 2)],
            # b waits for a: a 20+11 ms, then b 20+11 ms.
            [rec("a", 0.0, (0.02, 0.031)), rec("b", 0.0, (0.051, 0.062))],
            id="max-num-seqs-queues",
        ),
        pytest.param(
            cfg(),
            [req("a", 10, 3), req("b", 4, 1, at=0.025)],
            # b arrives during a's first decode and joins the next step with a's decode.
            [rec("a", 0.0, (0.02, 0.031, 0.046)), rec("b", 0.025, (0.046,))],
            id="continuous-batching",
        ),
    ],
)
def test_timelines(
    config: EngineConfig, arrivals: list[RequestSpec], expected: list[RequestRecord]
) -> None:
    result = simulate(Engine(config, PROFILE, SHAPE), arrivals)
    assert rounded(result.records) == sorted(expected, key=lambda r: r.request_id)


def test_steps_schedule_running_first_then_waiting() -> None:
    engine = Engine(cfg(max_num_batched_tokens=8), PROFILE, SHAPE)
    engine.add_request(req("a", 6, 2))
    engine.add_request(req("b", 6, 2, first=100))
    steps = [engine.step(0.0) for _ in range(4)]
    assert [s.scheduled for s in steps] == [
        (("a", 6), ("b", 2)),
        (("a", 1), ("b", 4)),
        (("b", 1),),
        (),
    ]
    assert steps[0].batch == Batch(prefill_chunks=(PrefillChunk(6, 0), PrefillChunk(2, 0)))
    assert steps[1].batch == Batch(decode_contexts=(7,), prefill_chunks=(PrefillChunk(4, 2),))


def test_kv_usage_counts_blocks_without_the_null_block() -> None:
    engine = Engine(cfg(num_blocks=11, max_model_len=40), PROFILE, SHAPE)
    engine.add_request(req("a", 9, 4))  # 9 tokens: 3 blocks of 4
    engine.step(0.0)
    stats = engine.stats()
    assert dataclasses.replace(stats, kv_cache_usage=round(stats.kv_cache_usage, 9)) == EngineStats(
        num_running=1,
        num_waiting=0,
        kv_cache_usage=0.3,
        num_preemptions_total=0,
        prefix_cache_queries_total=0,
        prefix_cache_hits_total=0,
        prompt_tokens_total=9,
        generation_tokens_total=1,
    )


def test_admission_needs_the_whole_prompt_to_fit() -> None:
    # 8 usable blocks of 4 tokens; a holds 5, b's 16-token prompt needs 4 > 3 free.
    engine = Engine(cfg(num_blocks=9, max_num_batched_tokens=8, max_model_len=32), PROFILE, SHAPE)
    engine.add_request(req("a", 20, 1))
    engine.step(0.0)
    engine.add_request(req("b", 16, 1, first=50))
    step = engine.step(0.0)
    assert step.scheduled == (("a", 8),)
    assert engine.stats().num_waiting == 1


def test_preemption_by_recompute() -> None:
    # 4 usable blocks of 4 tokens: two 6-token prompts fit (2 blocks each) until
    # both need a third block; the later one is preempted and recomputed.
    config = cfg(num_blocks=5, max_model_len=16)
    engine = Engine(config, PROFILE, SHAPE)
    result = simulate(engine, [req("a", 6, 6), req("b", 6, 6, first=50)])
    assert engine.stats().num_preemptions_total >= 1
    assert sorted(r.request_id for r in result.records) == ["a", "b"]
    assert all(len(r.token_times) == 6 for r in result.records)
    a, b = sorted(result.records, key=lambda r: r.request_id)
    assert a.finish_time < b.finish_time


def test_preempted_step_reports_victim() -> None:
    engine = Engine(cfg(num_blocks=5, max_model_len=16), PROFILE, SHAPE)
    engine.add_request(req("a", 6, 6))
    engine.add_request(req("b", 6, 6, first=50))
    preempted: list[str] = []
    for _ in range(20):
        preempted.extend(engine.step(0.0).preempted)
    assert preempted[:1] == ["b"]


def test_prefix_cache_hits_on_repeated_prompt() -> None:
    engine = Engine(cfg(enable_prefix_caching=True), PROFILE, SHAPE)
    simulate(engine, [req("a", 17, 1), req("b", 17, 1, at=1.0)])
    s = engine.stats()
    # 17 tokens = 4 full blocks; all 4 hit for b (the 17th token is recomputed).
    assert (s.prefix_cache_queries_total, s.prefix_cache_hits_total) == (34, 16)


def test_prefix_cache_recomputes_last_token_of_fully_cached_prompt() -> None:
    engine = Engine(cfg(enable_prefix_caching=True), PROFILE, SHAPE)
    simulate(engine, [req("a", 16, 1), req("b", 16, 1, at=1.0)])
    assert engine.stats().prefix_cache_hits_total == 12


def test_no_prefix_hits_when_disabled() -> None:
    engine = Engine(cfg(enable_prefix_caching=False), PROFILE, SHAPE)
    simulate(engine, [req("a", 17, 1), req("b", 17, 1, at=1.0)])
    assert engine.stats().prefix_cache_hits_total == 0


def test_abort_frees_blocks() -> None:
    engine = Engine(cfg(num_blocks=11, max_model_len=40), PROFILE, SHAPE)
    engine.add_request(req("a", 9, 4))
    engine.step(0.0)
    engine.abort_request("a")
    s = engine.stats()
    assert (s.num_running, s.kv_cache_usage, engine.has_unfinished()) == (0, 0.0, False)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (req("a", 200, 100), "maximum context length is 256"),
        (req("a", 10, 0), "max_tokens"),
        (RequestSpec("a", (), 4), "empty"),
    ],
)
def test_validation(spec: RequestSpec, message: str) -> None:
    engine = Engine(cfg(), PROFILE, SHAPE)
    with pytest.raises(ValueError, match=message):
        engine.add_request(spec)


def test_config_refuses_max_model_len_beyond_cache() -> None:
    with pytest.raises(ValueError, match="larger than the maximum number of tokens"):
        cfg(num_blocks=5, max_model_len=17)


def test_deterministic_for_a_seed() -> None:
    def run(seed: int) -> tuple[RequestRecord, ...]:
        rng = random.Random(3)
        arrivals = [
            req(str(i), rng.randint(4, 40), rng.randint(1, 20), at=i * 0.01, first=i * 50)
            for i in range(40)
        ]
        config = cfg(
            num_blocks=40, max_model_len=64, step_jitter=0.1, seed=seed, enable_prefix_caching=True
        )
        return simulate(Engine(config, PROFILE, SHAPE), arrivals).records

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_overload_builds_a_queue() -> None:
    arrivals = [req(str(i), 20, 10, at=i * 0.005, first=i * 30) for i in range(100)]
    result = simulate(Engine(cfg(max_num_seqs=4), PROFILE, SHAPE), arrivals)
    assert max(s.num_waiting for s in result.samples) > 50
    assert len(result.records) == 100


@pytest.mark.parametrize(
    ("shape", "tp", "memory_gib", "util", "expected_blocks"),
    [
        # Llama-3.1-8B on H100: (0.9 x 79.65 - 1.5) GiB - 16.06 GB of weights = 59.3 GB,
        # in blocks of 16 tokens x 128 KiB.
        (CATALOG["meta-llama/llama-3.1-8b-instruct"], 1, 79.65, 0.9, 28_276),
        # Llama-3.1-70B at TP 4 on A100-80GB: (0.9 x 80 - 1.5) GiB - 35.3 GB per rank,
        # 8 KV heads over 4 ranks = 80 KiB per token per rank.
        (CATALOG["meta-llama/llama-3.1-70b-instruct"], 4, 80.0, 0.9, 30_821),
    ],
)
def test_gpu_kv_capacity(
    shape: ModelShape, tp: int, memory_gib: float, util: float, expected_blocks: int
) -> None:
    assert gpu_kv_cache_blocks(shape, tp, memory_gib, util) == expected_blocks


def test_cpu_kv_capacity_matches_vllm() -> None:
    # vLLM-CPU logged num_gpu_blocks=4096 for a 1 GiB budget, 2 KiB/token, 128-token blocks.
    small = ModelShape(3.4e6, 4, 256, 4, 2, 64)
    assert cpu_kv_cache_blocks(small, 1.0, block_size=128) == 4096
    assert cpu_kv_cache_blocks(TINY_LLAMA, 1.0, block_size=128) == 2048
