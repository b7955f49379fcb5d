"""Step-time model of one vLLM engine step, and the latency profiles that feed it.

A decode step of a dense transformer is bound by reading the weights (memory
bandwidth) until the batch is large enough to be bound by matrix multiplies
(FLOPs); attention adds the KV-cache reads of every decoding sequence and the
quadratic FLOPs of prefill chunks; tensor parallelism adds two all-reduces per
layer. Fixed costs come per step, per transformer layer (the latency of each
layer's kernels, which no batch amortizes) and per sequence in the step (its
logits, sampling and attention work item). The profile's coefficients are
*effective* rates (what vLLM reaches, not datasheet peaks), so a profile can be
fitted to measurements.

This module is deliberately standalone (standard library and PyYAML only) so a
calibration script can import it and fit the coefficients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
GIB = 1024**3

EFFECTIVE_KEYS = (
    "step_overhead_s",
    "weight_bandwidth_bytes_per_s",
    "kv_bandwidth_bytes_per_s",
    "matmul_flops_per_s",
    "attention_flops_per_s",
    "allreduce_latency_s",
    "allreduce_bandwidth_bytes_per_s",
)
# Fixed-cost keys a profile may leave out (zero); `overlap_exponent` may be left out too.
OPTIONAL_EFFECTIVE_KEYS = ("layer_overhead_s", "sequence_overhead_s")

WEIGHT_BYTES_PER_PARAM: Mapping[str, float] = {
    "none": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "awq": 0.5,
    "gptq": 0.5,
}


@dataclass(frozen=True)
class Effective:
    """Effective rates that vLLM reaches on one device (not datasheet peaks)."""

    step_overhead_s: float
    weight_bandwidth_bytes_per_s: float
    kv_bandwidth_bytes_per_s: float
    matmul_flops_per_s: float
    attention_flops_per_s: float
    allreduce_latency_s: float
    allreduce_bandwidth_bytes_per_s: float
    # Optional: combine the weight-read and matmul times with a smooth maximum
    # (w^q + m^q)^(1/q) instead of max(w, m); near the ridge real GEMMs neither
    # fully overlap nor fully serialize. None keeps the plain maximum.
    overlap_exponent: float | None = None
    # Optional: fixed seconds per transformer layer per step (kernel launch and
    # ramp-up latency of the layer's kernels), and per sequence in the step.
    layer_overhead_s: float = 0.0
    sequence_overhead_s: float = 0.0


@dataclass(frozen=True)
class Calibration:
    """Where a profile's numbers were measured; free-form, kept for provenance."""

    date: str = ""
    device: str = ""
    driver: str = ""
    torch: str = ""
    method: str = ""
    csv: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """A device's latency profile, as stored in ``profiles/<name>.yaml``."""

    name: str
    gpu: str
    memory_gib: float
    effective: Effective
    sources: tuple[str, ...] = ()
    calibration: Calibration | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_effective(self, **changes: float) -> Profile:
        """A copy with some effective rates replaced (used by fits and slowdowns)."""
        return dataclasses.replace(self, effective=dataclasses.replace(self.effective, **changes))


@dataclass(frozen=True)
class ModelShape:
    """What the step time depends on in a model: sizes and the bytes per element."""

    parameters: float
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    active_parameters: float | None = None
    weight_bytes_per_param: float = 2.0
    kv_bytes_per_element: float = 2.0

    @property
    def compute_parameters(self) -> float:
        """Parameters touched per token (the active ones for a mixture of experts)."""
        return self.active_parameters if self.active_parameters is not None else self.parameters

    def kv_heads_per_gpu(self, tp: int) -> float:
        """KV heads each rank holds; vLLM replicates KV heads when tp exceeds them."""
        return max(1.0, self.kv_heads / tp)

    def kv_bytes_per_token_per_gpu(self, tp: int) -> float:
        """K and V of one token across all layers, on one rank."""
        return (
            2.0
            * self.layers
            * self.kv_heads_per_gpu(tp)
            * self.head_dim
            * self.kv_bytes_per_element
        )

    def weight_bytes_per_gpu(self, tp: int) -> float:
        return self.parameters * self.weight_bytes_per_param / tp


@dataclass(frozen=True)
class PrefillChunk:
    """``tokens`` new prompt tokens computed on top of ``computed`` cached ones."""

    tokens: int
    computed: int = 0


@dataclass(frozen=True)
class Batch:
    """One engine step's work: decode context lengths and prefill chunks."""

    decode_contexts: tuple[int, ...] = ()
    prefill_chunks: tuple[PrefillChunk, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.decode_contexts) + sum(c.tokens for c in self.prefill_chunks)

    @property
    def num_sequences(self) -> int:
        return len(self.decode_contexts) + len(self.prefill_chunks)


@dataclass(frozen=True)
class StepTerms:
    """The step time broken into the model's terms (each in seconds)."""

    overhead: float
    weights_or_matmul: float
    kv_read: float
    prefill_attention: float
    allreduce: float
    layer_overhead: float = 0.0
    sequence_overhead: float = 0.0

    @property
    def total(self) -> float:
        return (
            self.overhead
            + self.weights_or_matmul
            + self.kv_read
            + self.prefill_attention
            + self.allreduce
            + self.layer_overhead
            + self.sequence_overhead
        )


def batch_features(shape: ModelShape, tp: int, batch: Batch) -> dict[str, float]:
    """The per-GPU quantities the step time is linear in (for fitting)."""
    kv_tok = shape.kv_bytes_per_token_per_gpu(tp)
    kv_tokens = sum(batch.decode_contexts) + sum(
        c.computed + c.tokens for c in batch.prefill_chunks
    )
    heads_per_gpu = shape.attention_heads / tp
    # QK^T and PV: 2 matmuls x 2 FLOPs per multiply-add, per head dim, per
    # (query, key) pair of the causal chunk.
    pairs = sum(c.tokens * c.computed + c.tokens * (c.tokens + 1) / 2 for c in batch.prefill_chunks)
    return {
        "n_tokens": float(batch.num_tokens),
        "n_sequences": float(batch.num_sequences),
        "layers": float(shape.layers),
        "weight_bytes": shape.weight_bytes_per_gpu(tp),
        "matmul_flops": 2.0 * shape.compute_parameters / tp * batch.num_tokens,
        "kv_bytes": kv_tokens * kv_tok,
        "attention_flops": 4.0 * shape.layers * heads_per_gpu * shape.head_dim * pairs,
    }


def _combine(weights: float, matmul: float, q: float | None) -> float:
    top = max(weights, matmul)
    if q is None or top <= 0.0:
        return top
    # Scaled by the larger term so that a large exponent cannot overflow.
    return float(top * ((weights / top) ** q + (matmul / top) ** q) ** (1.0 / q))


def step_terms(profile: Profile, shape: ModelShape, tp: int, batch: Batch) -> StepTerms:
    """Each term of the step time; see :func:`step_time`."""
    eff = profile.effective
    f = batch_features(shape, tp, batch)
    allreduce = 0.0
    if tp > 1:
        msg_bytes = f["n_tokens"] * shape.hidden_size * 2.0
        allreduce = (
            2.0
            * shape.layers
            * (
                eff.allreduce_latency_s
                + 2.0 * (tp - 1) / tp * msg_bytes / eff.allreduce_bandwidth_bytes_per_s
            )
        )
    return StepTerms(
        overhead=eff.step_overhead_s,
        weights_or_matmul=_combine(
            f["weight_bytes"] / eff.weight_bandwidth_bytes_per_s,
            f["matmul_flops"] / eff.matmul_flops_per_s,
            eff.overlap_exponent,
        ),
        kv_read=f["kv_bytes"] / eff.kv_bandwidth_bytes_per_s,
        prefill_attention=f["attention_flops"] / eff.attention_flops_per_s,
        allreduce=allreduce,
        layer_overhead=shape.layers * eff.layer_overhead_s,
        sequence_overhead=f["n_sequences"] * eff.sequence_overhead_s,
    )


def step_time(profile: Profile, model_shape: ModelShape, tp: int, batch: Batch) -> float:
    """Seconds one engine step takes.

    t = t0 + max(weight_bytes / weight_bw, 2 * params * n_tokens / matmul_flops)
          (or their smooth maximum with ``overlap_exponent``)
          + kv_bytes_read / kv_bw + prefill_attention_flops / attention_flops
          + (tp > 1) 2 * layers * (allreduce_latency + 2 (tp-1)/tp * n_tokens * hidden * 2 / ar_bw)
          + layers * layer_overhead + sequences * sequence_overhead
    all per GPU. An empty batch costs nothing (the engine idles).
    """
    if batch.num_tokens == 0:
        return 0.0
    return step_terms(profile, model_shape, tp, batch).total


def _positive(name: str, value: object) -> float:
    # PyYAML reads exponents without a sign ("2.6e12") as strings.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"profile key {name!r} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"profile key {name!r} must not be negative, got {value!r}")
    return float(value)


def profile_from_dict(name: str, data: Mapping[str, Any]) -> Profile:
    """Validates a profile document; unknown top-level keys are kept in ``extra``."""
    for key in ("gpu", "memory_gib", "effective"):
        if key not in data:
            raise ValueError(f"profile {name!r}: missing key {key!r}")
    eff_raw = data["effective"]
    if not isinstance(eff_raw, Mapping):
        raise ValueError(f"profile {name!r}: 'effective' must be a mapping")
    missing = [k for k in EFFECTIVE_KEYS if k not in eff_raw]
    if missing:
        raise ValueError(f"profile {name!r}: effective is missing {', '.join(missing)}")
    values = {k: _positive(k, eff_raw[k]) for k in EFFECTIVE_KEYS}
    for k in EFFECTIVE_KEYS:
        if k.endswith("_per_s") and values[k] == 0:
            raise ValueError(f"profile {name!r}: {k} must be positive")
    q_raw = eff_raw.get("overlap_exponent")
    q = None if q_raw is None else _positive("overlap_exponent", q_raw)
    if q is not None and q < 1:
        raise ValueError(f"profile {name!r}: overlap_exponent must be at least 1")
    optional = {k: _positive(k, eff_raw[k]) for k in OPTIONAL_EFFECTIVE_KEYS if k in eff_raw}
    calibration = None
    cal_raw = data.get("calibration")
    if cal_raw is not None:
        if not isinstance(cal_raw, Mapping):
            raise ValueError(f"profile {name!r}: 'calibration' must be a mapping")
        known = {f.name for f in dataclasses.fields(Calibration)} - {"extra"}
        calibration = Calibration(
            **{k: str(v) for k, v in cal_raw.items() if k in known},
            extra={k: v for k, v in cal_raw.items() if k not in known},
        )
    sources_raw = data.get("sources") or []
    if not isinstance(sources_raw, list):
        raise ValueError(f"profile {name!r}: 'sources' must be a list")
    core = {"gpu", "memory_gib", "effective", "sources", "calibration"}
    return Profile(
        name=name,
        gpu=str(data["gpu"]),
        memory_gib=_positive("memory_gib", data["memory_gib"]),
        effective=Effective(**values, overlap_exponent=q, **optional),
        sources=tuple(str(s) for s in sources_raw),
        calibration=calibration,
        extra={k: v for k, v in data.items() if k not in core},
    )


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Loads a shipped profile by name (``h100-80gb``, ``cpu``...) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{str(name_or_path).lower()}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown latency profile {name_or_path!r} (shipped: {', '.join(available_profiles())})"
        )
    with path.open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, Mapping):
        raise ValueError(f"profile {path}: not a mapping")
    return profile_from_dict(path.stem, data)


def decode_batch(contexts: Sequence[int]) -> Batch:
    """A decode-only batch (convenience for fits and tests)."""
    return Batch(decode_contexts=tuple(contexts))
