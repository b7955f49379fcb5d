"""Model catalog lookup and spec shape overrides."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.planning.models import (
    CATALOG,
    ModelShape,
    UnknownModelShapeError,
    catalog_shape,
    normalize_model_name,
    resolve_shape,
)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("hf://meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("hf://meta-llama/Llama-3.3-70B-Instruct", "llama-3.3-70b"),
        ("hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "meta-llama-3.1-70b"),
        ("hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "meta-llama-3.1-8b"),
        ("hf://Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", "qwen2.5-72b"),
        ("hf://mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b"),
        ("hf://mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("hf://mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo"),
        ("hf://google/gemma-2-9b-it", "gemma-2-9b"),
        ("hf://microsoft/Phi-3-mini-4k-instruct", "phi-3-mini"),
        ("hf://microsoft/phi-4", "phi-4"),
        ("pvc://models/qwen2.5-7b-instruct/", "qwen2.5-7b"),
        ("s3://bucket/path/Llama-3.2-1B-Instruct", "llama-3.2-1b"),
        ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    ],
)
def test_normalize_model_name(source: str, key: str) -> None:
    assert normalize_model_name(source) == key


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf://meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("hf://META-LLAMA/LLAMA-3.1-8B-INSTRUCT", "llama-3.1-8b"),
        ("hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "llama-3.1-70b"),
        ("hf://Qwen/Qwen2.5-Coder-7B-Instruct", "qwen2.5-7b"),
        ("hf://deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "llama-3.1-70b"),
        ("hf://mistralai/Mixtral-8x22B-Instruct-v0.1", "mixtral-8x22b"),
        ("hf://Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b"),
        ("hf://example/unknown-model", None),
    ],
)
def test_catalog_shape(source: str, expected: str | None) -> None:
    assert catalog_shape(source) == (CATALOG[expected] if expected else None)


def test_catalog_shapes_are_consistent() -> None:
    for key, shape in CATALOG.items():
        assert shape.attention_heads % shape.kv_heads == 0, key
        assert shape.layers > 0 and shape.head_dim > 0, key
        if shape.active_parameters_billions is not None:
            assert shape.active_parameters_billions < shape.parameters_billions, key


def test_mixtral_counts_all_experts() -> None:
    shape = CATALOG["mixtral-8x7b"]
    assert (shape.parameters_billions, shape.active_parameters_billions) == (46.70, 12.88)


LLAMA_8B = CATALOG["llama-3.1-8b"]


@pytest.mark.parametrize(
    ("source", "spec_shape", "expected"),
    [
        ("hf://meta-llama/Llama-3.1-8B-Instruct", None, LLAMA_8B),
        (
            "hf://meta-llama/Llama-3.1-8B-Instruct",
            {"vocabSize": 130000, "kvHeads": None},
            ModelShape(
                parameters_billions=8.03,
                layers=32,
                hidden_size=4096,
                attention_heads=32,
                kv_heads=8,
                head_dim=128,
                intermediate_size=14336,
                vocab_size=130000,
                context_length=131072,
            ),
        ),
        (
            "pvc://models/tiny",
            {
                "parametersBillions": 0.1,
                "layers": 4,
                "hiddenSize": 512,
                "attentionHeads": 8,
                "kvHeads": 2,
            },
            ModelShape(
                parameters_billions=0.1,
                layers=4,
                hidden_size=512,
                attention_heads=8,
                kv_heads=2,
                head_dim=64,
            ),
        ),
        (
            "pvc://models/tiny",
            {
                "parametersBillions": 0.1,
                "layers": 4,
                "headDim": 64,
                "attentionHeads": 8,
                "kvHeads": 8,
            },
            ModelShape(
                parameters_billions=0.1,
                layers=4,
                hidden_size=512,
                attention_heads=8,
                kv_heads=8,
                head_dim=64,
            ),
        ),
    ],
)
def test_resolve_shape(
    source: str, spec_shape: dict[str, Any] | None, expected: ModelShape
) -> None:
    assert resolve_shape(source, spec_shape) == expected


@pytest.mark.parametrize(
    ("source", "spec_shape", "message"),
    [
        (
            "hf://example/unknown",
            None,
            "model 'hf://example/unknown' is not in the built-in catalog; set spec.model.shape "
            "(missing: parametersBillions, layers, attentionHeads, kvHeads, headDim or hiddenSize)",
        ),
        (
            "hf://example/unknown",
            {"parametersBillions": 1.0, "layers": 8, "attentionHeads": 8, "headDim": 64},
            "model 'hf://example/unknown' is not in the built-in catalog; set spec.model.shape "
            "(missing: kvHeads)",
        ),
        (
            "hf://example/unknown",
            {
                "parametersBillions": 1.0,
                "layers": 8,
                "attentionHeads": 8,
                "kvHeads": 3,
                "headDim": 64,
            },
            "model 'hf://example/unknown' has an invalid shape: "
            "attentionHeads must be a multiple of kvHeads",
        ),
    ],
)
def test_resolve_shape_errors(source: str, spec_shape: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(UnknownModelShapeError) as err:
        resolve_shape(source, spec_shape)
    assert str(err.value) == message
