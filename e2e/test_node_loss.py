"""Node loss: a fake GPU node that holds replicas is deleted; the replicas are placed again
on the capacity that is left, and status.placement and the conditions say so. When the
node comes back, the service gets all its replicas again."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.chaos import add_pool, remove_pool
from e2e.helpers import GC_TIMEOUT, Kube, condition, service_deployment, wait_for
from e2e.test_operator import apply, pods_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("operator")]

#: Two nodes of a GPU type only this test asks for: 2 x 2 H200.
POOL: dict[str, Any] = {
    "podReadyDelaySeconds": 1,
    "nodes": [
        {"name": "loss-h200", "count": 2, "gpuType": "H200-141GB", "gpuProduct": "NVIDIA-H200",
         "gpuMemoryMiB": 143771, "gpus": 2},
    ],
}  # fmt: skip


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
            "placement": {"gpuTypes": ["H200-141GB"]},
            "scaling": {"minReplicas": 1, "maxReplicas": 3},
        },
    }


def settled(kube: Kube, ns: str, name: str, replicas: int) -> dict[str, Any] | None:
    """The service when it serves ``replicas`` ready pods that all run on live nodes."""
    obj = kube.get("inferenceservice", name, ns)
    if obj is None:
        return None
    status = obj.get("status") or {}
    nodes = {n["metadata"]["name"] for n in kube.json("get", "nodes")["items"]}
    pods = pods_of(kube, ns, name)
    ready = [
        p
        for p in pods
        if p["spec"].get("nodeName") in nodes
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]
    ok = (
        len(pods) == replicas == len(ready)
        and status.get("observedGeneration") == obj["metadata"]["generation"]
        and status.get("desiredReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and (condition(obj, "Ready") or {}).get("status") == "True"
    )
    return obj if ok else None


def test_lost_node_replicas_are_placed_again(kube: Kube, namespace: str) -> None:
    nodes = add_pool(kube, POOL)
    try:
        apply(kube, namespace, service("survivor"))
        obj = wait_for(
            lambda: settled(kube, namespace, "survivor", 3), lambda o: o is not None,
            timeout=120, what="3 replicas on 2 nodes",
        )  # fmt: skip
        assert condition(obj, "Placed")["status"] == "True"  # type: ignore[index]
        by_node: dict[str, int] = {}
        for p in pods_of(kube, namespace, "survivor"):
            by_node[p["spec"]["nodeName"]] = by_node.get(p["spec"]["nodeName"], 0) + 1
        lost = max(by_node, key=lambda n: by_node[n])
        kept = next(n for n in nodes if n != lost)
        kube("delete", "node", lost)

        # Only one node (2 GPUs) is left: 2 of 3 replicas, all on it.
        obj = wait_for(
            lambda: settled(kube, namespace, "survivor", 2), lambda o: o is not None,
            timeout=GC_TIMEOUT, what=f"2 replicas on {kept} after {lost} is gone",
        )  # fmt: skip
        assert {p["spec"]["nodeName"] for p in pods_of(kube, namespace, "survivor")} == {kept}
        placement = obj["status"]["placement"]  # type: ignore[index]
        assert placement["replicasPlaced"] == 2 and placement["replicasWanted"] == 3, placement
        placed, degraded = condition(obj, "Placed"), condition(obj, "Degraded")
        assert placed is not None and placed["status"] == "False", placed
        assert "2 of 3" in placed["message"], placed
        assert degraded is not None and degraded["status"] == "True", degraded
        dep = service_deployment(kube, namespace, "survivor")
        assert dep is not None and dep["spec"]["replicas"] == 2

        # The node is back: all three again, Placed.
        add_pool(kube, POOL)
        obj = wait_for(
            lambda: settled(kube, namespace, "survivor", 3), lambda o: o is not None,
            timeout=120, what="3 replicas once the node is back",
        )  # fmt: skip
        assert condition(obj, "Placed")["status"] == "True"  # type: ignore[index]
        assert obj["status"]["placement"]["replicasPlaced"] == 3  # type: ignore[index]
    finally:
        kube.run("delete", "inferenceservices", "--all", "-n", namespace, "--wait=false")
        remove_pool(kube, nodes)
