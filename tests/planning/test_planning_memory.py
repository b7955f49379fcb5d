"""Memory model against hand-computed figures for real models."""

from __future__ import annotations

import pytest

from kvpilot.planning.gpus import GIB, MIB, require_gpu_type
from kvpilot.planning.memory import (
    MemoryBreakdown,
    ServingConfig,
    default_target_concurrency,
    estimate_memory,
    kv_bytes_per_token,
    weight_bytes,
    weight_bytes_per_rank,
)
from kvpilot.planning.models import CATALOG

KIB = 1024
L8 = CATALOG["llama-3.1-8b"]
L70 = CATALOG["llama-3.1-70b"]
# Input embedding + untied LM head of Llama 3.1 70B: 2 x 128256 x 8192.
L70_EMBED = 2_101_346_304


@pytest.mark.parametrize(
    ("model", "kv_dtype", "tp", "expected"),
    [
        # 2 x 32 layers x 8 KV heads x 128 x 2 B = 128 KiB
        ("llama-3.1-8b", "auto", 1, 128 * KIB),
        # 2 x 80 x 8 x 128 x 2 B = 320 KiB
        ("llama-3.1-70b", "auto", 1, 320 * KIB),
        ("llama-3.1-70b", "fp8", 1, 160 * KIB),
        ("llama-3.1-70b", "fp8_e5m2", 1, 160 * KIB),
        # Split across ranks: 4 KV heads per rank at TP2, 1 at TP8.
        ("llama-3.1-70b", "auto", 2, 160 * KIB),
        ("llama-3.1-70b", "auto", 8, 40 * KIB),
        # Qwen2.5-7B has 4 KV heads: at TP8 each rank holds one replicated head.
        ("qwen2.5-7b", "auto", 1, 2 * 28 * 4 * 128 * 2),
        ("qwen2.5-7b", "auto", 8, 2 * 28 * 1 * 128 * 2),
        # Gemma 2 9B: head_dim 256.
        ("gemma-2-9b", "auto", 1, 2 * 42 * 8 * 256 * 2),
        # Multi-head attention (Llama 2 7B: 32 KV heads) is 4x a GQA 8B.
        ("llama-2-7b", "auto", 1, 512 * KIB),
    ],
)
def test_kv_bytes_per_token(model: str, kv_dtype: str, tp: int, expected: int) -> None:
    assert kv_bytes_per_token(CATALOG[model], kv_dtype, "auto", tp) == expected


@pytest.mark.parametrize(
    ("model", "quantization", "expected"),
    [
        ("llama-3.1-8b", "none", 16_060_000_000),  # 8.03e9 x 2 B
        ("llama-3.1-70b", "none", 141_100_000_000),  # 70.55e9 x 2 B
        # Embeddings stay 16-bit, the rest is 1 B: 70.55e9 + embed.
        ("llama-3.1-70b", "fp8", 70_550_000_000 + L70_EMBED),
        ("llama-3.1-70b", "int8", 70_550_000_000 + L70_EMBED),
        # 4-bit + per-128 group a 16-bit scale and a 4-bit zero: 0.5 + 2.5/128 B per weight.
        # embed x 2 + (70.55e9 - embed) x 0.51953125
        ("llama-3.1-70b", "awq", 39_763_907_224),
        ("llama-3.1-70b", "gptq", 39_763_907_224),
        # Mixtral keeps all 8 experts resident: 46.7e9 x 2 B.
        ("mixtral-8x7b", "none", 93_400_000_000),
    ],
)
def test_weight_bytes(model: str, quantization: str, expected: int) -> None:
    assert weight_bytes(CATALOG[model], quantization) == expected


def test_weights_split_across_ranks_with_replicated_kv_projections() -> None:
    assert weight_bytes_per_rank(L70, "none", "auto", 2) == 70_550_000_000
    qwen = CATALOG["qwen2.5-7b"]
    # 7.62e9 x 2 B / 8 ranks, plus: 4 KV heads on 8 ranks means every rank keeps one whole
    # head of the K and V projections instead of half of one (28 x 2 x 3584 x 128 x 0.5 x 2 B).
    assert weight_bytes_per_rank(qwen, "none", "auto", 8) == 1_905_000_000 + 25_690_112


@pytest.mark.parametrize(
    ("max_model_len", "max_num_seqs", "expected"),
    [
        (8192, None, 4),
        (4096, None, 8),
        (2048, None, 16),
        (32768, None, 1),
        (131072, None, 1),
        (10000, None, 4),
        (8192, 2, 2),
    ],
)
def test_default_target_concurrency(
    max_model_len: int, max_num_seqs: int | None, expected: int
) -> None:
    assert default_target_concurrency(max_model_len, max_num_seqs) == expected


def test_breakdown_llama_8b_on_h100() -> None:
    budget = int(81559 * MIB * 0.9)
    weights = 16_060_000_000
    # 8192 batched tokens x 2 B x (6 x 4096 + 3 x 14336) + sampler 1024 seqs x 128256 x 8 B
    activation = 8192 * 2 * (6 * 4096 + 3 * 14336) + 1024 * 128256 * 8
    left = budget - weights - activation - GIB // 2 - GIB // 2
    assert estimate_memory(
        L8, ServingConfig(), require_gpu_type("H100-80GB"), 1
    ) == MemoryBreakdown(
        gpu_type="H100-80GB",
        tensor_parallel=1,
        gpu_memory_bytes=81559 * MIB,
        gpu_memory_utilization=0.9,
        budget_bytes=budget,
        weights_bytes=weights,
        kv_cache_bytes=4 * 8192 * 128 * KIB,
        activation_bytes=activation,
        cuda_graph_bytes=GIB // 2,
        runtime_overhead_bytes=GIB // 2,
        kv_bytes_per_token=128 * KIB,
        max_model_len=8192,
        target_sequences=4,
        kv_capacity_tokens=left // (128 * KIB) // 16 * 16,
    )


@pytest.mark.parametrize(
    ("model", "config", "gpu", "tp", "fits"),
    [
        # Llama-3.1-70B bf16: 131 GiB of weights never fit one 80 GB GPU ...
        ("llama-3.1-70b", ServingConfig(), "H100-80GB", 1, (False, False)),
        ("llama-3.1-70b", ServingConfig(), "A100-80GB", 1, (False, False)),
        # ... at TP2 (65.7 GiB per GPU) only a reduced KV cache fits ...
        ("llama-3.1-70b", ServingConfig(), "H100-80GB", 2, (False, True)),
        ("llama-3.1-70b", ServingConfig(target_concurrency=1), "H100-80GB", 2, (True, True)),
        ("llama-3.1-70b", ServingConfig(target_concurrency=1), "A100-80GB", 2, (True, True)),
        # ... and at TP4 the default KV budget fits comfortably.
        ("llama-3.1-70b", ServingConfig(), "H100-80GB", 4, (True, True)),
        # AWQ (37 GiB) fits one 80 GB GPU with the default KV budget.
        ("llama-3.1-70b", ServingConfig(quantization="awq"), "H100-80GB", 1, (True, True)),
        ("llama-3.1-70b", ServingConfig(quantization="awq"), "A100-80GB", 1, (True, True)),
        ("llama-3.1-70b", ServingConfig(quantization="awq"), "A100-40GB", 1, (False, False)),
        # Llama-3.1-8B on one L4: 15 GiB of weights leave room for ~3.8 sequences of 8192,
        # short of the default 4; it fits with a reduced KV budget.
        ("llama-3.1-8b", ServingConfig(), "L4-24GB", 1, (False, True)),
        ("llama-3.1-8b", ServingConfig(target_concurrency=3), "L4-24GB", 1, (True, True)),
        (
            "llama-3.1-8b",
            ServingConfig(max_model_len=4096, target_concurrency=6),
            "L4-24GB",
            1,
            (True, True),
        ),
        ("llama-3.1-8b", ServingConfig(kv_cache_dtype="fp8"), "L4-24GB", 1, (True, True)),
        ("llama-3.1-8b", ServingConfig(quantization="fp8"), "L4-24GB", 1, (True, True)),
        ("llama-3.1-8b", ServingConfig(gpu_memory_utilization=0.75), "L4-24GB", 1, (False, False)),
        ("llama-3.1-8b", ServingConfig(), "L4-24GB", 2, (True, True)),
        ("llama-3.1-8b", ServingConfig(), "H100-80GB", 1, (True, True)),
        # Mixtral 8x7B (all experts, 87 GiB) needs two 80 GB GPUs.
        ("mixtral-8x7b", ServingConfig(), "H100-80GB", 1, (False, False)),
        ("mixtral-8x7b", ServingConfig(), "H100-80GB", 2, (True, True)),
        # Llama 3.1 405B bf16 exceeds even 8 x H100.
        ("llama-3.1-405b", ServingConfig(), "H100-80GB", 8, (False, False)),
        ("llama-3.1-405b", ServingConfig(quantization="fp8"), "H100-80GB", 8, (True, True)),
    ],
)
def test_fit_of_real_models(
    model: str, config: ServingConfig, gpu: str, tp: int, fits: tuple[bool, bool]
) -> None:
    """`fits` is (fits the target KV budget, fits vLLM's minimum of one full sequence)."""
    mem = estimate_memory(CATALOG[model], config, require_gpu_type(gpu), tp)
    assert (mem.fits_target, mem.fits_minimum) == fits


def test_l4_capacity_figures() -> None:
    mem = estimate_memory(L8, ServingConfig(), require_gpu_type("L4-24GB"), 1)
    assert round(mem.weights_bytes / GIB, 2) == 14.96
    assert round(mem.budget_bytes / GIB, 2) == 20.24
    assert round(mem.capacity_sequences, 2) == 3.79


def test_unknown_quantization_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown quantization"):
        weight_bytes(L8, "nf4")
