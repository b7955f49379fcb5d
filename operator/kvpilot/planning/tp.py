"""Model fit: which GPU types can run a model, at which tensor-parallel size.

For `tensor: auto` the smallest valid TP wins (fewest GPUs per replica, no needless
all-reduce traffic). A TP is valid when vLLM accepts it: it divides the attention heads,
and either divides the KV heads or is a multiple of them (vLLM then replicates KV heads),
and one node of the GPU type has that many GPUs (kvpilot does not span replicas across
nodes). GPU types are tried in the service's preference order; without one, cheapest
replica first by the operator's cost table.

When the KV budget is the spec's derived default (no `targetConcurrency`), a GPU type
whose every valid TP misses it but that still holds vLLM's minimum (one sequence of
`maxModelLen`) is kept as a "reduced KV" option. Without a stated preference, options
rank by replica cost, and a reduced option whose KV cache holds at least
1 - `REDUCED_KV_TOLERANCE` of the target ranks among the full ones: a cheaper GPU type
with a KV cache 1 % short beats a dearer one; options further short rank after.

Before any of that, a spec vLLM would refuse is refused here too: `maxModelLen` above the
model's context length, and a quantization the checkpoint does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kvpilot.planning.gpus import GIB, GPU_TYPES, GPUType, gpu_type
from kvpilot.planning.memory import MemoryBreakdown, ServingConfig, estimate_memory
from kvpilot.planning.models import (
    ModelShape,
    UnknownModelShapeError,
    quantization_problem,
    resolve_shape,
)

TP_SIZES = (1, 2, 4, 8)
DEFAULT_MAX_GPUS_PER_NODE = 8
REDUCED_KV_TOLERANCE = 0.10

RejectionCode = Literal[
    "UnknownGPUType",
    "NoValidTensorParallel",
    "WeightsExceedMemory",
    "KVCacheExceedsMemory",
]


@dataclass(frozen=True)
class FitOption:
    """One way to run a replica: GPU type, TP size and the memory it needs per GPU."""

    gpu_type: str
    tensor_parallel: int
    memory: MemoryBreakdown
    reduced_kv: bool = False

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel


@dataclass(frozen=True)
class TypeRejection:
    """Why a GPU type cannot run the model; `memory` is the closest TP that was tried."""

    gpu_type: str
    code: RejectionCode
    message: str
    memory: MemoryBreakdown | None = None


@dataclass(frozen=True)
class ModelFits:
    shape: ModelShape
    options: tuple[FitOption, ...]
    rejections: tuple[TypeRejection, ...] = ()
    reason: Literal["Fits"] = "Fits"

    @property
    def message(self) -> str:
        best = self.options[0]
        return f"fits {best.gpu_type} at TP{best.tensor_parallel}"


@dataclass(frozen=True)
class NoGPUTypeFits:
    shape: ModelShape
    rejections: tuple[TypeRejection, ...]
    reason: Literal["NoGPUTypeFits"] = "NoGPUTypeFits"

    @property
    def message(self) -> str:
        if not self.rejections:
            return "no GPU type to try: placement.gpuTypes is empty and the pool has no GPU nodes"
        return "no GPU type fits the model: " + "; ".join(r.message for r in self.rejections)


@dataclass(frozen=True)
class UnknownModelShape:
    message: str
    reason: Literal["UnknownModelShape"] = "UnknownModelShape"


@dataclass(frozen=True)
class InvalidModelConfig:
    """The spec asks for something vLLM refuses for this model (context, weight format)."""

    message: str
    reason: Literal["InvalidModelConfig"] = "InvalidModelConfig"


FitResult = ModelFits | NoGPUTypeFits | UnknownModelShape | InvalidModelConfig


def valid_tp_sizes(shape: ModelShape) -> list[int]:
    """The TP sizes vLLM accepts for this model (before node sizes)."""
    return [tp for tp in TP_SIZES if valid_tensor_parallel(shape, tp) is None]


def model_config_problems(source: str, shape: ModelShape, config: ServingConfig) -> list[str]:
    """What vLLM would refuse about serving this model with this config."""
    problems = []
    if shape.context_length is not None and config.max_model_len > shape.context_length:
        problems.append(
            f"maxModelLen {config.max_model_len} exceeds the model's context length of "
            f"{shape.context_length} tokens (vLLM refuses a longer --max-model-len)"
        )
    quant = quantization_problem(source, config.quantization)
    if quant is not None:
        problems.append(quant)
    return problems


def valid_tensor_parallel(shape: ModelShape, tp: int) -> str | None:
    """None when vLLM accepts this TP for the model, otherwise why not."""
    if tp < 1:
        return f"TP{tp} is not a positive size"
    if shape.attention_heads % tp != 0:
        return f"TP{tp} does not divide the {shape.attention_heads} attention heads"
    if shape.kv_heads % tp != 0 and tp % shape.kv_heads != 0:
        return f"TP{tp} neither divides nor is a multiple of the {shape.kv_heads} KV heads"
    return None


def candidate_gpu_types(
    preference: Sequence[str],
    available: Sequence[str] | None = None,
    costs: Mapping[str, float] | None = None,
) -> tuple[list[GPUType], list[TypeRejection]]:
    """GPU types to try, in order, and rejections for names that are not GPU types.

    With a preference list, its order stands. Without one, every type in `available`
    (the pool) or the catalog is tried; `fit_model` then ranks options by replica cost.
    """
    if preference:
        found: list[GPUType] = []
        unknown: list[TypeRejection] = []
        for name in preference:
            gpu = gpu_type(name)
            if gpu is None:
                known = ", ".join(g.name for g in GPU_TYPES)
                message = f"{name}: unknown GPU type (known: {known})"
                unknown.append(TypeRejection(name, "UnknownGPUType", message))
            elif gpu not in found:
                found.append(gpu)
        return found, unknown
    pool = [g for name in available if (g := gpu_type(name))] if available is not None else None
    types = pool if pool is not None else list(GPU_TYPES)
    table = costs or {}
    return sorted(types, key=lambda g: (table.get(g.name, g.relative_cost), g.name)), []


def fit_model(
    source: str,
    config: ServingConfig,
    *,
    shape: Mapping[str, Any] | None = None,
    tensor: int | str = "auto",
    gpu_types: Sequence[str] = (),
    max_gpus_per_node: Mapping[str, int] | None = None,
    costs: Mapping[str, float] | None = None,
) -> FitResult:
    """Every GPU type the model fits, best first, with the TP size to use on each.

    `source` and `shape` are spec.model.source and spec.model.shape (camelCase keys);
    `tensor` is spec.parallelism.tensor; `gpu_types` is spec.placement.gpuTypes;
    `max_gpus_per_node` maps GPU type -> GPUs of the largest node of that type in the pool
    (a type missing from it may use up to 8); `costs` maps GPU type -> relative hourly cost.
    """
    try:
        model = resolve_shape(source, shape)
    except UnknownModelShapeError as err:
        return UnknownModelShape(str(err))
    problems = model_config_problems(source, model, config)
    if problems:
        return InvalidModelConfig("; ".join(problems))
    available = list(max_gpus_per_node) if max_gpus_per_node is not None else None
    types, rejections = candidate_gpu_types(gpu_types, available, costs)
    explicit_tp = _parse_tensor(tensor)

    full: list[FitOption] = []
    reduced: list[FitOption] = []
    for gpu in types:
        node_max = DEFAULT_MAX_GPUS_PER_NODE
        if max_gpus_per_node is not None and gpu.name in max_gpus_per_node:
            node_max = max_gpus_per_node[gpu.name]
        option, rejection = _fit_type(model, config, gpu, explicit_tp, node_max)
        if option is None:
            assert rejection is not None
            rejections.append(rejection)
        elif option.reduced_kv:
            reduced.append(option)
        else:
            full.append(option)
    if not gpu_types:
        table = costs or {}

        def replica_cost(o: FitOption) -> tuple[float, str]:
            gpu = gpu_type(o.gpu_type)
            unit = table.get(o.gpu_type, gpu.relative_cost if gpu else 1.0)
            return (unit * o.tensor_parallel, o.gpu_type)

        near = [o for o in reduced if kv_shortfall(o.memory) <= REDUCED_KV_TOLERANCE]
        full = sorted(full + near, key=replica_cost)
        reduced = sorted((o for o in reduced if o not in near), key=replica_cost)
    options = tuple(full + reduced)
    if not options:
        return NoGPUTypeFits(model, tuple(rejections))
    return ModelFits(model, options, tuple(rejections))


def kv_shortfall(mem: MemoryBreakdown) -> float:
    """How far the KV cache vLLM will allocate falls short of the target (0 when it holds it)."""
    if mem.kv_cache_bytes <= 0:
        return 0.0
    allocated = mem.kv_capacity_tokens * mem.kv_bytes_per_token
    return max(0.0, 1 - allocated / mem.kv_cache_bytes)


def _parse_tensor(tensor: int | str) -> int | None:
    if isinstance(tensor, int):
        return tensor
    text = str(tensor).strip().lower()
    if text in ("", "auto"):
        return None
    return int(text)


def _fit_type(
    model: ModelShape, config: ServingConfig, gpu: GPUType, explicit_tp: int | None, node_max: int
) -> tuple[FitOption | None, TypeRejection | None]:
    sizes = (explicit_tp,) if explicit_tp is not None else TP_SIZES
    excluded: list[str] = []
    too_big: list[int] = []
    tried: list[MemoryBreakdown] = []
    for tp in sizes:
        why = valid_tensor_parallel(model, tp)
        if why is not None:
            excluded.append(why)
        elif tp > node_max:
            too_big.append(tp)
        else:
            tried.append(estimate_memory(model, config, gpu, tp))
    if too_big:
        plural = "GPU" if node_max == 1 else "GPUs"
        sizes_text = "/".join(str(tp) for tp in too_big)
        excluded.append(f"TP{sizes_text} exceed the {node_max} {plural} of one {gpu.name} node")
    for mem in tried:
        if mem.fits_target:
            return FitOption(gpu.name, mem.tensor_parallel, mem), None
    if not config.explicit_target:
        for mem in tried:
            if mem.fits_minimum:
                return FitOption(gpu.name, mem.tensor_parallel, mem, reduced_kv=True), None
    valid = valid_tp_sizes(model)
    if not tried:
        listed = ", ".join(str(tp) for tp in valid if tp <= node_max)
        hint = f"; valid sizes on {gpu.name}: {listed}" if listed else ""
        return None, TypeRejection(
            gpu.name,
            "NoValidTensorParallel",
            f"{gpu.name}: no usable TP ({'; '.join(excluded)}){hint}",
        )
    closest = tried[-1]
    code: RejectionCode = (
        "WeightsExceedMemory"
        if closest.non_kv_bytes >= closest.budget_bytes
        else "KVCacheExceedsMemory"
    )
    message = f"{gpu.name}: {_shortfall(closest)}"
    if excluded:
        message += f" ({'; '.join(excluded)})"
    largest = max((tp for tp in valid if tp <= node_max), default=0)
    if explicit_tp is None and closest.tensor_parallel == largest:
        message += (
            f"; even the largest TP on one {gpu.name} node ({largest}) is too small: the model "
            "needs more than one node, and multi-node serving is not supported yet"
        )
    return None, TypeRejection(gpu.name, code, message, closest)


def _shortfall(mem: MemoryBreakdown) -> str:
    return (
        f"at TP{mem.tensor_parallel} needs {_gib(mem.required_bytes)} per GPU "
        f"(weights {_gib(mem.weights_bytes)}, KV cache {_gib(mem.kv_cache_bytes)} for "
        f"{mem.target_sequences} x {mem.max_model_len} tokens, activations and overhead "
        f"{_gib(mem.activation_bytes + mem.cuda_graph_bytes + mem.runtime_overhead_bytes)}) "
        f"but the budget is {_gib(mem.budget_bytes)} "
        f"({mem.gpu_memory_utilization:g} x {_gib(mem.gpu_memory_bytes)})"
    )


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
