"""A service placed on its fallback GPU type returns to its preferred one once it frees up:
make before break under steady load, never below its ready count, and it stays there."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, condition_true, steady_load, wait_for
from e2e.operator import OperatorProcess
from e2e.test_core import no_terminating_namespaces
from e2e.test_maintenance import is_ready
from e2e.test_operator import apply, isvc, pods_of
from e2e.test_placement import actual_nodes, all_placed_and_ready, service
from kvpilot_runtime.loadgen import (
    discover_targets,
)

pytestmark = pytest.mark.usefixtures("pod_runner")

H100, A100 = "H100-80GB", "A100-80GB"
REPLICAS = 2


def chat() -> dict[str, Any]:
    obj = service("chat", "hf://meta-llama/Llama-3.1-8B-Instruct", REPLICAS, tensor=1)
    obj["spec"]["placement"]["gpuTypes"] = [H100, A100]
    return obj


def blocker() -> dict[str, Any]:
    """Two TP8 replicas: both 8-GPU H100 nodes."""
    obj = service("blocker", "hf://meta-llama/Llama-3.1-405B-Instruct-FP8", 2, tensor=8)
    obj["spec"]["model"]["quantization"] = "fp8"
    obj["spec"]["placement"]["gpuTypes"] = [H100]
    return obj


def on_h100(nodes: dict[str, int]) -> bool:
    return sum(nodes.values()) == REPLICAS and all(n.startswith("h100-") for n in nodes)


def test_a_service_returns_to_its_preferred_gpu_type_make_before_break(
    kube: Kube, served_namespace: str, cluster: Cluster, operator: OperatorProcess
) -> None:
    ns = served_namespace
    no_terminating_namespaces(kube)
    apply(kube, ns, blocker())
    wait_for(
        lambda: all_placed_and_ready(kube, ns, ["blocker"]),
        lambda ok: ok,
        timeout=120,
        what="blocker placed and ready on both H100 nodes",
    )
    apply(kube, ns, chat())
    wait_for(
        lambda: all_placed_and_ready(kube, ns, ["chat"]),
        lambda ok: ok,
        timeout=120,
        what="chat placed and ready on its fallback type",
    )
    before = isvc(kube, ns, "chat") or {}
    assert before["status"]["placement"]["gpuType"] == A100
    assert all(n.startswith("a100-") for n in actual_nodes(kube, ns, "chat"))
    old_revision = before["status"]["revision"]
    wait_for(
        lambda: discover_targets(cluster.layout.scrape_targets, ns, "chat"),
        lambda t: len(t) == REPLICAS,
        timeout=60,
        what=f"{REPLICAS} live replicas",
    )

    lowest = [REPLICAS]
    dips: list[tuple[float, list[str]]] = []
    messages: set[str] = set()
    settled_at: list[float] = []
    back: list[str] = []  # pods started on A100 after the move completed
    stop = threading.Event()

    def watch() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            pods = pods_of(kube, ns, "chat")
            ready = [p for p in pods if is_ready(p)]
            lowest[0] = min(lowest[0], len(ready))
            if len(ready) < REPLICAS:
                dips.append((
                    round(time.monotonic() - t0, 1),
                    [p["metadata"]["name"] for p in pods if not is_ready(p)],
                ))  # fmt: skip
            if settled_at:
                back.extend(
                    p["metadata"]["name"]
                    for p in pods
                    if (p["spec"].get("nodeName") or "").startswith("a100-")
                )
            progressing = condition(isvc(kube, ns, "chat"), "Progressing") or {}
            if progressing.get("status") == "True":
                messages.add(progressing.get("message", ""))
            time.sleep(0.3)

    loader, result = steady_load(
        cluster.layout.scrape_targets, ns, "chat", seed=7, stop=stop.is_set
    )
    threads = [threading.Thread(target=watch), loader]
    for t in threads:
        t.start()
    try:
        time.sleep(3)  # steady load before the preferred type frees up
        started = time.monotonic()
        kube("delete", "inferenceservice", "blocker", "-n", ns, "--wait=false")
        done = wait_for(
            lambda: isvc(kube, ns, "chat"),
            lambda o: (
                on_h100(actual_nodes(kube, ns, "chat"))
                and condition_true(o, "Placed")
                and condition_true(o, "Ready")
                and (o or {}).get("status", {}).get("readyReplicas") == REPLICAS
                and (o or {}).get("status", {}).get("revisions", {}).get("phase") == "Stable"
            ),
            timeout=180,
            what="chat running all its replicas on H100, rollout complete",
        )
        took = time.monotonic() - started
        settled_at.append(took)
        # It stays: the old revision's Deployment goes and no pod returns to A100.
        wait_for(
            lambda: kube.json("get", "deployments", "-n", ns, "-o", "json")["items"],
            lambda deps: (
                [d["metadata"]["name"] for d in deps] == [f"chat-{done['status']['revision']}"]
            ),
            timeout=60,
            what="only the new revision's Deployment left",
        )
        time.sleep(3)  # load keeps running on the new replicas
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    final = isvc(kube, ns, "chat") or {}
    assert final["status"]["placement"]["gpuType"] == H100
    assert final["status"]["revision"] == done["status"]["revision"] != old_revision
    assert on_h100(actual_nodes(kube, ns, "chat"))
    assert back == [], f"pods returned to A100 after the move: {back}"
    assert lowest[0] >= REPLICAS, f"ready replicas fell to {lowest[0]} during the move: {dips}"
    records, summary = result["run"]
    assert summary.ok > 0
    assert summary.errors == 0, [(r.status, r.error) for r in records if not r.ok][:3]
    events = [
        e
        for e in kube.json("get", "events", "-n", ns, "-o", "json")["items"]
        if e["involvedObject"]["name"] == "chat" and e["reason"] == "BetterGPUType"
    ]
    assert len(events) == 1, events
    assert events[0]["message"].startswith(
        "moving from A100-80GB at TP1 to H100-80GB at TP1: H100-80GB ranks before A100-80GB"
    )
    assert any(m.startswith("moving from A100-80GB at TP1 to H100-80GB") for m in messages), (
        messages
    )
    print(
        f"upgrade figures: seconds={took:.1f} lowest_ready={lowest[0]} "
        f"requests_ok={summary.ok} failed={summary.errors}"
    )
