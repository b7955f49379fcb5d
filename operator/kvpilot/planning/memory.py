"""Per-GPU memory model of one vLLM replica: weights, KV cache, activations, CUDA graphs.

vLLM takes `gpu_memory_utilization x total GPU memory` as its budget, loads the weights,
profiles a forward pass at `max_num_batched_tokens` (the activation peak), and gives what
is left to the KV cache; it refuses to start when that cannot hold one sequence of
`max_model_len` tokens. The planner mirrors that arithmetic so it can tell, before any pod
exists, whether a model fits a GPU type at a tensor-parallel size, and with how much KV.

The activation and overhead terms are estimates on the safe side: a plan that says "fits"
should start; a tight plan that vLLM would just accept may be refused.

Default KV budget: when `placement.targetConcurrency` is not set, a replica should hold
`DEFAULT_KV_TOKENS` (32768) tokens, i.e. `ceil(32768 / maxModelLen)` full-length sequences
(4 at 8192), capped by `runtime.maxNumSeqs`. 32k tokens is room for a continuous batch of
16-32 typical chat requests; below that a replica spends its time preempting requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvpilot.api.spec import DEFAULT_MAX_MODEL_LEN, RuntimeSpec
from kvpilot.planning.gpus import GIB, GPUType
from kvpilot.planning.models import ModelShape

DEFAULT_KV_TOKENS = 32768
# Defaults of the spec fields come from the API models, declared there once.
DEFAULT_GPU_MEMORY_UTILIZATION: float = RuntimeSpec.model_fields["gpu_memory_utilization"].default
KV_BLOCK_TOKENS = 16
QUANT_GROUP_SIZE = 128

# Bytes per weight of the quantized linear layers. AWQ/GPTQ store 4-bit weights plus,
# per group of 128 weights, a 16-bit scale and a 4-bit zero point.
_GROUP_OVERHEAD = (2.0 + 0.5) / QUANT_GROUP_SIZE
QUANT_WEIGHT_BYTES: dict[str, float] = {
    "fp8": 1.0,
    "int8": 1.0,
    "awq": 0.5 + _GROUP_OVERHEAD,
    "gptq": 0.5 + _GROUP_OVERHEAD,
}
QUANTIZATIONS = ("none", *QUANT_WEIGHT_BYTES)
DTYPE_BYTES: dict[str, int] = {
    "auto": 2,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
}

# Runtime memory outside weights, KV and activations: CUDA context, cuBLAS workspaces,
# allocator slack; tensor-parallel replicas also hold NCCL and custom all-reduce buffers.
RUNTIME_OVERHEAD_BYTES = GIB // 2
TP_COMMUNICATION_BYTES = GIB // 2
# Memory pools of the captured CUDA graphs (vLLM captures batch sizes up to max_num_seqs).
CUDA_GRAPH_BYTES = GIB // 2
# Sampler warm-up: fp32 logits and one working copy for max_num_seqs rows of the vocabulary.
SAMPLER_BYTES_PER_LOGIT = 8
DEFAULT_VOCAB = 32000


@dataclass(frozen=True)
class ServingConfig:
    """The spec fields that change memory needs (spec.model, spec.runtime, spec.placement)."""

    quantization: str = "none"
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    target_concurrency: int | None = None

    @property
    def explicit_target(self) -> bool:
        return self.target_concurrency is not None

    @property
    def effective_target_concurrency(self) -> int:
        if self.target_concurrency is not None:
            return self.target_concurrency
        return default_target_concurrency(self.max_model_len, self.max_num_seqs)


def default_target_concurrency(max_model_len: int, max_num_seqs: int | None = None) -> int:
    """Sequences of max_model_len the KV cache should hold when the spec does not say."""
    wanted = max(1, math.ceil(DEFAULT_KV_TOKENS / max_model_len))
    return min(wanted, max_num_seqs) if max_num_seqs else wanted


@dataclass(frozen=True)
class MemoryBreakdown:
    """Per-GPU memory of one replica at one GPU type and tensor-parallel size, in bytes.

    `kv_cache_bytes` is what the target concurrency needs; `kv_capacity_tokens` is what
    the budget actually leaves room for (vLLM allocates all of it).
    """

    gpu_type: str
    tensor_parallel: int
    gpu_memory_bytes: int
    gpu_memory_utilization: float
    budget_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    cuda_graph_bytes: int
    runtime_overhead_bytes: int
    kv_bytes_per_token: int
    max_model_len: int
    target_sequences: int
    kv_capacity_tokens: int

    @property
    def kv_allocated_bytes(self) -> int:
        """The KV cache vLLM allocates: all the budget leaves (what `kvCacheGiB` reports)."""
        return self.kv_capacity_tokens * self.kv_bytes_per_token

    @property
    def overhead_bytes(self) -> int:
        """Activations, CUDA graphs and runtime overhead."""
        return self.activation_bytes + self.cuda_graph_bytes + self.runtime_overhead_bytes

    @property
    def required_bytes(self) -> int:
        return self.non_kv_bytes + self.kv_cache_bytes

    @property
    def non_kv_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.activation_bytes
            + self.cuda_graph_bytes
            + self.runtime_overhead_bytes
        )

    @property
    def free_bytes(self) -> int:
        """Budget left after the target KV budget; negative when it does not fit."""
        return self.budget_bytes - self.required_bytes

    @property
    def fits_target(self) -> bool:
        return self.free_bytes >= 0

    @property
    def capacity_sequences(self) -> float:
        """Full-length sequences the KV cache can hold (vLLM's "maximum concurrency")."""
        return self.kv_capacity_tokens / _round_to_block(self.max_model_len)

    @property
    def fits_minimum(self) -> bool:
        """vLLM starts only when one sequence of max_model_len fits its KV cache."""
        return self.kv_capacity_tokens >= _round_to_block(self.max_model_len)


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError as err:
        raise ValueError(f"unknown dtype {dtype!r}") from err


def kv_dtype_bytes(kv_cache_dtype: str, dtype: str) -> int:
    """KV cache element size: `auto` follows the model dtype, any fp8 variant is one byte."""
    if kv_cache_dtype.lower().startswith("fp8"):
        return 1
    if kv_cache_dtype.lower() == "auto":
        return dtype_bytes(dtype)
    return dtype_bytes(kv_cache_dtype)


def weight_bytes_per_param(quantization: str, dtype: str = "auto") -> float:
    """Bytes per parameter of the linear layers (embeddings stay at the model dtype)."""
    q = quantization.lower()
    if q == "none":
        return float(dtype_bytes(dtype))
    try:
        return QUANT_WEIGHT_BYTES[q]
    except KeyError as err:
        raise ValueError(f"unknown quantization {quantization!r}") from err


def weight_bytes(shape: ModelShape, quantization: str = "none", dtype: str = "auto") -> int:
    """Bytes of all weights of the model (all experts of a mixture of experts)."""
    embed = shape.embedding_parameters
    body = shape.parameters - embed
    return round(embed * dtype_bytes(dtype) + body * weight_bytes_per_param(quantization, dtype))


def kv_heads_per_rank(shape: ModelShape, tp: int) -> int:
    """vLLM splits KV heads across ranks and replicates them when there are fewer than ranks."""
    return max(1, shape.kv_heads // tp)


def kv_bytes_per_token(
    shape: ModelShape, kv_cache_dtype: str = "auto", dtype: str = "auto", tp: int = 1
) -> int:
    """KV cache bytes per token on one rank: 2 (K and V) x layers x kv heads x head dim x size."""
    return (
        2
        * shape.layers
        * kv_heads_per_rank(shape, tp)
        * shape.head_dim
        * kv_dtype_bytes(kv_cache_dtype, dtype)
    )


def weight_bytes_per_rank(
    shape: ModelShape, quantization: str = "none", dtype: str = "auto", tp: int = 1
) -> int:
    """Weights on one rank: an even split, plus K/V projections replicated when tp > kv heads."""
    even = weight_bytes(shape, quantization, dtype) / tp
    per_head = shape.layers * 2 * shape.hidden_size * shape.head_dim
    replicated = per_head * (kv_heads_per_rank(shape, tp) - shape.kv_heads / tp)
    return math.ceil(even + replicated * weight_bytes_per_param(quantization, dtype))


def scheduler_defaults(gpu: GPUType) -> tuple[int, int]:
    """vLLM's OpenAI-server defaults of (max_num_batched_tokens, max_num_seqs) on this GPU."""
    return (8192, 1024) if gpu.large_batch_defaults else (2048, 256)


def activation_bytes(shape: ModelShape, config: ServingConfig, gpu: GPUType, tp: int) -> int:
    """Peak activation memory of vLLM's profiling run on one rank (estimate).

    A chunk of max_num_batched_tokens flows through one layer at a time: a few hidden-size
    tensors plus the MLP's gate/up projections (twice as wide for routed experts), then the
    sampler warm-up over max_num_seqs rows of logits.
    """
    default_tokens, default_seqs = scheduler_defaults(gpu)
    tokens = config.max_num_batched_tokens or default_tokens
    seqs = config.max_num_seqs or default_seqs
    act = dtype_bytes(config.dtype)
    intermediate = shape.intermediate_size or math.ceil(3.5 * shape.hidden_size)
    if shape.active_parameters_billions is not None:
        intermediate *= 2
    per_token = act * (6 * shape.hidden_size + 3 * intermediate / tp)
    vocab = shape.vocab_size or DEFAULT_VOCAB
    sampler = seqs * vocab * SAMPLER_BYTES_PER_LOGIT
    return math.ceil(tokens * per_token + sampler)


def estimate_memory(
    shape: ModelShape, config: ServingConfig, gpu: GPUType, tp: int
) -> MemoryBreakdown:
    """Memory breakdown of one replica on GPU type `gpu` at tensor-parallel size `tp`."""
    budget = math.floor(gpu.memory_bytes * config.gpu_memory_utilization)
    weights = weight_bytes_per_rank(shape, config.quantization, config.dtype, tp)
    per_token = kv_bytes_per_token(shape, config.kv_cache_dtype, config.dtype, tp)
    target = config.effective_target_concurrency
    kv_needed = target * _round_to_block(config.max_model_len) * per_token
    activation = activation_bytes(shape, config, gpu, tp)
    runtime = RUNTIME_OVERHEAD_BYTES + (TP_COMMUNICATION_BYTES if tp > 1 else 0)
    left = budget - weights - activation - CUDA_GRAPH_BYTES - runtime
    capacity_tokens = max(0, left // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS)
    return MemoryBreakdown(
        gpu_type=gpu.name,
        tensor_parallel=tp,
        gpu_memory_bytes=gpu.memory_bytes,
        gpu_memory_utilization=config.gpu_memory_utilization,
        budget_bytes=budget,
        weights_bytes=weights,
        kv_cache_bytes=kv_needed,
        activation_bytes=activation,
        cuda_graph_bytes=CUDA_GRAPH_BYTES,
        runtime_overhead_bytes=runtime,
        kv_bytes_per_token=per_token,
        max_model_len=config.max_model_len,
        target_sequences=target,
        kv_capacity_tokens=capacity_tokens,
    )


def _round_to_block(tokens: int) -> int:
    return math.ceil(tokens / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
