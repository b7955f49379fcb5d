"""GPU type catalog: kvpilot GPU type names, the node labels that identify them, and their specs.

kvpilot names GPU types by model and memory (`H100-80GB`); nodes advertise the product
string that GPU-feature-discovery writes into `nvidia.com/gpu.product` (the `nvidia-smi`
name with spaces replaced by dashes) and the memory in MiB in `nvidia.com/gpu.memory`.
The planner sizes models against `memory_mib`, the total memory the driver reports,
because vLLM's `--gpu-memory-utilization` is a fraction of exactly that figure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class GPUType:
    """One GPU model as the planner sees it.

    `relative_cost` is an hourly price relative to an H100 (rough public-cloud list
    prices); it only breaks ties between GPU types when a service states no preference.
    `large_batch_defaults` mirrors vLLM's choice of larger scheduler defaults
    (8192 batched tokens, 1024 sequences) on GPUs with >= 70 GiB that are not A100s.
    """

    name: str
    products: tuple[str, ...]
    memory_mib: int
    hbm_bandwidth_gbps: float
    bf16_dense_tflops: float
    relative_cost: float
    fp8_compute: bool
    large_batch_defaults: bool
    family: str

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


GPU_TYPES: tuple[GPUType, ...] = (
    GPUType(
        name="H200-141GB",
        products=("NVIDIA-H200", "NVIDIA-H200-NVL", "NVIDIA-H200-141GB-HBM3e"),
        memory_mib=143771,
        hbm_bandwidth_gbps=4800.0,
        bf16_dense_tflops=989.0,
        relative_cost=1.30,
        fp8_compute=True,
        large_batch_defaults=True,
        family="H200",
    ),
    GPUType(
        name="H100-80GB",
        products=(
            "NVIDIA-H100-80GB-HBM3",
            "NVIDIA-H100-SXM5-80GB",
            "NVIDIA-H100-PCIe",
            "NVIDIA-H100-80GB-PCIe",
        ),
        memory_mib=81559,
        hbm_bandwidth_gbps=3350.0,
        bf16_dense_tflops=989.0,
        relative_cost=1.00,
        fp8_compute=True,
        large_batch_defaults=True,
        family="H100",
    ),
    GPUType(
        name="A100-80GB",
        products=("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
        memory_mib=81920,
        hbm_bandwidth_gbps=2039.0,
        bf16_dense_tflops=312.0,
        relative_cost=0.65,
        fp8_compute=False,
        large_batch_defaults=False,
        family="A100",
    ),
    GPUType(
        name="A100-40GB",
        products=("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-40GB-PCIe"),
        memory_mib=40960,
        hbm_bandwidth_gbps=1555.0,
        bf16_dense_tflops=312.0,
        relative_cost=0.45,
        fp8_compute=False,
        large_batch_defaults=False,
        family="A100",
    ),
    GPUType(
        name="L40S-48GB",
        products=("NVIDIA-L40S",),
        memory_mib=46068,
        hbm_bandwidth_gbps=864.0,
        bf16_dense_tflops=362.0,
        relative_cost=0.40,
        fp8_compute=True,
        large_batch_defaults=False,
        family="L40S",
    ),
    GPUType(
        name="A10G-24GB",
        products=("NVIDIA-A10G",),
        memory_mib=23028,
        hbm_bandwidth_gbps=600.0,
        bf16_dense_tflops=70.0,
        relative_cost=0.28,
        fp8_compute=False,
        large_batch_defaults=False,
        family="A10G",
    ),
    GPUType(
        name="L4-24GB",
        products=("NVIDIA-L4",),
        memory_mib=23034,
        hbm_bandwidth_gbps=300.0,
        bf16_dense_tflops=121.0,
        relative_cost=0.22,
        fp8_compute=True,
        large_batch_defaults=False,
        family="L4",
    ),
)

_BY_NAME: dict[str, GPUType] = {g.name.lower(): g for g in GPU_TYPES}
# Short spellings users write in `placement.gpuTypes` (`L4`, `H100`); they resolve only
# when the family has a single memory size.
_FAMILY_ALIASES: dict[str, GPUType] = {
    fam.lower(): members[0]
    for fam in {g.family for g in GPU_TYPES}
    if len(members := [g for g in GPU_TYPES if g.family == fam]) == 1
}
_BY_PRODUCT: dict[str, GPUType] = {p.lower(): g for g in GPU_TYPES for p in g.products}

# GFD product suffixes that mean the GPU is not handed out whole: MIG slices and
# time-sliced ("-SHARED") replicas. A vLLM replica sized for a whole GPU must not land there.
_PARTITIONED = re.compile(r"(-MIG-|-SHARED$)", re.IGNORECASE)


def gpu_type(name: str) -> GPUType | None:
    """Look up a GPU type by kvpilot name (case-insensitive) or unambiguous family alias."""
    key = name.strip().lower()
    return _BY_NAME.get(key) or _FAMILY_ALIASES.get(key)


def require_gpu_type(name: str) -> GPUType:
    found = gpu_type(name)
    if found is None:
        known = ", ".join(g.name for g in GPU_TYPES)
        raise KeyError(f"unknown GPU type {name!r} (known: {known})")
    return found


def gpu_type_for_product(product: str, memory_mib: int | None = None) -> GPUType | None:
    """Map a GFD `nvidia.com/gpu.product` string (plus optional memory label) to a type.

    Exact product strings come first; otherwise the family token in the product (`H100`,
    `A100`, ...) picks the family and the memory label picks the size (A100 40 vs 80 GB).
    MIG and time-sliced products map to nothing: their GPUs are not whole.
    """
    if not product or _PARTITIONED.search(product):
        return None
    exact = _BY_PRODUCT.get(product.strip().lower())
    if exact is not None:
        return exact
    tokens = set(re.split(r"[-_ ]+", product.strip().upper()))
    families = [fam for fam in _families() if fam.upper() in tokens]
    if len(families) != 1:
        return None
    members = [g for g in GPU_TYPES if g.family == families[0]]
    if len(members) == 1:
        return members[0]
    size_hint = _size_from_tokens(tokens)
    if size_hint is not None:
        by_size = [g for g in members if g.name.endswith(f"-{size_hint}GB")]
        if len(by_size) == 1:
            return by_size[0]
    if memory_mib is not None:
        return min(members, key=lambda g: abs(g.memory_mib - memory_mib))
    return None


def cost_order(names: Iterable[str], costs: Mapping[str, float] | None = None) -> list[str]:
    """Order GPU type names cheapest first (operator cost table, then catalog cost, then name)."""
    table = costs or {}

    def key(name: str) -> tuple[float, str]:
        known = gpu_type(name)
        fallback = known.relative_cost if known is not None else float("inf")
        return (table.get(name, fallback), name)

    return sorted(names, key=key)


def _families() -> list[str]:
    return sorted({g.family for g in GPU_TYPES})


def _size_from_tokens(tokens: set[str]) -> int | None:
    for token in tokens:
        match = re.fullmatch(r"(\d+)GB", token)
        if match:
            return int(match.group(1))
    return None
