"""Model shapes: what the memory model needs to know about a transformer, and a catalog.

Figures come from the models' published `config.json` files and model cards. Mixture-of-
experts models list all parameters (every expert is resident in GPU memory under vLLM)
and the active parameters separately. A shape in the InferenceService spec overrides the
catalog field by field, so a fine-tune with a changed vocabulary needs only that field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide weight and KV-cache memory."""

    parameters_billions: float
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    active_parameters_billions: float | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    tied_embeddings: bool = False
    context_length: int | None = None

    @property
    def parameters(self) -> int:
        return round(self.parameters_billions * 1e9)

    @property
    def embedding_parameters(self) -> int:
        """Parameters of the input embedding and LM head, kept at 16 bits by quantizers."""
        if self.vocab_size is None:
            return 0
        copies = 1 if self.tied_embeddings else 2
        return min(copies * self.vocab_size * self.hidden_size, self.parameters)


class UnknownModelShapeError(ValueError):
    """No catalog entry matches and the spec gives no (complete) shape."""


# Spec field (camelCase, as in `spec.model.shape`) -> ModelShape field.
SHAPE_FIELDS: dict[str, str] = {
    "parametersBillions": "parameters_billions",
    "activeParametersBillions": "active_parameters_billions",
    "layers": "layers",
    "hiddenSize": "hidden_size",
    "attentionHeads": "attention_heads",
    "kvHeads": "kv_heads",
    "headDim": "head_dim",
    "intermediateSize": "intermediate_size",
    "vocabSize": "vocab_size",
    "tiedEmbeddings": "tied_embeddings",
    "contextLength": "context_length",
}
REQUIRED_SHAPE_FIELDS = ("parametersBillions", "layers", "attentionHeads", "kvHeads")


def _s(  # noqa: PLR0917 - a positional row reads like the config.json it copies
    params: float,
    layers: int,
    hidden: int,
    heads: int,
    kv: int,
    head_dim: int,
    inter: int,
    vocab: int,
    *,
    tied: bool = False,
    active: float | None = None,
) -> ModelShape:
    return ModelShape(
        parameters_billions=params,
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        tied_embeddings=tied,
        active_parameters_billions=active,
    )


_LLAMA3_8B = _s(8.03, 32, 4096, 32, 8, 128, 14336, 128256)
_LLAMA3_70B = _s(70.55, 80, 8192, 64, 8, 128, 28672, 128256)
_QWEN25_7B = _s(7.62, 28, 3584, 28, 4, 128, 18944, 152064)
_QWEN25_14B = _s(14.77, 48, 5120, 40, 8, 128, 13824, 152064)
_QWEN25_32B = _s(32.76, 64, 5120, 40, 8, 128, 27648, 152064)
_QWEN25_72B = _s(72.71, 80, 8192, 64, 8, 128, 29568, 152064)
_PHI3_MINI = _s(3.82, 32, 3072, 32, 32, 96, 8192, 32064)

# Keys are normalised base names (see `normalize_model_name`).
CATALOG: dict[str, ModelShape] = {
    # Llama 3.x
    "llama-3.2-1b": _s(1.24, 16, 2048, 32, 8, 64, 8192, 128256, tied=True),
    "llama-3.2-3b": _s(3.21, 28, 3072, 24, 8, 128, 8192, 128256, tied=True),
    "llama-3-8b": _LLAMA3_8B,
    "llama-3.1-8b": _LLAMA3_8B,
    "llama-3-70b": _LLAMA3_70B,
    "llama-3.1-70b": _LLAMA3_70B,
    "llama-3.3-70b": _LLAMA3_70B,
    "llama-3.1-405b": _s(405.85, 126, 16384, 128, 8, 128, 53248, 128256),
    # Llama 2
    "llama-2-7b": _s(6.74, 32, 4096, 32, 32, 128, 11008, 32000),
    "llama-2-13b": _s(13.02, 40, 5120, 40, 40, 128, 13824, 32000),
    "llama-2-70b": _s(68.98, 80, 8192, 64, 8, 128, 28672, 32000),
    # Qwen2.5 (Coder and Math variants share the shapes)
    "qwen2.5-0.5b": _s(0.49, 24, 896, 14, 2, 64, 4864, 151936, tied=True),
    "qwen2.5-1.5b": _s(1.54, 28, 1536, 12, 2, 128, 8960, 151936, tied=True),
    "qwen2.5-3b": _s(3.09, 36, 2048, 16, 2, 128, 11008, 151936, tied=True),
    "qwen2.5-7b": _QWEN25_7B,
    "qwen2.5-14b": _QWEN25_14B,
    "qwen2.5-32b": _QWEN25_32B,
    "qwen2.5-72b": _QWEN25_72B,
    # Qwen3
    "qwen3-4b": _s(4.02, 36, 2560, 32, 8, 128, 9728, 151936, tied=True),
    "qwen3-8b": _s(8.19, 36, 4096, 32, 8, 128, 12288, 151936),
    "qwen3-14b": _s(14.77, 40, 5120, 40, 8, 128, 17408, 151936),
    "qwen3-32b": _s(32.76, 64, 5120, 64, 8, 128, 25600, 151936),
    "qwen3-30b-a3b": _s(30.53, 48, 2048, 32, 4, 128, 6144, 151936, active=3.34),
    # Mistral
    "mistral-7b": _s(7.24, 32, 4096, 32, 8, 128, 14336, 32768),
    "mistral-nemo": _s(12.25, 40, 5120, 32, 8, 128, 14336, 131072),
    "mistral-small-24b": _s(23.57, 40, 5120, 32, 8, 128, 32768, 131072),
    "mixtral-8x7b": _s(46.70, 32, 4096, 32, 8, 128, 14336, 32000, active=12.88),
    "mixtral-8x22b": _s(140.62, 56, 6144, 48, 8, 128, 16384, 32768, active=39.15),
    # Gemma 2
    "gemma-2-2b": _s(2.61, 26, 2304, 8, 4, 256, 9216, 256000, tied=True),
    "gemma-2-9b": _s(9.24, 42, 3584, 16, 8, 256, 14336, 256000, tied=True),
    "gemma-2-27b": _s(27.23, 46, 4608, 32, 16, 128, 36864, 256000, tied=True),
    # Phi
    "phi-3-mini": _PHI3_MINI,
    "phi-3-mini-128k": _PHI3_MINI,
    "phi-3.5-mini": _PHI3_MINI,
    "phi-3-medium": _s(13.96, 40, 5120, 40, 10, 128, 17920, 32064),
    "phi-3-medium-128k": _s(13.96, 40, 5120, 40, 10, 128, 17920, 32064),
    "phi-4": _s(14.66, 40, 5120, 40, 10, 128, 17920, 100352),
    # DeepSeek-R1 distills reuse their base models' shapes.
    "deepseek-r1-distill-llama-8b": _LLAMA3_8B,
    "deepseek-r1-distill-llama-70b": _LLAMA3_70B,
    "deepseek-r1-distill-qwen-7b": _QWEN25_7B,
    "deepseek-r1-distill-qwen-14b": _QWEN25_14B,
    "deepseek-r1-distill-qwen-32b": _QWEN25_32B,
}

# Native context length (max_position_embeddings, or the model card's figure where rope
# scaling is on by default): vLLM refuses a --max-model-len above it.
_CONTEXT: dict[str, int] = {
    "llama-3.2-1b": 131072,
    "llama-3.2-3b": 131072,
    "llama-3-8b": 8192,
    "llama-3.1-8b": 131072,
    "llama-3-70b": 8192,
    "llama-3.1-70b": 131072,
    "llama-3.3-70b": 131072,
    "llama-3.1-405b": 131072,
    "llama-2-7b": 4096,
    "llama-2-13b": 4096,
    "llama-2-70b": 4096,
    "qwen2.5-0.5b": 32768,
    "qwen2.5-1.5b": 32768,
    "qwen2.5-3b": 32768,
    "qwen2.5-7b": 32768,
    "qwen2.5-14b": 32768,
    "qwen2.5-32b": 32768,
    "qwen2.5-72b": 32768,
    "qwen3-4b": 40960,
    "qwen3-8b": 40960,
    "qwen3-14b": 40960,
    "qwen3-32b": 40960,
    "qwen3-30b-a3b": 40960,
    "mistral-7b": 32768,
    "mistral-nemo": 131072,
    "mistral-small-24b": 32768,
    "mixtral-8x7b": 32768,
    "mixtral-8x22b": 65536,
    "gemma-2-2b": 8192,
    "gemma-2-9b": 8192,
    "gemma-2-27b": 8192,
    "phi-3-mini": 4096,
    "phi-3-mini-128k": 131072,
    "phi-3.5-mini": 131072,
    "phi-3-medium": 4096,
    "phi-3-medium-128k": 131072,
    "phi-4": 16384,
    "deepseek-r1-distill-llama-8b": 131072,
    "deepseek-r1-distill-llama-70b": 131072,
    "deepseek-r1-distill-qwen-7b": 131072,
    "deepseek-r1-distill-qwen-14b": 131072,
    "deepseek-r1-distill-qwen-32b": 131072,
}
CATALOG = {key: replace(shape, context_length=_CONTEXT[key]) for key, shape in CATALOG.items()}

# Quantized checkpoints published for catalog models (repository, weight format); a
# source whose name declares a format (`-AWQ`, `-GPTQ`, `-FP8`, `-W8A8`) needs no entry.
QUANTIZED_REPOSITORIES: dict[str, tuple[tuple[str, str], ...]] = {
    "llama-3.1-8b": (
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "awq"),
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4", "gptq"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "fp8"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "int8"),
    ),
    "llama-3.1-70b": (
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "awq"),
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-GPTQ-INT4", "gptq"),
        ("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "fp8"),
    ),
    "llama-3.1-405b": (
        ("hugging-quants/Meta-Llama-3.1-405B-Instruct-AWQ-INT4", "awq"),
        ("meta-llama/Llama-3.1-405B-Instruct-FP8", "fp8"),
    ),
    "qwen2.5-7b": (
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "awq"),
        ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "gptq"),
    ),
    "qwen2.5-14b": (
        ("Qwen/Qwen2.5-14B-Instruct-AWQ", "awq"),
        ("Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4", "gptq"),
    ),
    "qwen2.5-32b": (
        ("Qwen/Qwen2.5-32B-Instruct-AWQ", "awq"),
        ("Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4", "gptq"),
    ),
    "qwen2.5-72b": (
        ("Qwen/Qwen2.5-72B-Instruct-AWQ", "awq"),
        ("Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", "gptq"),
    ),
    "qwen3-8b": (("Qwen/Qwen3-8B-AWQ", "awq"), ("Qwen/Qwen3-8B-FP8", "fp8")),
    "qwen3-32b": (("Qwen/Qwen3-32B-AWQ", "awq"), ("Qwen/Qwen3-32B-FP8", "fp8")),
    "mistral-7b": (("TheBloke/Mistral-7B-Instruct-v0.2-AWQ", "awq"),),
    "mixtral-8x7b": (("TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ", "awq"),),
}
# Formats vLLM can only load from a checkpoint made for them; fp8 it can also apply to
# 16-bit weights at load time.
CHECKPOINT_FORMATS = ("awq", "gptq", "int8")
_DECLARED = (("awq", "awq"), ("gptq", "gptq"), ("fp8", "fp8"), ("w8a8", "int8"), ("int8", "int8"))


def repository(source: str) -> str:
    """`org/name` of a source (its path without the scheme), lower case."""
    return re.sub(r"^[a-z0-9+.-]+://", "", source.strip(), flags=re.IGNORECASE).rstrip("/").lower()


def declared_quantization(source: str) -> str | None:
    """The weight format a source names: a known quantized repository, or a name token."""
    repo = repository(source)
    for variants in QUANTIZED_REPOSITORIES.values():
        for name, quant in variants:
            if name.lower() == repo:
                return quant
    tokens = set(re.split(r"[-_.]+", repo.rsplit("/", 1)[-1]))
    for token, quant in _DECLARED:
        if token in tokens:
            return quant
    return None


def quantization_problem(source: str, quantization: str) -> str | None:
    """Why vLLM would not load `source` with this quantization, or None.

    A checkpoint that declares a format must be served in it; awq, gptq and int8 need a
    checkpoint in that format, which an hf:// source must declare (pvc:// and s3://
    paths are taken at their word).
    """
    declared = declared_quantization(source)
    q = quantization.lower()
    if declared is not None and declared != q:
        return (
            f"{source} holds {declared.upper()} weights, but quantization is {q}: "
            f"set quantization: {declared}"
        )
    if declared is None and q in CHECKPOINT_FORMATS and source.startswith("hf://"):
        known = [
            repo
            for repo, quant in QUANTIZED_REPOSITORIES.get(_catalog_key(source), ())
            if quant == q
        ]
        hint = f"; known {q.upper()} repositories: {', '.join(known)}" if known else ""
        return (
            f"quantization {q} needs {q.upper()} weights, but {source} is not a known "
            f"{q.upper()} repository and its name declares no {q.upper()} variant{hint}"
        )
    return None


def _catalog_key(source: str) -> str:
    key = normalize_model_name(source)
    key = _ALIASES.get(key, key)
    if "-128k" in repository(source) and f"{key}-128k" in CATALOG:
        return f"{key}-128k"  # same shape, longer context
    return key


# Alternative base names seen on the hub -> catalog key.
_ALIASES: dict[str, str] = {
    "meta-llama-3-8b": "llama-3-8b",
    "meta-llama-3-70b": "llama-3-70b",
    "meta-llama-3.1-8b": "llama-3.1-8b",
    "meta-llama-3.1-70b": "llama-3.1-70b",
    "meta-llama-3.1-405b": "llama-3.1-405b",
    "mistral-nemo-instruct": "mistral-nemo",
    "mistral-nemo-base": "mistral-nemo",
    "mistral-small-24b-instruct": "mistral-small-24b",
    "mistral-small-24b-base": "mistral-small-24b",
    "phi-3-mini-4k": "phi-3-mini",
    "phi-3-medium-4k": "phi-3-medium",
    "qwen2.5-coder-0.5b": "qwen2.5-0.5b",
    "qwen2.5-coder-1.5b": "qwen2.5-1.5b",
    "qwen2.5-coder-3b": "qwen2.5-3b",
    "qwen2.5-coder-7b": "qwen2.5-7b",
    "qwen2.5-coder-14b": "qwen2.5-14b",
    "qwen2.5-coder-32b": "qwen2.5-32b",
    "qwen2.5-math-7b": "qwen2.5-7b",
    "qwen2.5-math-72b": "qwen2.5-72b",
}

# Suffixes that name a variant (chat tuning, quantized export, release tag), not a shape.
_VARIANT_SUFFIX = re.compile(
    r"-(instruct|chat|it|hf|base|awq|gptq|int4|int8|fp8|fp8-dynamic|w4a16|w8a8|w8a16|"
    r"bnb-4bit|4bit|8bit|dynamic|marlin|quantized|v\d+(\.\d+)*|\d{4}|\d{2}-\d{2}|"
    r"4k|128k|2407|2409|2411|2501|2503|turbo)$"
)


def normalize_model_name(source: str) -> str:
    """Reduce a model source to a catalog key: last path segment, lower case, no variant suffixes.

    `hf://meta-llama/Llama-3.1-70B-Instruct` -> `llama-3.1-70b`;
    `hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4` -> `meta-llama-3.1-70b`;
    `pvc://models/Qwen2.5-7B-Instruct` -> `qwen2.5-7b`.
    """
    path = re.sub(r"^[a-z0-9+.-]+://", "", source.strip(), flags=re.IGNORECASE)
    name = path.rstrip("/").rsplit("/", 1)[-1].lower().replace("_", "-")
    while True:
        stripped = _VARIANT_SUFFIX.sub("", name)
        if stripped == name or not stripped:
            return name
        name = stripped


def catalog_shape(source: str) -> ModelShape | None:
    """The catalog shape for a model source, or None when the model is not in the catalog."""
    return CATALOG.get(_catalog_key(source))


def resolve_shape(source: str, spec_shape: Mapping[str, Any] | None = None) -> ModelShape:
    """Catalog shape overridden field by field by the spec's shape.

    Without a catalog entry the spec must give at least parametersBillions, layers,
    attentionHeads, kvHeads and headDim or hiddenSize (each derives the other).
    """
    given = {k: v for k, v in (spec_shape or {}).items() if k in SHAPE_FIELDS and v is not None}
    base = catalog_shape(source)
    if base is not None:
        shape = replace(base, **{SHAPE_FIELDS[k]: v for k, v in given.items()})
    else:
        missing = [k for k in REQUIRED_SHAPE_FIELDS if k not in given]
        if "headDim" not in given and "hiddenSize" not in given:
            missing.append("headDim or hiddenSize")
        if missing:
            raise UnknownModelShapeError(
                f"model {source!r} is not in the built-in catalog; set spec.model.shape "
                f"(missing: {', '.join(missing)})"
            )
        heads = int(given["attentionHeads"])
        head_dim = int(given.get("headDim") or int(given["hiddenSize"]) // heads)
        shape = ModelShape(
            parameters_billions=float(given["parametersBillions"]),
            layers=int(given["layers"]),
            hidden_size=int(given.get("hiddenSize") or head_dim * heads),
            attention_heads=heads,
            kv_heads=int(given["kvHeads"]),
            head_dim=head_dim,
            active_parameters_billions=_opt_float(given.get("activeParametersBillions")),
            intermediate_size=_opt_int(given.get("intermediateSize")),
            vocab_size=_opt_int(given.get("vocabSize")),
            tied_embeddings=bool(given.get("tiedEmbeddings", False)),
            context_length=_opt_int(given.get("contextLength")),
        )
    _validate(source, shape)
    return shape


def _validate(source: str, shape: ModelShape) -> None:
    problems = []
    if shape.parameters_billions <= 0:
        problems.append("parametersBillions must be > 0")
    for name in ("layers", "hidden_size", "attention_heads", "kv_heads", "head_dim"):
        if getattr(shape, name) <= 0:
            problems.append(f"{name} must be > 0")
    if shape.kv_heads > 0 and shape.attention_heads % shape.kv_heads != 0:
        problems.append("attentionHeads must be a multiple of kvHeads")
    if problems:
        detail = "; ".join(problems)
        raise UnknownModelShapeError(f"model {source!r} has an invalid shape: {detail}")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
