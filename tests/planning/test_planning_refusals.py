"""What vLLM would refuse is refused by the planner, with a message that says how to fix it."""

from __future__ import annotations

import pytest

from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.models import catalog_shape, declared_quantization
from kvpilot.planning.tp import InvalidModelConfig, ModelFits, NoGPUTypeFits, fit_model

L8 = "hf://meta-llama/Llama-3.1-8B-Instruct"
POOL = {"H100-80GB": 8, "A100-80GB": 8, "L4-24GB": 1}

REFUSED: list[tuple[str, str, ServingConfig, dict[str, int] | None, str]] = [
    (
        "maxModelLen above the catalog's context length",
        L8,
        ServingConfig(max_model_len=200_000),
        None,
        "maxModelLen 200000 exceeds the model's context length of 131072 tokens",
    ),
    (
        "maxModelLen above a context length given in the spec",
        L8,
        ServingConfig(max_model_len=16384),
        {"contextLength": 8192},
        "maxModelLen 16384 exceeds the model's context length of 8192 tokens",
    ),
    (
        "Llama 3 (not 3.1) has an 8k context",
        "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        ServingConfig(max_model_len=16384),
        None,
        "context length of 8192 tokens",
    ),
    (
        "awq on a repository without AWQ weights",
        L8,
        ServingConfig(quantization="awq"),
        None,
        "quantization awq needs AWQ weights, but hf://meta-llama/Llama-3.1-8B-Instruct is not a "
        "known AWQ repository and its name declares no AWQ variant; known AWQ repositories: "
        "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    ),
    (
        "gptq on an AWQ checkpoint",
        "hf://Qwen/Qwen2.5-7B-Instruct-AWQ",
        ServingConfig(quantization="gptq"),
        None,
        "hf://Qwen/Qwen2.5-7B-Instruct-AWQ holds AWQ weights, but quantization is gptq: "
        "set quantization: awq",
    ),
    (
        "a quantized checkpoint served as 16-bit",
        "hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8",
        ServingConfig(),
        None,
        "holds FP8 weights, but quantization is none: set quantization: fp8",
    ),
    (
        "int8 needs a W8A8 checkpoint",
        L8,
        ServingConfig(quantization="int8"),
        None,
        "known INT8 repositories: neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8",
    ),
]


@pytest.mark.parametrize(
    ("source", "config", "shape", "message"),
    [r[1:] for r in REFUSED],
    ids=[r[0] for r in REFUSED],
)
def test_refused(
    source: str, config: ServingConfig, shape: dict[str, int] | None, message: str
) -> None:
    result = fit_model(source, config, shape=shape, max_gpus_per_node=POOL)
    assert isinstance(result, InvalidModelConfig), result
    assert message in result.message


ACCEPTED: list[tuple[str, str, ServingConfig]] = [
    ("fp8 applied at load time to 16-bit weights", L8, ServingConfig(quantization="fp8")),
    (
        "a known AWQ repository",
        "hf://Qwen/Qwen2.5-7B-Instruct-AWQ",
        ServingConfig(quantization="awq"),
    ),
    (
        "a declared GPTQ variant",
        "hf://someone/Llama-3.1-8B-Instruct-GPTQ",
        ServingConfig(quantization="gptq"),
    ),
    (
        "a pvc:// path is taken at its word",
        "pvc://models/llama-3.1-8b",
        ServingConfig(quantization="awq"),
    ),
    ("maxModelLen at the context length", L8, ServingConfig(max_model_len=131072)),
    (
        "the 128k Phi-3 variant",
        "hf://microsoft/Phi-3-mini-128k-instruct",
        ServingConfig(max_model_len=32768),
    ),
]


@pytest.mark.parametrize(
    ("source", "config"), [r[1:] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED]
)
def test_accepted(source: str, config: ServingConfig) -> None:
    assert isinstance(fit_model(source, config, max_gpus_per_node=POOL), ModelFits)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "awq"),
        ("hf://Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "gptq"),
        ("hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "int8"),
        ("hf://meta-llama/Llama-3.1-405B-Instruct-FP8", "fp8"),
        (L8, None),
    ],
)
def test_declared_quantization(source: str, expected: str | None) -> None:
    assert declared_quantization(source) == expected


def test_tp_refusal_lists_the_valid_sizes() -> None:
    """Qwen2.5-7B has 28 attention heads and 4 KV heads: TP8 divides neither."""
    result = fit_model(
        "hf://Qwen/Qwen2.5-7B-Instruct",
        ServingConfig(),
        tensor=8,
        gpu_types=["H100-80GB"],
        max_gpus_per_node=POOL,
    )
    assert isinstance(result, NoGPUTypeFits)
    assert result.message == (
        "no GPU type fits the model: H100-80GB: no usable TP (TP8 does not divide the 28 "
        "attention heads); valid sizes on H100-80GB: 1, 2, 4"
    )


def test_a_model_larger_than_any_node_says_it_needs_several() -> None:
    result = fit_model(
        "hf://meta-llama/Llama-3.1-405B-Instruct", ServingConfig(), max_gpus_per_node=POOL
    )
    assert isinstance(result, NoGPUTypeFits)
    for rejection in result.rejections:
        assert "needs more than one node, and multi-node serving is not supported yet" in (
            rejection.message
        ), rejection.message


def test_catalog_context_lengths() -> None:
    shape = catalog_shape("hf://Qwen/Qwen2.5-72B-Instruct")
    assert shape is not None and shape.context_length == 32768
