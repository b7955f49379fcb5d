"""TP selection and GPU type choice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.models import CATALOG
from kvpilot.planning.tp import (
    ModelFits,
    NoGPUTypeFits,
    UnknownModelShape,
    fit_model,
    valid_tensor_parallel,
)

DEFAULT_POOL = {"H100-80GB": 8, "A100-80GB": 8, "L4-24GB": 1}
L8 = "hf://meta-llama/Llama-3.1-8B-Instruct"
L70 = "hf://meta-llama/Llama-3.1-70B-Instruct"
L70_AWQ = "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"


@pytest.mark.parametrize(
    ("model", "valid"),
    [
        ("llama-3.1-8b", [1, 2, 4, 8]),  # 32 heads, 8 KV heads
        ("llama-3.2-3b", [1, 2, 4, 8]),  # 24 heads, 8 KV heads
        ("qwen2.5-7b", [1, 2, 4]),  # 28 heads: 8 does not divide
        ("qwen2.5-0.5b", [1, 2]),  # 14 heads
        ("phi-3-medium", [1, 2]),  # 40 heads, 10 KV heads: 4 and 8 neither divide nor multiply 10
        ("gemma-2-2b", [1, 2, 4, 8]),  # 4 KV heads, TP8 replicates them
        ("llama-3.1-70b", [1, 2, 4, 8]),
    ],
)
def test_valid_tensor_parallel(model: str, valid: list[int]) -> None:
    shape = CATALOG[model]
    assert [tp for tp in (1, 2, 4, 8) if valid_tensor_parallel(shape, tp) is None] == valid


def test_invalid_tp_messages() -> None:
    assert valid_tensor_parallel(CATALOG["qwen2.5-7b"], 8) == (
        "TP8 does not divide the 28 attention heads"
    )
    assert valid_tensor_parallel(CATALOG["phi-3-medium"], 4) == (
        "TP4 neither divides nor is a multiple of the 10 KV heads"
    )


# (spec.placement.gpuTypes, GPU type -> GPUs of its largest node)
Where = tuple[Sequence[str], Mapping[str, int]]


@pytest.mark.parametrize(
    ("source", "config", "tensor", "where", "expected"),
    [
        # 70B bf16: TP1 never fits; the default KV budget needs TP4 ...
        (L70, ServingConfig(), "auto", (["H100-80GB"], DEFAULT_POOL), [("H100-80GB", 4, False)]),
        # ... and one sequence of 8192 fits at TP2.
        (
            L70,
            ServingConfig(target_concurrency=1),
            "auto",
            (["H100-80GB"], DEFAULT_POOL),
            [("H100-80GB", 2, False)],
        ),
        # AWQ fits one GPU, on either 80 GB type, in preference order.
        (
            L70_AWQ,
            ServingConfig(quantization="awq"),
            "auto",
            (["A100-80GB", "H100-80GB"], DEFAULT_POOL),
            [("A100-80GB", 1, False), ("H100-80GB", 1, False)],
        ),
        # 8B on one-GPU L4 nodes: only with a reduced KV budget, ranked after full options.
        (L8, ServingConfig(), "auto", (["L4-24GB"], DEFAULT_POOL), [("L4-24GB", 1, True)]),
        (
            L8,
            ServingConfig(),
            "auto",
            (["L4-24GB", "H100-80GB"], DEFAULT_POOL),
            [("H100-80GB", 1, False), ("L4-24GB", 1, True)],
        ),
        # An explicit target is a requirement: no reduced fallback.
        (
            L8,
            ServingConfig(target_concurrency=3),
            "auto",
            (["L4-24GB"], DEFAULT_POOL),
            [("L4-24GB", 1, False)],
        ),
        # On a node with several L4s, auto picks TP2 for the full budget.
        (L8, ServingConfig(), "auto", (["L4-24GB"], {"L4-24GB": 4}), [("L4-24GB", 2, False)]),
        # Explicit TP is taken as is, even when a smaller one would do.
        (L8, ServingConfig(), 4, (["H100-80GB"], DEFAULT_POOL), [("H100-80GB", 4, False)]),
        (L8, ServingConfig(), "2", (["H100-80GB"], DEFAULT_POOL), [("H100-80GB", 2, False)]),
        # Explicit TP2 for 70B without a target: reduced KV, still starts.
        (L70, ServingConfig(), 2, (["H100-80GB"], DEFAULT_POOL), [("H100-80GB", 2, True)]),
        # No preference: cheapest replica first among the pool's types.
        (
            L70_AWQ,
            ServingConfig(quantization="awq"),
            "auto",
            ([], DEFAULT_POOL),
            [("A100-80GB", 1, False), ("H100-80GB", 1, False)],
        ),
        # A KV cache 5 % short of the target on the cheapest type is within tolerance.
        (
            L8,
            ServingConfig(),
            "auto",
            ([], DEFAULT_POOL),
            [("L4-24GB", 1, True), ("A100-80GB", 1, False), ("H100-80GB", 1, False)],
        ),
        # 33 % short is not: full options first.
        (
            L8,
            ServingConfig(gpu_memory_utilization=0.85),
            "auto",
            ([], DEFAULT_POOL),
            [("A100-80GB", 1, False), ("H100-80GB", 1, False), ("L4-24GB", 1, True)],
        ),
        # Only GPU types present in the pool are considered.
        (
            L70_AWQ,
            ServingConfig(quantization="awq"),
            "auto",
            ([], {"H100-80GB": 8, "A100-80GB": 8}),
            [("A100-80GB", 1, False), ("H100-80GB", 1, False)],
        ),
        # Unknown type names are skipped (and reported), known ones still considered.
        (
            L8,
            ServingConfig(),
            "auto",
            (["T4-16GB", "H100-80GB"], DEFAULT_POOL),
            [("H100-80GB", 1, False)],
        ),
        # Family alias.
        (L8, ServingConfig(), "auto", (["H100"], DEFAULT_POOL), [("H100-80GB", 1, False)]),
    ],
)
def test_fit_options(
    source: str,
    config: ServingConfig,
    tensor: int | str,
    where: Where,
    expected: list[tuple[str, int, bool]],
) -> None:
    gpu_types, pool = where
    result = fit_model(source, config, tensor=tensor, gpu_types=gpu_types, max_gpus_per_node=pool)
    assert isinstance(result, ModelFits), result
    assert [(o.gpu_type, o.tensor_parallel, o.reduced_kv) for o in result.options] == expected


def test_cost_table_breaks_ties() -> None:
    result = fit_model(
        L70_AWQ,
        ServingConfig(quantization="awq"),
        max_gpus_per_node={"H100-80GB": 8, "A100-80GB": 8},
        costs={"H100-80GB": 0.5},
    )
    assert isinstance(result, ModelFits)
    assert [o.gpu_type for o in result.options] == ["H100-80GB", "A100-80GB"]


@pytest.mark.parametrize(
    ("source", "config", "tensor", "where", "codes"),
    [
        # 70B on one-GPU L4 nodes: weights alone exceed the budget.
        (
            L70,
            ServingConfig(),
            "auto",
            (["L4-24GB"], DEFAULT_POOL),
            [("L4-24GB", "WeightsExceedMemory")],
        ),
        # Explicit TP1 for 70B bf16.
        (
            L70,
            ServingConfig(),
            1,
            (["H100-80GB", "A100-80GB"], DEFAULT_POOL),
            [("H100-80GB", "WeightsExceedMemory"), ("A100-80GB", "WeightsExceedMemory")],
        ),
        # Explicit target that the chosen TP cannot hold.
        (
            L70,
            ServingConfig(target_concurrency=8),
            2,
            (["H100-80GB"], DEFAULT_POOL),
            [("H100-80GB", "KVCacheExceedsMemory")],
        ),
        # Explicit TP that the model's heads forbid.
        (
            "hf://Qwen/Qwen2.5-7B-Instruct",
            ServingConfig(),
            8,
            (["H100-80GB"], DEFAULT_POOL),
            [("H100-80GB", "NoValidTensorParallel")],
        ),
        # Qwen2.5-7B cannot use TP8 (28 heads), and TP4 cannot hold 400 sequences.
        (
            "hf://Qwen/Qwen2.5-7B-Instruct",
            ServingConfig(target_concurrency=400),
            "auto",
            (["L4-24GB"], {"L4-24GB": 8}),
            [("L4-24GB", "KVCacheExceedsMemory")],
        ),
        # Only unknown type names.
        (L8, ServingConfig(), "auto", (["T4-16GB"], DEFAULT_POOL), [("T4-16GB", "UnknownGPUType")]),
        # Explicit target too large for 8B on a single L4.
        (
            L8,
            ServingConfig(target_concurrency=4),
            "auto",
            (["L4-24GB"], DEFAULT_POOL),
            [("L4-24GB", "KVCacheExceedsMemory")],
        ),
    ],
)
def test_no_gpu_type_fits(
    source: str,
    config: ServingConfig,
    tensor: int | str,
    where: Where,
    codes: list[tuple[str, str]],
) -> None:
    gpu_types, pool = where
    result = fit_model(source, config, tensor=tensor, gpu_types=gpu_types, max_gpus_per_node=pool)
    assert isinstance(result, NoGPUTypeFits), result
    assert [(r.gpu_type, r.code) for r in result.rejections] == codes


def test_no_fit_message_explains_each_type() -> None:
    result = fit_model(L70, ServingConfig(), gpu_types=["L4-24GB"], max_gpus_per_node=DEFAULT_POOL)
    assert isinstance(result, NoGPUTypeFits)
    assert result.message == (
        "no GPU type fits the model: L4-24GB: at TP1 needs 143.2 GiB per GPU (weights 131.4 GiB, "
        "KV cache 10.0 GiB for 4 x 8192 tokens, activations and overhead 1.8 GiB) but the budget "
        "is 20.2 GiB (0.9 x 22.5 GiB) (TP2/4/8 exceed the 1 GPU of one L4-24GB node); even "
        "the largest TP on one L4-24GB node (1) is too small: the model needs more than one "
        "node, and multi-node serving is not supported yet"
    )


def test_unknown_model_shape() -> None:
    result = fit_model("hf://example/private-model", ServingConfig(), gpu_types=["H100-80GB"])
    assert result == UnknownModelShape(
        "model 'hf://example/private-model' is not in the built-in catalog; set spec.model.shape "
        "(missing: parametersBillions, layers, attentionHeads, kvHeads, headDim or hiddenSize)"
    )


def test_spec_shape_for_unknown_model() -> None:
    shape = {
        "parametersBillions": 9.0,
        "layers": 32,
        "hiddenSize": 4096,
        "attentionHeads": 32,
        "kvHeads": 8,
    }
    result = fit_model(
        "pvc://models/custom",
        ServingConfig(),
        shape=shape,
        gpu_types=["L4-24GB"],
        max_gpus_per_node={"L4-24GB": 2},
    )
    assert isinstance(result, ModelFits)
    assert [(o.gpu_type, o.tensor_parallel) for o in result.options] == [("L4-24GB", 2)]
