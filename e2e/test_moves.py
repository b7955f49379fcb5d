"""Make-before-break moves on the dev cluster: TP1 replicas spread over both A100 nodes
move together so a TP8 replica gets a whole node, under steady load, never below the TP1
service's ready count; an operator restart in the middle of the move converges."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, steady_load, wait_for
from e2e.operator import OperatorProcess
from e2e.test_core import no_terminating_namespaces
from e2e.test_maintenance import is_ready
from e2e.test_operator import apply, isvc, pods_of
from e2e.test_placement import LARGE, actual_nodes, all_placed_and_ready, service
from kvpilot_runtime.loadgen import (
    discover_targets,
)

pytestmark = pytest.mark.usefixtures("pod_runner")

NODES = ("a100-0", "a100-1")
RESERVED = "kvpilot.io/reserved"


def placeholder(gpus: int, node: str) -> dict[str, Any]:
    """A pod of another workload holding GPUs on one node (kwok runs it; no scheduler)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "placeholder"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [
                {
                    "name": "hold",
                    "image": "placeholder",
                    "resources": {
                        "requests": {"nvidia.com/gpu": str(gpus)},
                        "limits": {"nvidia.com/gpu": str(gpus)},
                    },
                }
            ],
        },
    }


def reservations(kube: Kube) -> dict[str, str]:
    out = {}
    for name in NODES:
        for taint in (kube.get("node", name) or {}).get("spec", {}).get("taints") or []:
            if taint.get("key") == RESERVED:
                out[name] = taint.get("value", "")
    return out


@pytest.mark.parametrize("restart", [False, True], ids=["steady", "operator-restart"])
def test_tp1_replicas_move_to_free_a_node_for_tp8(
    kube: Kube,
    served_namespace: str,
    cluster: Cluster,
    operator: OperatorProcess,
    restart: bool,
) -> None:
    ns = served_namespace
    no_terminating_namespaces(kube)
    # Another workload holds 5 GPUs of a100-0 while the TP1 service starts: its six
    # replicas land 3 + 3 on the two A100 nodes, and stay there when the GPUs free up.
    apply(kube, ns, placeholder(5, NODES[0]))
    apply(kube, ns, service("small", "hf://meta-llama/Llama-3.1-8B-Instruct", 6, tensor=1))
    wait_for(
        lambda: all_placed_and_ready(kube, ns, ["small"]),
        lambda ok: ok,
        timeout=120,
        what="small placed and ready",
    )
    assert actual_nodes(kube, ns, "small") == {NODES[0]: 3, NODES[1]: 3}
    kube("delete", "pod", "placeholder", "-n", ns, "--wait=true")
    wait_for(
        lambda: discover_targets(cluster.layout.scrape_targets, ns, "small"),
        lambda t: len(t) == 6,
        timeout=60,
        what="6 live replicas",
    )

    lowest = [6]
    dips: list[tuple[float, list[str]]] = []
    stop = threading.Event()

    def watch() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            pods = pods_of(kube, ns, "small")
            ready = [p for p in pods if is_ready(p)]
            lowest[0] = min(lowest[0], len(ready))
            if len(ready) < 6:
                # Which pods were live but not Ready, so a failure says why.
                dips.append((
                    round(time.monotonic() - t0, 1),
                    [p["metadata"]["name"] for p in pods if not is_ready(p)],
                ))  # fmt: skip
            time.sleep(0.3)

    loader, result = steady_load(
        cluster.layout.scrape_targets, ns, "small", seed=5, stop=stop.is_set
    )
    threads = [threading.Thread(target=watch), loader]
    for t in threads:
        t.start()
    try:
        time.sleep(3)  # steady load before the TP8 service arrives
        started = time.monotonic()
        apply(kube, ns, LARGE)
        reserved = wait_for(
            lambda: reservations(kube),
            bool,
            timeout=60,
            what="a node reserved for the TP8 service",
        )
        assert list(reserved.values()) == [f"{ns}.large"]
        moving = wait_for(
            lambda: isvc(kube, ns, "small"),
            lambda o: (
                (condition(o, "Progressing") or {}).get("reason")
                in ("Moving", "RemovingMovedReplicas")
            ),
            timeout=60,
            what="small Progressing Moving",
        )
        message = (condition(moving, "Progressing") or {}).get("message", "")
        (freed,) = reserved
        assert f"3 replica(s) move from {freed}" in message
        assert f"{freed} is freed for {ns}/large" in message
        waiting = condition(isvc(kube, ns, "large"), "Progressing") or {}
        if restart:
            operator.stop()
            offset = len(operator.log())
            operator.start()
        wait_for(
            lambda: all_placed_and_ready(kube, ns, ["small", "large"]),
            lambda ok: ok,
            timeout=180,
            what="both services placed where planned and ready",
        )
        took = time.monotonic() - started
        wait_for(
            lambda: reservations(kube), lambda r: r == {}, timeout=30, what="no reservation left"
        )
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    small, large = actual_nodes(kube, ns, "small"), actual_nodes(kube, ns, "large")
    assert small == {NODES[1] if freed == NODES[0] else NODES[0]: 6}
    assert large == {freed: 1}
    assert lowest[0] >= 6, f"small's ready replicas fell to {lowest[0]} during the move: {dips}"
    records, summary = result["run"]
    assert summary.ok > 0
    assert summary.errors == 0, [(r.status, r.error) for r in records if not r.ok][:3]
    reasons = {
        e["reason"]
        for e in kube.json("get", "events", "-n", ns, "-o", "json")["items"]
        if e["involvedObject"]["name"] in ("small", "large")
    }
    assert {"Moving", "RemovingMovedReplicas"} <= reasons, reasons
    if restart:  # the restarted operator finished the move it found half done
        assert f"Released node={freed}" in operator.log()[offset:]
    print(
        f"move figures: restart={restart} seconds={took:.1f} lowest_ready={lowest[0]} "
        f"requests_ok={summary.ok} waiting={waiting.get('reason')}"
    )
