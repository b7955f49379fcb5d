"""Node maintenance never cuts serving capacity: cordon, then drain, under steady load.

Cordoning a node starts replacements of its replicas on spare capacity first (make
before break); the drain then evicts the old ones one at a time through the PDB. The
service never has fewer ready replicas than it wants, and no request fails.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, steady_load, wait_for
from e2e.test_core import no_terminating_namespaces
from e2e.test_operator import apply, isvc, pods_of
from e2e.test_placement import actual_nodes, service
from kvpilot_runtime.loadgen import (
    discover_targets,
)

pytestmark = pytest.mark.usefixtures("operator", "pod_runner")


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def ready_count(kube: Kube, ns: str, name: str) -> int:
    return sum(1 for p in pods_of(kube, ns, name) if is_ready(p))


def test_cordon_and_drain_under_load_lose_no_replica(
    kube: Kube, served_namespace: str, cluster: Cluster
) -> None:
    ns, name = served_namespace, "steady"
    no_terminating_namespaces(kube)
    apply(kube, ns, service(name, "hf://meta-llama/Llama-3.1-8B-Instruct", 4, tensor=1))
    wait_for(
        lambda: ready_count(kube, ns, name),
        lambda n: n == 4,
        timeout=120,
        what="4 replicas Ready",
    )
    wait_for(
        lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
        lambda t: len(t) == 4,
        timeout=60,
        what="4 live replicas",
    )
    (node,) = actual_nodes(kube, ns, name)  # bin-packed onto one node

    lowest = [4]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            lowest[0] = min(lowest[0], ready_count(kube, ns, name))
            time.sleep(0.5)

    loader, result = steady_load(cluster.layout.scrape_targets, ns, name, seed=3, stop=stop.is_set)
    threads = [threading.Thread(target=watch), loader]
    for t in threads:
        t.start()
    try:
        time.sleep(5)  # steady load before maintenance begins
        kube("cordon", node)
        wait_for(
            lambda: ready_count(kube, ns, name),
            lambda n: n == 8,
            timeout=120,
            what="4 replacements Ready on other nodes before anything goes",
        )
        progressing = condition(isvc(kube, ns, name), "Progressing")
        assert progressing is not None and progressing["reason"] == "NodeMaintenance"
        kube(
            "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
            f"--pod-selector=kvpilot.io/inference-service={name}", "--timeout=180s",
        )  # fmt: skip
        wait_for(
            lambda: actual_nodes(kube, ns, name),
            lambda nodes: node not in nodes and sum(nodes.values()) == 4,
            timeout=120,
            what=f"4 replicas, none on {node}",
        )
        wait_for(
            lambda: isvc(kube, ns, name),
            lambda o: (
                (condition(o, "Ready") or {}).get("reason") == "ReplicasReady"
                and (condition(o, "Progressing") or {}).get("reason") == "RolloutComplete"
            ),
            timeout=60,
            what="Ready and settled off the drained node",
        )
        time.sleep(5)
    finally:
        stop.set()
        for t in threads:
            t.join(180)
        kube("uncordon", node)
    records, summary = result["run"]
    assert lowest[0] >= 4, f"ready replicas fell to {lowest[0]} during maintenance"
    assert summary.ok > 0
    assert summary.errors == 0, [(r.status, r.error) for r in records if not r.ok][:3]
