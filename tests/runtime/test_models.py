"""Model shapes for the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvpilot_runtime.latency import ModelShape
from kvpilot_runtime.models import CATALOG, TINY_LLAMA, resolve_shape, shape_from_config

TINY_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 429,
    "tie_word_embeddings": False,
}


def test_tiny_config_matches_tiny_shape() -> None:
    shape = shape_from_config(TINY_CONFIG)
    assert shape == ModelShape(45_967_360, 4, 1024, 16, 4, 64)
    assert shape.parameters == pytest.approx(TINY_LLAMA.parameters, rel=0.01)


def test_llama_8b_config_gives_catalog_size() -> None:
    config = {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    }
    shape = shape_from_config(config)
    assert shape.parameters == pytest.approx(8.03e9, rel=0.01)
    assert shape.kv_bytes_per_token_per_gpu(1) == 128 * 1024


@pytest.mark.parametrize(
    ("model", "kwargs", "expected_source", "weight_bytes", "kv_bytes"),
    [
        (
            "hf://meta-llama/Llama-3.1-8B-Instruct",
            {},
            "catalog:meta-llama/llama-3.1-8b-instruct",
            2.0,
            2.0,
        ),
        (
            "Qwen/Qwen2.5-7B-Instruct",
            {"quantization": "awq"},
            "catalog:qwen/qwen2.5-7b-instruct",
            0.5,
            2.0,
        ),
        (
            "unknown/model",
            {"kv_cache_dtype": "fp8"},
            "default:meta-llama/llama-3.1-8b-instruct",
            2.0,
            1.0,
        ),
        (
            "x",
            {"override": "mistralai/Mistral-7B-Instruct-v0.3", "quantization": "fp8"},
            "catalog:mistralai/mistral-7b-instruct-v0.3",
            1.0,
            2.0,
        ),
    ],
)
def test_resolve_shape(
    model: str, kwargs: dict[str, str], expected_source: str, weight_bytes: float, kv_bytes: float
) -> None:
    shape, source = resolve_shape(model, **kwargs)
    assert (source, shape.weight_bytes_per_param, shape.kv_bytes_per_element) == (
        expected_source,
        weight_bytes,
        kv_bytes,
    )


def test_resolve_from_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    shape, source = resolve_shape(str(tmp_path))
    assert (shape.layers, source) == (4, f"config:{tmp_path}")


def test_resolve_json_override() -> None:
    shape, source = resolve_shape(
        "m",
        override=json.dumps(
            {
                "parameters": 1e9,
                "layers": 2,
                "hidden_size": 64,
                "attention_heads": 1,
                "kv_heads": 1,
                "head_dim": 64,
            }
        ),
    )
    assert (shape.parameters, source) == (1e9, "override")


def test_catalog_mixture_of_experts_uses_active_parameters() -> None:
    moe = CATALOG["mistralai/mixtral-8x7b-instruct-v0.1"]
    assert moe.compute_parameters < moe.parameters
