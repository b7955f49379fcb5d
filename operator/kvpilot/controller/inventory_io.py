"""Read what the planner needs from the cluster, as plain dicts: nodes, pods, InferenceServices.

All decisions stay in `kvpilot.planning`; this module only lists objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvpilot.api.names import API_VERSION
from kvpilot.controller.kube import Kube, load_config
from kvpilot.planning.inventory import Inventory, build_inventory, is_kvpilot_pod
from kvpilot.planning.placement import RunningReplicas, running_replicas


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    services: list[dict[str, Any]]


def connect() -> Kube:
    """A client from the kubeconfig (KUBECONFIG or ~/.kube/config), else in-cluster config."""
    load_config()
    return Kube()


def read_cluster(
    kube: Kube, *, nodes: bool = True, services: bool = True, namespace: str | None = None
) -> ClusterSnapshot:
    """List nodes and pods (all namespaces: every pod holds GPUs) and InferenceServices."""
    return ClusterSnapshot(
        nodes=kube.list("v1", "Node") if nodes else [],
        pods=kube.list("v1", "Pod") if nodes else [],
        services=kube.list(API_VERSION, "InferenceService", namespace) if services else [],
    )


def cluster_inventory(snapshot: ClusterSnapshot) -> tuple[Inventory, dict[str, RunningReplicas]]:
    """Free GPUs for kvpilot (other workloads' pods subtracted) and where services run now."""
    inventory = build_inventory(snapshot.nodes, snapshot.pods, exclude_pod=is_kvpilot_pod)
    ours = [p for p in snapshot.pods if is_kvpilot_pod(p)]
    return inventory, running_replicas(ours, inventory)
