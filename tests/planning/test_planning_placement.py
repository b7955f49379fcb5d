"""Multi-service placement: priorities, guarantees, packing, stability."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from kvpilot.planning.gpus import GIB
from kvpilot.planning.inventory import (
    Inventory,
    NodeGPUs,
    build_inventory,
    nodes_from_inventory_file,
)
from kvpilot.planning.memory import MemoryBreakdown
from kvpilot.planning.models import CATALOG
from kvpilot.planning.placement import (
    PlacementPlan,
    RunningReplicas,
    ServiceDemand,
    pin_running,
    plan_placement,
    running_replicas,
)
from kvpilot.planning.service import plan_services, service_from_manifest
from kvpilot.planning.tp import (
    FitOption,
    ModelFits,
    NoGPUTypeFits,
    TypeRejection,
    UnknownModelShape,
)

MEM = MemoryBreakdown(
    gpu_type="H100-80GB",
    tensor_parallel=1,
    gpu_memory_bytes=80 * GIB,
    gpu_memory_utilization=0.9,
    budget_bytes=72 * GIB,
    weights_bytes=15 * GIB,
    kv_cache_bytes=4 * GIB,
    activation_bytes=2 * GIB,
    cuda_graph_bytes=GIB // 2,
    runtime_overhead_bytes=GIB // 2,
    kv_bytes_per_token=128 * 1024,
    max_model_len=8192,
    target_sequences=4,
    kv_capacity_tokens=400_000,
)


def opt(gpu: str, tp: int) -> FitOption:
    return FitOption(gpu, tp, replace(MEM, gpu_type=gpu, tensor_parallel=tp))


def svc(
    name: str,
    *options: FitOption,
    prio: int = 0,
    min: int = 1,
    max: int = 8,
    want: int | None = None,
    preemptible: bool = False,
    running: RunningReplicas | None = None,
) -> ServiceDemand:
    return ServiceDemand(
        name=name,
        fit=ModelFits(CATALOG["llama-3.1-8b"], tuple(options)),
        priority=prio,
        min_replicas=min,
        max_replicas=max,
        desired_replicas=want,
        preemptible=preemptible,
        running=running,
    )


def pool(*nodes: tuple[str, str, int, int]) -> Inventory:
    """(name, GPU type, GPUs, GPUs used by other workloads)."""
    return Inventory(tuple(NodeGPUs(n, t, "", None, g, u) for n, t, g, u in nodes))


def summary(plan: PlacementPlan) -> list[tuple[Any, ...]]:
    return [
        (
            s.name,
            s.reason,
            s.gpu_type,
            s.tensor_parallel,
            s.replicas_placed,
            s.replicas_wanted,
            s.nodes,
        )
        for s in plan.services
    ]


H2 = pool(("h-0", "H100-80GB", 8, 0), ("h-1", "H100-80GB", 8, 0))
H1 = pool(("h-0", "H100-80GB", 8, 0))
H, A = "H100-80GB", "A100-80GB"


@pytest.mark.parametrize(
    ("demands", "inventory", "expected"),
    [
        pytest.param(
            [svc("a", opt(H, 4), want=3)],
            H2,
            [("a", "Placed", H, 4, 3, 3, (("h-0", 2), ("h-1", 1)))],
            id="best-fit fills one node before starting the next",
        ),
        pytest.param(
            [svc("small", opt(H, 1), prio=10, want=3), svc("big", opt(H, 8))],
            pool(("h-0", H, 8, 0), ("h-1", H, 8, 5)),
            [
                ("big", "Placed", H, 8, 1, 1, (("h-0", 1),)),
                ("small", "Placed", H, 1, 3, 3, (("h-1", 3),)),
            ],
            id="small replicas fill the fragment, the whole node stays free for TP8",
        ),
        pytest.param(
            [svc("hi", opt(H, 4), prio=100, want=2), svc("lo", opt(H, 4), want=2)],
            H1,
            [
                ("hi", "InsufficientCapacity", H, 4, 1, 2, (("h-0", 1),)),
                ("lo", "InsufficientCapacity", H, 4, 1, 2, (("h-0", 1),)),
            ],
            id="a lower-priority minimum is kept against higher-priority growth",
        ),
        pytest.param(
            [
                svc("hi", opt(H, 4), prio=100, want=2),
                svc("lo", opt(H, 4), want=2, preemptible=True),
            ],
            H1,
            [
                ("hi", "Placed", H, 4, 2, 2, (("h-0", 2),)),
                ("lo", "Preempted", H, 4, 0, 2, ()),
            ],
            id="a preemptible service gives up even its minimum",
        ),
        pytest.param(
            [svc("hi", opt(H, 4), prio=100, min=2, want=2), svc("lo", opt(H, 4), want=1)],
            H1,
            [
                ("hi", "Placed", H, 4, 2, 2, (("h-0", 2),)),
                ("lo", "InsufficientCapacity", H, 4, 0, 1, ()),
            ],
            id="higher-priority minimums come first",
        ),
        pytest.param(
            [svc("hi", opt(H, 2), prio=5, want=6), svc("lo", opt(H, 2), min=0, want=4)],
            H1,
            [
                ("hi", "InsufficientCapacity", H, 2, 4, 6, (("h-0", 4),)),
                ("lo", "InsufficientCapacity", H, 2, 0, 4, ()),
            ],
            id="minReplicas 0 is no guarantee",
        ),
        pytest.param(
            [svc("a", opt(H, 2), want=4), svc("b", opt(H, 2), want=4)],
            H1,
            [
                ("a", "InsufficientCapacity", H, 2, 2, 4, (("h-0", 2),)),
                ("b", "InsufficientCapacity", H, 2, 2, 4, (("h-0", 2),)),
            ],
            id="equal priorities share a shortage round-robin",
        ),
        pytest.param(
            [svc("a", opt(H, 1), opt(A, 1), want=2)],
            pool(("h-0", H, 8, 8), ("a-0", A, 8, 0)),
            [("a", "Placed", A, 1, 2, 2, (("a-0", 2),))],
            id="falls back to the next preferred GPU type",
        ),
        pytest.param(
            [svc("a", opt(H, 4), opt(A, 4), want=2)],
            pool(("h-0", H, 8, 4), ("a-0", A, 8, 0)),
            [("a", "Placed", A, 4, 2, 2, (("a-0", 2),))],
            id="prefers a type that holds every wanted replica",
        ),
        pytest.param(
            [svc("a", opt(H, 4), opt(A, 8), want=2)],
            pool(("h-0", H, 8, 4), ("a-0", A, 8, 4)),
            [("a", "InsufficientCapacity", H, 4, 1, 2, (("h-0", 1),))],
            id="else the first type that holds the minimum",
        ),
        pytest.param(
            [svc("a", opt("L4-24GB", 1), want=1)],
            H1,
            [("a", "InsufficientCapacity", "L4-24GB", 1, 0, 1, ())],
            id="no nodes of the type",
        ),
        pytest.param(
            [svc("a", opt(H, 1), min=0, want=0)],
            H1,
            [("a", "Placed", H, 1, 0, 0, ())],
            id="scaled to zero is placed",
        ),
        pytest.param(
            [svc("a", opt(H, 1), min=2, max=4, want=9), svc("b", opt(H, 1), min=2, max=4, want=1)],
            H1,
            [
                ("a", "Placed", H, 1, 4, 4, (("h-0", 4),)),
                ("b", "Placed", H, 1, 2, 2, (("h-0", 2),)),
            ],
            id="desired replicas are clamped to min and max",
        ),
    ],
)
def test_plan_placement(
    demands: list[ServiceDemand], inventory: Inventory, expected: list[tuple[Any, ...]]
) -> None:
    assert summary(plan_placement(demands, inventory)) == expected


def test_fit_failures_pass_through() -> None:
    shape = CATALOG["llama-3.1-70b"]
    rejection = TypeRejection("L4-24GB", "WeightsExceedMemory", "L4-24GB: too small")
    demands = [
        ServiceDemand("nofit", NoGPUTypeFits(shape, (rejection,))),
        ServiceDemand("unknown", UnknownModelShape("model 'x' is not in the catalog")),
    ]
    plan = plan_placement(demands, H1)
    assert [(s.name, s.reason, s.message, s.replicas_placed, s.option) for s in plan.services] == [
        ("nofit", "NoGPUTypeFits", "no GPU type fits the model: L4-24GB: too small", 0, None),
        ("unknown", "UnknownModelShape", "model 'x' is not in the catalog", 0, None),
    ]


def test_messages_explain_shortages() -> None:
    plan = plan_placement(
        [
            svc("ns/hi", opt(H, 4), prio=100, want=2),
            svc("ns/lo", opt(H, 4), want=2),
            svc("ns/spot", opt(H, 4), prio=-1, want=1, preemptible=True),
        ],
        H1,
    )
    assert [(s.name, s.message) for s in plan.services] == [
        (
            "ns/hi",
            "1 of 2 replicas placed on H100-80GB at TP4: each replica needs 4 GPUs on one node, "
            "and the largest free block of H100-80GB is 0; lower-priority services keep their "
            "minReplicas: ns/lo (4 GPUs)",
        ),
        (
            "ns/lo",
            "1 of 2 replicas placed on H100-80GB at TP4: each replica needs 4 GPUs on one node, "
            "and the largest free block of H100-80GB is 0; higher-priority services hold "
            "ns/hi (priority 100, 4 GPUs)",
        ),
        (
            "ns/spot",
            "preempted: 0 of 1 replicas placed (below minReplicas) on H100-80GB at TP4: each "
            "replica needs 4 GPUs on one node, and the largest free block of H100-80GB is 0; "
            "higher-priority services hold ns/hi (priority 100, 4 GPUs), "
            "ns/lo (priority 0, 4 GPUs)",
        ),
    ]
    assert plan.free == (("h-0", 0),)
    assert plan.gpus_used == 8


def test_running_service_keeps_its_gpu_type() -> None:
    inventory = pool(("a-0", A, 8, 0), ("a-1", A, 8, 0), ("h-0", H, 8, 0))
    running = RunningReplicas(A, 1, (("a-1", 2),))
    demand = svc("a", opt(H, 1), opt(A, 1), want=3, running=running)
    assert summary(plan_placement([demand], inventory)) == [
        ("a", "Placed", A, 1, 3, 3, (("a-1", 3),))
    ]
    assert summary(plan_placement([demand], inventory, keep_running=False)) == [
        ("a", "Placed", H, 1, 3, 3, (("h-0", 3),))
    ]


def test_running_on_a_type_that_no_longer_fits_is_not_pinned() -> None:
    running = RunningReplicas("L4-24GB", 1, (("l4-0", 1),))
    assert pin_running([opt(H, 1), opt(A, 1)], running) == [opt(H, 1), opt(A, 1)]
    assert pin_running([opt(H, 1), opt(A, 1)], RunningReplicas(A, 1, (("a-0", 1),))) == [opt(A, 1)]
    assert pin_running([opt(H, 1)], RunningReplicas(H, 2, (("h-0", 1),))) == [opt(H, 1)]


def test_plan_is_deterministic_and_order_independent() -> None:
    demands = [
        svc(f"s{i}", opt(H, tp), opt(A, tp), prio=p, want=w)
        for i, (tp, p, w) in enumerate([(1, 0, 5), (2, 10, 3), (4, 10, 2), (8, 5, 1), (1, 10, 4)])
    ]
    inventory = pool(("h-0", H, 8, 3), ("h-1", H, 8, 0), ("a-0", A, 8, 1), ("a-1", A, 8, 0))
    first = plan_placement(demands, inventory)
    for seed in range(5):
        shuffled = list(demands)
        random.Random(seed).shuffle(shuffled)
        assert plan_placement(shuffled, inventory) == first


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        plan_placement([svc("a", opt(H, 1)), svc("a", opt(H, 1))], H1)


def test_running_replicas_from_pods() -> None:
    inventory = pool(("a-0", A, 8, 0), ("h-0", H, 8, 0))

    def p(node: str, gpus: int, svc_name: str = "chat", **extra: Any) -> dict[str, Any]:
        meta = {"namespace": "ml", "labels": {"kvpilot.io/inference-service": svc_name}} | extra
        return {
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}],
            },
            "status": {"phase": "Running"},
        }

    pods = [
        p("h-0", 2),
        p("h-0", 2),
        p("a-0", 2),  # old replica elsewhere, mid-migration
        p("h-0", 2, deletionTimestamp="2024-01-01T00:00:00Z"),
        p("a-0", 1, "other"),
        {"metadata": {"labels": {}}, "spec": {"nodeName": "a-0"}},
    ]
    assert running_replicas(pods, inventory) == {
        "ml/chat": RunningReplicas(H, 2, (("h-0", 2),), (("a-0", 2),), (A, 2)),
        "ml/other": RunningReplicas(A, 1, (("a-0", 1),)),
    }


def rev_pod(node: str, revision: str, created: str, gpus: int = 1) -> dict[str, Any]:
    labels = {"kvpilot.io/inference-service": "chat", "kvpilot.io/revision": revision}
    return {
        "metadata": {"namespace": "ml", "labels": labels, "creationTimestamp": created},
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}],
        },
        "status": {"phase": "Running"},
    }


OLD_A = [rev_pod("a-0", "r1", "2026-01-01T00:00:00Z"), rev_pod("a-0", "r1", "2026-01-01T00:00:05Z")]


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param(OLD_A, RunningReplicas(A, 1, (("a-0", 2),)), id="one-revision"),
        pytest.param(
            # One new replica on H100 next to two old ones on A100: the newest revision
            # is current, not the most common type, so the plan does not flip back.
            [*OLD_A, rev_pod("h-0", "r2", "2026-01-02T00:00:00Z")],
            RunningReplicas(H, 1, (("h-0", 1),), (("a-0", 2),), (A, 1)),
            id="rollout-to-h100-first-new-pod",
        ),
        pytest.param(
            # An old replica recreated mid-rollout does not make the old revision newest.
            [
                *OLD_A,
                rev_pod("h-0", "r2", "2026-01-02T00:00:00Z"),
                rev_pod("a-1", "r1", "2026-01-03T00:00:00Z"),
            ],
            RunningReplicas(H, 1, (("h-0", 1),), (("a-0", 2), ("a-1", 1)), (A, 1)),
            id="old-replica-recreated",
        ),
        pytest.param(
            # A rollout on the same GPU type (TP1 -> TP2) holds nothing elsewhere.
            [*OLD_A, rev_pod("a-1", "r2", "2026-01-02T00:00:00Z", gpus=2)],
            RunningReplicas(A, 2, (("a-1", 1),)),
            id="same-type-new-tp",
        ),
    ],
)
def test_running_follows_the_newest_revision(
    pods: list[dict[str, Any]], expected: RunningReplicas
) -> None:
    inventory = pool(("a-0", A, 8, 0), ("a-1", A, 8, 0), ("h-0", H, 8, 0))
    assert running_replicas(pods, inventory) == {"ml/chat": expected}


def manifest(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "serving"},
        "spec": {"model": {"source": source}} | spec,
    }


DEFAULT_INVENTORY = {
    "nodes": [
        {"name": "h100", "count": 2, "gpuType": "H100-80GB", "gpus": 8},
        {"name": "a100", "count": 2, "gpuType": "A100-80GB", "gpus": 8},
        {"name": "l4", "count": 4, "gpuType": "L4-24GB", "gpus": 1},
    ]
}


def three_services(high_replicas: int, low_types: list[str]) -> list[dict[str, Any]]:
    return [
        manifest(
            "chat-70b",
            "hf://meta-llama/Llama-3.1-70B-Instruct",
            replicas=high_replicas,
            placement={"gpuTypes": ["H100-80GB"], "priority": 100},
            scaling={"minReplicas": 1, "maxReplicas": 4},
        ),
        manifest(
            "code-8b",
            "hf://meta-llama/Llama-3.1-8B-Instruct",
            replicas=8,
            placement={"gpuTypes": low_types, "priority": 0},
            scaling={"minReplicas": 1, "maxReplicas": 8},
        ),
        manifest(
            "small",
            "hf://Qwen/Qwen2.5-1.5B-Instruct",
            replicas=4,
            placement={"gpuTypes": ["L4-24GB"], "priority": 50},
            scaling={"minReplicas": 1, "maxReplicas": 6},
        ),
    ]


L4_NODES = (("l4-0", 1), ("l4-1", 1), ("l4-2", 1), ("l4-3", 1))
SMALL = ("serving/small", "Placed", "L4-24GB", 1, 4, 4, L4_NODES)


@pytest.mark.parametrize(
    ("high_replicas", "low_types", "expected"),
    [
        (
            2,
            [H],
            [
                ("serving/chat-70b", "Placed", H, 4, 2, 2, (("h100-0", 2),)),
                ("serving/code-8b", "Placed", H, 1, 8, 8, (("h100-1", 8),)),
                SMALL,
            ],
        ),
        # The high-priority service grows past what is free: the low one shrinks ...
        (
            3,
            [H],
            [
                ("serving/chat-70b", "Placed", H, 4, 3, 3, (("h100-0", 2), ("h100-1", 1))),
                ("serving/code-8b", "InsufficientCapacity", H, 1, 4, 8, (("h100-1", 4),)),
                SMALL,
            ],
        ),
        # ... but keeps its minimum, so the high one stops short.
        (
            4,
            [H],
            [
                (
                    "serving/chat-70b",
                    "InsufficientCapacity",
                    H,
                    4,
                    3,
                    4,
                    (("h100-0", 2), ("h100-1", 1)),
                ),
                ("serving/code-8b", "InsufficientCapacity", H, 1, 4, 8, (("h100-1", 4),)),
                SMALL,
            ],
        ),
        # With a second GPU type allowed, the low one goes there instead of shrinking.
        (
            4,
            [H, A],
            [
                ("serving/chat-70b", "Placed", H, 4, 4, 4, (("h100-0", 2), ("h100-1", 2))),
                ("serving/code-8b", "Placed", A, 1, 8, 8, (("a100-0", 8),)),
                SMALL,
            ],
        ),
    ],
)
def test_three_services_on_the_default_inventory(
    high_replicas: int, low_types: list[str], expected: list[tuple[Any, ...]]
) -> None:
    inventory = build_inventory(nodes_from_inventory_file(DEFAULT_INVENTORY))
    services = [service_from_manifest(m) for m in three_services(high_replicas, low_types)]
    assert summary(plan_services(services, inventory)) == expected


def test_running_service_moves_only_to_place_more_replicas() -> None:
    inventory = build_inventory(nodes_from_inventory_file(DEFAULT_INVENTORY))
    running = {
        "serving/chat-70b": RunningReplicas(H, 4, (("h100-0", 2),)),
        "serving/code-8b": RunningReplicas(H, 1, (("h100-1", 8),)),
    }
    services = [service_from_manifest(m) for m in three_services(2, [A, H])]
    # Everything fits: the placer keeps code-8b on H100 although A100 is its first
    # preference; only the upgrade pass (nothing waits, A100 holds all 8) moves it back.
    plan = plan_services(services, inventory, running=running)
    move = plan.service("serving/code-8b").type_move
    assert move is not None and (move.from_option, move.to_option) == ((H, 1), (A, 1))
    assert plan.type_moves == (move,)
    # chat-70b grows to 4: code-8b moves to A100, where all 8 replicas fit.
    services = [service_from_manifest(m) for m in three_services(4, [A, H])]
    plan = plan_services(services, inventory, running=running)
    assert summary(plan)[:2] == [
        ("serving/chat-70b", "Placed", H, 4, 4, 4, (("h100-0", 2), ("h100-1", 2))),
        ("serving/code-8b", "Placed", A, 1, 8, 8, (("a100-0", 8),)),
    ]
    assert plan.service("serving/code-8b").message == (
        "8 of 8 replicas placed on A100-80GB at TP1; moves from H100-80GB at TP1, "
        "where fewer replicas fit"
    )


def test_running_service_does_not_move_for_preference_when_others_are_short() -> None:
    inventory = build_inventory(nodes_from_inventory_file(DEFAULT_INVENTORY))
    running = {"serving/code-8b": RunningReplicas(H, 1, (("h100-1", 8),))}
    manifests = three_services(2, [A, H])
    manifests[2]["spec"]["replicas"] = 6  # small is short on the four L4s: the search runs
    plan = plan_services([service_from_manifest(m) for m in manifests], inventory, running=running)
    assert [(s.name, s.reason, s.gpu_type, s.replicas_placed) for s in plan.services] == [
        ("serving/chat-70b", "Placed", H, 2),
        ("serving/code-8b", "Placed", H, 8),
        ("serving/small", "InsufficientCapacity", "L4-24GB", 4),
    ]
    # Without a running placement the preference order holds: A100 first.
    plan = plan_services([service_from_manifest(m) for m in manifests], inventory)
    assert plan.service("serving/code-8b").gpu_type == A


def test_local_search_moves_two_services_at_once() -> None:
    """x must leave H100 for a whole L4 node, and z must leave L4 for H100, together."""
    inventory = pool(("h-0", H, 8, 0), ("l-0", "L4-24GB", 8, 0), ("l-1", "L4-24GB", 4, 0))
    demands = [
        svc("x", opt(H, 4), opt("L4-24GB", 8), want=1),
        svc("y", opt(H, 1), want=5),
        svc("z", opt("L4-24GB", 2), opt(H, 1), prio=100, min=2, want=2),
        svc("w", opt("L4-24GB", 2), prio=10, min=2, want=2),
    ]
    greedy = plan_placement(demands, inventory, search_budget=0)
    assert greedy.service("y").replicas_placed == 4
    assert summary(plan_placement(demands, inventory)) == [
        ("w", "Placed", "L4-24GB", 2, 2, 2, (("l-1", 2),)),
        ("x", "Placed", "L4-24GB", 8, 1, 1, (("l-0", 1),)),
        ("y", "Placed", H, 1, 5, 5, (("h-0", 5),)),
        ("z", "Placed", H, 1, 2, 2, (("h-0", 2),)),
    ]


@pytest.mark.parametrize(
    ("preemptible", "expected"),
    [
        # A running, non-preemptible minimum is kept, whatever the other's priority.
        (False, {"t1/a": 8, "t2/b": 0}),
        # Marked preemptible, it yields to the higher priority.
        (True, {"t1/a": 0, "t2/b": 8}),
    ],
)
def test_a_running_minimum_is_never_taken_by_another_tenant(
    preemptible: bool, expected: dict[str, int]
) -> None:
    from kvpilot.planning.inventory import build_inventory
    from kvpilot.planning.placement import running_from_nodes
    from kvpilot.planning.service import plan_services, service_from_manifest

    node = {
        "metadata": {
            "name": "a",
            "labels": {
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.memory": "81920",
            },
        },
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }

    def svc(ns: str, name: str, priority: int, pre: bool) -> Any:
        return service_from_manifest(
            {
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
                    "parallelism": {"tensor": 1},
                    "placement": {"priority": priority, "preemptible": pre},
                    "scaling": {"minReplicas": 8, "maxReplicas": 8},
                },
            }
        )

    plan = plan_services(
        [svc("t1", "a", 10, preemptible), svc("t2", "b", 1_000_000, False)],
        build_inventory([node]),
        running={"t1/a": running_from_nodes("A100-80GB", 1, ["a"] * 8)},
    )
    assert {s.name: s.replicas_placed for s in plan.services} == expected
