"""Inventory from plain Node and Pod dicts."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.planning.inventory import (
    Inventory,
    InventoryFileError,
    NodeGPUs,
    build_inventory,
    is_kvpilot_pod,
    nodes_from_inventory_file,
    pod_gpu_request,
    pods_for_used_gpus,
)

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(
    name: str,
    gpus: int | None,
    product: str = "NVIDIA-H100-80GB-HBM3",
    memory: str | None = "81559",
    *,
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    ready: str | None = "True",
) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product}
    if memory is not None:
        labels["nvidia.com/gpu.memory"] = memory
    allocatable = {"cpu": "32"} | ({"nvidia.com/gpu": str(gpus)} if gpus is not None else {})
    status: dict[str, Any] = {"allocatable": allocatable}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": "KubeletNotReady"}]
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "taints": taints if taints is not None else [GPU_TAINT],
            "unschedulable": unschedulable,
        },
        "status": status,
    }


def pod(
    name: str,
    node_name: str | None,
    gpus: int,
    phase: str = "Running",
    *,
    managed: bool = False,
    limits_only: bool = False,
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if not limits_only:
        resources["requests"] = {"nvidia.com/gpu": str(gpus)}
    labels = {"app.kubernetes.io/managed-by": "kvpilot"} if managed else {}
    spec: dict[str, Any] = {"containers": [{"name": "vllm", "resources": resources}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "labels": labels}, "spec": spec, "status": {"phase": phase}}


def test_build_inventory_counts_free_gpus() -> None:
    nodes = [
        node("h100-1", 8),
        node("h100-0", 8),
        node("a100-0", 8, "NVIDIA-A100-SXM4-80GB", "81920"),
        node("l4-0", 1, "NVIDIA-L4", "23034"),
        node("cpu-0", None, product="", memory=None),
        node("cordoned", 8, unschedulable=True),
        node("tainted", 8, taints=[GPU_TAINT, {"key": "maintenance", "effect": "NoExecute"}]),
        node("soft-taint", 8, taints=[{"key": "spot", "effect": "PreferNoSchedule"}]),
        node("notready", 8, ready="False"),
        node("mig", 7, "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb", "9728"),
        node("t4", 1, "Tesla-T4", "15360"),
    ]
    pods = [
        pod("a", "h100-0", 2),
        pod("b", "h100-0", 1, limits_only=True),
        pod("done", "h100-0", 4, phase="Succeeded"),
        pod("failed", "h100-0", 4, phase="Failed"),
        pod("pending", None, 8, phase="Pending"),
        pod("ours", "h100-1", 4, managed=True),
        pod("l4", "l4-0", 1),
        pod("a100-overcommitted", "a100-0", 9),
    ]
    inv = build_inventory(nodes, pods)
    assert inv == Inventory(
        (
            NodeGPUs("a100-0", "A100-80GB", "NVIDIA-A100-SXM4-80GB", 81920, 8, 9),
            NodeGPUs(
                "cordoned",
                "H100-80GB",
                "NVIDIA-H100-80GB-HBM3",
                81559,
                8,
                0,
                "cordoned (spec.unschedulable)",
            ),
            NodeGPUs("h100-0", "H100-80GB", "NVIDIA-H100-80GB-HBM3", 81559, 8, 3),
            NodeGPUs("h100-1", "H100-80GB", "NVIDIA-H100-80GB-HBM3", 81559, 8, 4),
            NodeGPUs("l4-0", "L4-24GB", "NVIDIA-L4", 23034, 1, 1),
            NodeGPUs(
                "mig",
                None,
                "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
                9728,
                7,
                0,
                "GPU product 'NVIDIA-A100-SXM4-80GB-MIG-1g.10gb' is not a known whole-GPU type",
            ),
            NodeGPUs(
                "notready",
                "H100-80GB",
                "NVIDIA-H100-80GB-HBM3",
                81559,
                8,
                0,
                "not Ready (KubeletNotReady)",
            ),
            NodeGPUs("soft-taint", "H100-80GB", "NVIDIA-H100-80GB-HBM3", 81559, 8, 0),
            NodeGPUs(
                "t4",
                None,
                "Tesla-T4",
                15360,
                1,
                0,
                "GPU product 'Tesla-T4' is not a known whole-GPU type",
            ),
            NodeGPUs(
                "tainted",
                "H100-80GB",
                "NVIDIA-H100-80GB-HBM3",
                81559,
                8,
                0,
                "taint maintenance:NoExecute is not tolerated",
            ),
        )
    )
    assert inv.free_by_type() == {"A100-80GB": 0, "H100-80GB": 5 + 4 + 8, "L4-24GB": 0}
    assert inv.total_by_type() == {"A100-80GB": 8, "H100-80GB": 24, "L4-24GB": 1}
    assert inv.max_gpus_per_node() == {"A100-80GB": 8, "H100-80GB": 8, "L4-24GB": 1}


def test_exclude_kvpilot_pods() -> None:
    inv = build_inventory(
        [node("h", 8)],
        [pod("x", "h", 2), pod("ours", "h", 4, managed=True)],
        exclude_pod=is_kvpilot_pod,
    )
    assert [(n.name, n.free) for n in inv.nodes] == [("h", 6)]


def test_tolerated_taints_are_configurable() -> None:
    nodes = [node("h", 8, taints=[{"key": "dedicated", "effect": "NoSchedule"}])]
    assert build_inventory(nodes).free_by_type() == {}
    assert build_inventory(nodes, tolerated_taints=["dedicated"]).free_by_type() == {"H100-80GB": 8}


def test_pod_gpu_request_counts_init_containers_like_the_scheduler() -> None:
    p = pod("x", "h", 2)
    p["spec"]["containers"].append(
        {"name": "side", "resources": {"requests": {"nvidia.com/gpu": 1}}}
    )
    p["spec"]["initContainers"] = [
        {"name": "init", "resources": {"limits": {"nvidia.com/gpu": "4"}}}
    ]
    assert pod_gpu_request(p) == 4
    p["spec"]["initContainers"] = [{"name": "init", "resources": {}}]
    assert pod_gpu_request(p) == 3


def test_inventory_file_round_trip() -> None:
    data = {
        "nodes": [
            {
                "name": "h100",
                "count": 2,
                "gpuType": "H100-80GB",
                "gpuProduct": "NVIDIA-H100-80GB-HBM3",
                "gpuMemoryMiB": 81559,
                "gpus": 8,
                "cpu": "208",
                "memory": "1800Gi",
            },
            {"name": "l4", "count": 1, "gpuType": "L4-24GB", "gpus": 1, "usedGpus": 1},
            {"name": "solo", "product": "NVIDIA-A100-SXM4-40GB", "gpus": 4},
        ]
    }
    nodes = nodes_from_inventory_file(data)
    inv = build_inventory(nodes, pods_for_used_gpus(nodes))
    assert [(n.name, n.gpu_type, n.allocatable, n.free) for n in inv.nodes] == [
        ("h100-0", "H100-80GB", 8, 8),
        ("h100-1", "H100-80GB", 8, 8),
        ("l4-0", "L4-24GB", 1, 0),
        ("solo", "A100-40GB", 4, 4),
    ]


BAD_INVENTORIES: list[tuple[str, list[dict[str, Any]], list[str]]] = [
    (
        "GPUs in words",
        [{"name": "a100", "gpuType": "A100-80GB", "gpus": "eight"}],
        ["nodes[0] (a100).gpus: 'eight' is not a whole number"],
    ),
    (
        "negative count",
        [{"name": "l4", "gpuType": "L4", "gpus": 1, "count": -1}],
        ["nodes[0] (l4).count: -1 is below 1"],
    ),
    (
        "more used than there are",
        [{"name": "h", "gpuType": "H100-80GB", "gpus": 8, "usedGpus": 9}],
        ["nodes[0] (h).usedGpus: 9 is more than the node's 8 GPUs"],
    ),
    (
        "one message per bad value, every pool",
        [
            {"name": "a", "gpuType": "T4", "gpus": 0},
            {"gpuType": "L4", "gpus": 1.5, "gpuMemoryMiB": "lots"},
        ],
        [
            "nodes[0] (a).gpus: 0 is below 1",
            "nodes[0] (a): gpuType: unknown GPU type 'T4' (known: H200-141GB, H100-80GB, "
            "A100-80GB, A100-40GB, L40S-48GB, A10G-24GB, L4-24GB)",
            "nodes[1].name: required",
            "nodes[1].gpus: 1.5 is not a whole number",
            "nodes[1].gpuMemoryMiB: 'lots' is not a whole number",
        ],
    ),
]


@pytest.mark.parametrize(
    ("pools", "problems"), [c[1:] for c in BAD_INVENTORIES], ids=[c[0] for c in BAD_INVENTORIES]
)
def test_inventory_file_reports_every_bad_value(
    pools: list[dict[str, Any]], problems: list[str]
) -> None:
    with pytest.raises(InventoryFileError) as err:
        nodes_from_inventory_file({"nodes": pools})
    assert list(err.value.problems) == problems
