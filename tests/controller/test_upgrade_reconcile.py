"""A return to a better GPU type through the pool plan and the reconcile, stage by stage,
as the controller observes it: the plan starts it, the rollout carries it out make
before break, and nothing points back at the old type halfway."""

from __future__ import annotations

import copy
from typing import Any

from tests.controller.test_moves import a100, node

from kvpilot.api.parse import parse_inference_service
from kvpilot.planning.inventory import pod_gpu_request
from kvpilot.reconcile import Observation, plan_pool, plan_reconcile
from kvpilot.reconcile.plan import ReconcilePlan

GPU = "nvidia.com/gpu"
H100, A100 = "H100-80GB", "A100-80GB"

SPEC: dict[str, Any] = {
    "apiVersion": "kvpilot.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "chat", "namespace": "ns", "uid": "chat-uid", "generation": 1},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
        "parallelism": {"tensor": 1},
        "placement": {"gpuTypes": [H100, A100], "priority": 10},
        "scaling": {"minReplicas": 2, "maxReplicas": 2},
    },
}
SERVICES = [parse_inference_service(copy.deepcopy(SPEC))]


def h100(name: str) -> dict[str, Any]:
    out = node(name)
    out["metadata"]["labels"] = {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
    }
    out["status"] = {"allocatable": {GPU: "8"}}
    return out


NODES = [a100("a-0"), h100("h-0")]


def holder(service: str | None = None) -> dict[str, Any]:
    """8 GPUs of h-0 held by another workload (or by a kvpilot service's pod)."""
    labels = {} if service is None else {
        "app.kubernetes.io/managed-by": "kvpilot", "kvpilot.io/inference-service": service,
    }  # fmt: skip
    return {
        "metadata": {"name": "holder", "namespace": "ns", "labels": labels},
        "spec": {"nodeName": "h-0", "containers": [{"resources": {"requests": {GPU: "8"}}}]},
        "status": {"phase": "Running"},
    }


def pods_of(dep: dict[str, Any], node_name: str, n: int, created: str) -> list[dict[str, Any]]:
    """`n` Ready pods of a Deployment on one node."""
    template = dep["spec"]["template"]
    return [
        {
            "metadata": {
                "name": f"{dep['metadata']['name']}-{i}",
                "namespace": "ns",
                "labels": dict(template["metadata"]["labels"]),
                "creationTimestamp": created,
            },
            "spec": {"nodeName": node_name, "containers": template["spec"]["containers"]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i in range(n)
    ]


def live(dep: dict[str, Any], replicas: int, created: str) -> dict[str, Any]:
    dep = copy.deepcopy(dep)
    dep["spec"]["replicas"] = replicas
    dep["metadata"].update(generation=1, creationTimestamp=created)
    dep["status"] = {"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 1}
    return dep


def reconcile(
    pods: list[dict[str, Any]],
    deps: list[dict[str, Any]],
    previous: dict[str, Any],
    gpu_pods: list[dict[str, Any]] | None = None,
) -> tuple[Any, ReconcilePlan]:
    pool = plan_pool(SERVICES, NODES, pods + (gpu_pods or []))
    placement = pool.slice("ns", "chat")
    assert placement is not None and placement.option is not None
    free: dict[str, int] = {H100: 8, A100: 8}
    for p in pods + (gpu_pods or []):
        free[H100 if p["spec"]["nodeName"] == "h-0" else A100] -= pod_gpu_request(p)
    obs = Observation(
        namespace="ns", name="chat", generation=1, previous=previous,
        now="2026-12-01T00:10:00Z", isvc=SERVICES[0], placement=placement,
        gpu_product=pool.product(placement.option.gpu_type), deployments=tuple(deps),
        pods=tuple(pods), free_gpus=free,
    )  # fmt: skip
    return pool, plan_reconcile(obs)


def progressing(plan: ReconcilePlan) -> dict[str, Any]:
    assert plan.status is not None
    return next(c for c in plan.status["conditions"] if c["type"] == "Progressing")


def test_a_service_returns_to_its_preferred_type_and_never_flips_back() -> None:
    # 0. H100 is held by another workload: chat runs on A100, its second choice.
    pool, first = reconcile([], [], {}, [holder()])
    assert pool.slice("ns", "chat").gpu_type == A100  # type: ignore[union-attr]
    old_dep = live(next(o for o in first.apply if o["kind"] == "Deployment"), 2,
                   "2026-12-01T00:00:00Z")  # fmt: skip
    old = pods_of(old_dep, "a-0", 2, "2026-12-01T00:00:00Z")
    assert first.status is not None
    settled = first.status | {"revision": first.revision}

    # The holder is a deleted kvpilot service whose pod is still terminating: its GPUs
    # are not free yet, so nothing moves.
    pool, plan = reconcile(old, [old_dep], settled, [holder("gone")])
    assert pool.plan.type_moves == () and plan.revision == first.revision

    # 1. H100 frees up: the plan moves chat there; the reconcile starts the rollout.
    pool, plan = reconcile(old, [old_dep], settled)
    chat = pool.slice("ns", "chat")
    assert chat is not None and chat.gpu_type == H100 and chat.nodes == (("h-0", 2),)
    assert chat.type_move is not None and chat.type_move.reason == "BetterGPUType"
    assert dict(pool.plan.free)["a-0"] == 6  # the old replicas keep theirs
    assert plan.revision != first.revision
    better = [e for e in plan.events if e.reason == "BetterGPUType"]
    assert [e.message for e in better] == [
        "moving from A100-80GB at TP1 to H100-80GB at TP1: H100-80GB ranks before A100-80GB "
        "in its options and now has room for all 2 replica(s) with no service waiting; the "
        "new replicas start before the old ones go"
    ]
    cond = progressing(plan)
    assert cond["reason"] == "Surging"
    assert cond["message"].startswith("moving from A100-80GB at TP1 to H100-80GB at TP1: ")
    new_dep = next(o for o in plan.apply if o["kind"] == "Deployment")
    assert new_dep["spec"]["replicas"] == 1  # surged on free H100 GPUs, the old ones stay
    assert plan.scale == ()
    assert plan.status is not None
    rolling = plan.status
    # Asked again with the status written: the Event is not repeated.
    _, again = reconcile(old, [old_dep], rolling)
    assert not [e for e in again.events if e.reason == "BetterGPUType"]

    # 2. One new replica runs on H100 beside the two old ones (the old type is the most
    # common): the plan follows the new revision, the old GPUs stay held.
    new = pods_of(new_dep, "h-0", 2, "2026-12-01T00:05:00Z")
    stages = [
        (old + new[:1], [old_dep, live(new_dep, 1, "2026-12-01T00:05:00Z")]),
        (old[:1] + new, [live(old_dep, 1, "2026-12-01T00:00:00Z"),
                         live(new_dep, 2, "2026-12-01T00:05:00Z")]),
    ]  # fmt: skip
    for pods, deps in stages:
        pool, plan = reconcile(pods, deps, rolling)
        chat = pool.slice("ns", "chat")
        assert chat is not None and chat.gpu_type == H100
        assert chat.type_move is not None and chat.type_move.reason == "Moving"
        held = sum(1 for p in pods if p["spec"]["nodeName"] == "a-0")
        assert dict(pool.plan.free)["a-0"] == 8 - held
        assert plan.revision == rolling["revision"]
        assert progressing(plan)["message"].startswith("moving from A100-80GB at TP1 to H100")
        assert plan.status is not None
        rolling = plan.status

    # 3. Only the new replicas are left: settled on H100, nothing moves again.
    done = [live(new_dep, 2, "2026-12-01T00:05:00Z")]
    pool, plan = reconcile(new, done, rolling)
    assert pool.plan.type_moves == ()
    assert plan.revision == rolling["revision"] and plan.delete == ()
    assert plan.rollout is not None and plan.rollout.phase == "Stable"


def test_no_upgrade_to_a_revision_that_failed_its_rollout() -> None:
    _, first = reconcile([], [], {}, [holder()])
    old_dep = live(next(o for o in first.apply if o["kind"] == "Deployment"), 2,
                   "2026-12-01T00:00:00Z")  # fmt: skip
    old = pods_of(old_dep, "a-0", 2, "2026-12-01T00:00:00Z")
    _, plan = reconcile(old, [old_dep], {"revision": first.revision})
    better = plan.revision
    assert better != first.revision
    # The rollout to H100 was rolled back: the plan leaves the service where it serves.
    record = {"revision": better, "reason": "AnalysisFailed"}
    failed: dict[str, Any] = {"revisions": {"stable": first.revision, "failed": record}}
    rolled_back = parse_inference_service(copy.deepcopy(SPEC) | {"status": failed})
    pool = plan_pool([rolled_back], NODES, old)
    assert pool.slice("ns", "chat").gpu_type == A100  # type: ignore[union-attr]
    assert pool.plan.type_moves == ()
    # Another failed revision (an older spec) does not hold the upgrade back.
    record["revision"] = "0123456789"
    other = parse_inference_service(copy.deepcopy(SPEC) | {"status": failed})
    assert plan_pool([other], NODES, old).slice("ns", "chat").gpu_type == H100  # type: ignore[union-attr]
