"""Placement the cluster follows: the bin-packing scheduler profile puts kvpilot's pods on
the nodes the plan chose, in every arrival order, and the status says what runs where."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from e2e.helpers import Kube, condition, condition_true, wait_for
from e2e.test_core import no_terminating_namespaces
from e2e.test_operator import apply, isvc, pods_of

pytestmark = pytest.mark.usefixtures("operator")


def service(name: str, source: str, replicas: int, tensor: int | str = "auto") -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": source, "maxModelLen": 8192},
            "parallelism": {"tensor": tensor},
            "placement": {"gpuTypes": ["A100-80GB"], "priority": 100},
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
        },
    }


SMALL = service("small", "hf://meta-llama/Llama-3.1-8B-Instruct", 6, tensor=1)
LARGE = service("large", "hf://meta-llama/Llama-3.1-405B-Instruct-FP8", 1, tensor=8)
LARGE["spec"]["model"]["quantization"] = "fp8"


def actual_nodes(kube: Kube, namespace: str, name: str) -> dict[str, int]:
    return dict(Counter(p["spec"].get("nodeName") for p in pods_of(kube, namespace, name)))


def planned_nodes(obj: dict[str, Any] | None) -> dict[str, int]:
    nodes = ((obj or {}).get("status", {}).get("placement") or {}).get("nodes") or []
    return {n["name"]: n["replicas"] for n in nodes}


def all_placed_and_ready(kube: Kube, namespace: str, names: list[str]) -> bool:
    for name in names:
        obj = isvc(kube, namespace, name)
        wanted = (obj or {}).get("spec", {}).get("scaling", {}).get("minReplicas")
        if not (condition_true(obj, "Placed") and condition_true(obj, "Ready")):
            return False
        if (obj or {}).get("status", {}).get("readyReplicas") != wanted:
            return False
        if planned_nodes(obj) != actual_nodes(kube, namespace, name):
            return False
    return True


@pytest.mark.parametrize("order", ["small-first", "large-first"])
def test_six_small_and_one_tp8_run_where_planned(kube: Kube, namespace: str, order: str) -> None:
    """Two 8-GPU A100 nodes; six TP1 replicas and one TP8 replica fit only if the six
    share one node. The default scheduler spreads them 3 + 3 and the TP8 pod stays
    Pending; with the plan enforced every replica runs, in both arrival orders."""
    no_terminating_namespaces(kube)
    first, second = (SMALL, LARGE) if order == "small-first" else (LARGE, SMALL)
    apply(kube, namespace, first)
    wait_for(
        lambda: all_placed_and_ready(kube, namespace, [first["metadata"]["name"]]),
        lambda ok: ok,
        timeout=120,
        what=f"{first['metadata']['name']} placed and ready",
    )
    apply(kube, namespace, second)
    wait_for(
        lambda: all_placed_and_ready(kube, namespace, ["small", "large"]),
        lambda ok: ok,
        timeout=180,
        what="both services placed where planned and ready",
    )
    small, large = actual_nodes(kube, namespace, "small"), actual_nodes(kube, namespace, "large")
    assert len(small) == 1 and sum(small.values()) == 6, small
    assert len(large) == 1 and set(large).isdisjoint(small), (small, large)
    for name in ("small", "large"):
        placed = condition(isvc(kube, namespace, name), "Placed")
        assert placed is not None and placed["reason"] == "Placed"


def test_unschedulable_pods_are_reported_honestly(kube: Kube, namespace: str) -> None:
    """A pod the scheduler cannot place (a memory request no node has) gives Placed=False with the
    scheduler's reason and Ready=False; it is never reported as loading."""
    obj = service("greedy", "hf://meta-llama/Llama-3.1-8B-Instruct", 1, tensor=1)
    obj["spec"]["runtime"] = {"memory": "60Ti"}
    apply(kube, namespace, obj)
    got = wait_for(
        lambda: isvc(kube, namespace, "greedy"),
        lambda o: (condition(o, "Placed") or {}).get("reason") == "Unschedulable",
        timeout=90,
        what="Placed=False Unschedulable",
    )
    placed, ready, degraded = (condition(got, t) for t in ("Placed", "Ready", "Degraded"))
    assert placed is not None and "Insufficient memory" in placed["message"]
    assert ready is not None and ready["status"] == "False"
    assert degraded is not None and degraded["status"] == "True"
