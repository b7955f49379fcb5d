"""Invariants of the memory model and placement over generated pools and services.

- Memory: the parts add up, KV capacity is whole blocks and never negative, and more
  tensor-parallel ranks never put more weight bytes on one GPU.
- Placement: never more GPUs used on a node than it has free, never more replicas than
  wanted (and wanted never above maxReplicas), never below a placed service's guarantee
  when the pool could hold it alone, and the same inputs give the same plan.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpilot.planning.gpus import GPU_TYPES
from kvpilot.planning.inventory import Inventory, NodeGPUs
from kvpilot.planning.memory import KV_BLOCK_TOKENS, ServingConfig, estimate_memory
from kvpilot.planning.models import ModelShape
from kvpilot.planning.service import ServiceSpec, plan_services

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = (
    "hf://meta-llama/Llama-3.1-8B-Instruct",
    "hf://meta-llama/Llama-3.1-70B-Instruct",
    "hf://Qwen/Qwen2.5-7B-Instruct-AWQ",
)
GPU_PRODUCTS = {g.name: g.products[0] for g in GPU_TYPES}


@st.composite
def shapes(draw: st.DrawFn) -> ModelShape:
    """Self-consistent transformer shapes: the parameter count covers the dimensions."""
    kv_heads = draw(st.sampled_from([1, 2, 4, 8, 16]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 4, 8]))
    head_dim = draw(st.sampled_from([64, 128, 256]))
    hidden = heads * head_dim
    layers = draw(st.integers(1, 160))
    intermediate = hidden * draw(st.sampled_from([2, 3, 4]))
    vocab = draw(st.sampled_from([32000, 128256, 152064]))
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    dense = layers * (attention + 3 * hidden * intermediate) + 2 * vocab * hidden
    return ModelShape(
        parameters_billions=dense * draw(st.floats(1.0, 1.5)) / 1e9,
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=vocab,
    )


configs = st.builds(
    ServingConfig,
    quantization=st.sampled_from(["none", "awq", "gptq", "fp8", "int8"]),
    kv_cache_dtype=st.sampled_from(["auto", "fp8"]),
    max_model_len=st.integers(128, 131072),
    gpu_memory_utilization=st.floats(0.1, 1.0),
    target_concurrency=st.one_of(st.none(), st.integers(1, 64)),
)


@SETTINGS
@given(shape=shapes(), config=configs, gpu=st.sampled_from(GPU_TYPES))
def test_memory_parts_add_up_and_capacity_is_whole_blocks(
    shape: ModelShape, config: ServingConfig, gpu: object
) -> None:
    previous = None
    for tp in (1, 2, 4, 8):
        mem = estimate_memory(shape, config, gpu, tp)  # type: ignore[arg-type]
        assert mem.required_bytes == mem.non_kv_bytes + mem.kv_cache_bytes
        assert mem.free_bytes == mem.budget_bytes - mem.required_bytes
        assert mem.budget_bytes <= mem.gpu_memory_bytes
        assert mem.kv_capacity_tokens >= 0
        assert mem.kv_capacity_tokens % KV_BLOCK_TOKENS == 0
        if previous is not None:
            assert mem.weights_bytes <= previous.weights_bytes
        previous = mem


@st.composite
def pools(draw: st.DrawFn) -> Inventory:
    nodes = []
    for i in range(draw(st.integers(0, 8))):
        gpu = draw(st.sampled_from(GPU_TYPES))
        allocatable = draw(st.sampled_from([1, 2, 4, 8]))
        nodes.append(
            NodeGPUs(
                name=f"node-{i}",
                gpu_type=gpu.name,
                product=GPU_PRODUCTS[gpu.name],
                memory_mib=None,
                allocatable=allocatable,
                requested=draw(st.integers(0, allocatable)),
            )
        )
    return Inventory(tuple(nodes))


@st.composite
def services(draw: st.DrawFn) -> list[ServiceSpec]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        low = draw(st.integers(0, 4))
        high = low + draw(st.integers(0, 6))
        out.append(
            ServiceSpec(
                name=f"ns/svc-{i}",
                source=draw(st.sampled_from(MODELS)),
                tensor=draw(st.sampled_from(["auto", 1, 2, 4, 8])),
                priority=draw(st.integers(-5, 5)),
                preemptible=draw(st.booleans()),
                min_replicas=low,
                max_replicas=max(1, high),
                desired_replicas=draw(st.one_of(st.none(), st.integers(low, max(1, high)))),
            )
        )
    return out


@SETTINGS
@given(inventory=pools(), specs=services())
def test_placement_never_overcommits_and_never_exceeds_max(
    inventory: Inventory, specs: list[ServiceSpec]
) -> None:
    plan = plan_services(specs, inventory)
    by_name = {s.name: s for s in specs}
    used: dict[str, int] = {}
    for placed in plan.services:
        spec = by_name[placed.name]
        assert placed.replicas_placed <= placed.replicas_wanted <= spec.max_replicas
        assert placed.replicas_wanted >= spec.min_replicas
        assert sum(n for _, n in placed.nodes) == placed.replicas_placed
        if placed.replicas_placed:
            assert placed.gpus_per_replica is not None
        for node, replicas in placed.nodes:
            used[node] = used.get(node, 0) + replicas * (placed.gpus_per_replica or 0)
    free = {n.name: n.free for n in inventory.nodes}
    for node, gpus in used.items():
        assert gpus <= free[node], (node, gpus, free[node])
    assert plan.gpus_used <= sum(free.values())
    assert plan_services(specs, inventory) == plan  # deterministic
