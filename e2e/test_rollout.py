"""Rollouts to a quantized variant under steady load: BF16 TP4 -> AWQ TP1 on the A100s.

A watcher samples, every half second, the ready serving capacity (ready pods weighed by
their revision's capacity estimate) and the GPUs that bound pods hold on the A100 nodes.
The figures each test measured are printed (pytest -s) for docs/rollouts.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, wait_for
from e2e.operator import OperatorProcess
from e2e.test_operator import apply, isvc, pods_of
from kvpilot_runtime.loadgen import (
    LoadConfig,
    Segment,
    discover_targets,
    fixed_lengths,
    run,
    schedule_arrivals,
)

pytestmark = pytest.mark.usefixtures("operator", "pod_runner")

BF16 = "hf://meta-llama/Llama-3.1-70B-Instruct"
AWQ = "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
A100_GPUS = 16
CAPACITY = "kvpilot.io/capacity-tokens-per-second"


def spec(name: str, source: str, quant: str, tensor: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": source, "quantization": quant, "maxModelLen": 8192},
            "parallelism": {"tensor": tensor},
            "placement": {"gpuTypes": ["A100-80GB"], "priority": 100},
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
            "rollout": {"steps": [50], "maxUnavailable": 25, "analysis": {"enabled": False}},
        },
    }


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


class Watcher:
    """Samples ready capacity and A100 GPUs in use until stopped."""

    def __init__(self, kube: Kube, ns: str, name: str) -> None:
        self.kube, self.ns, self.name = kube, ns, name
        self.min_capacity = float("inf")
        self.max_gpus = 0
        self.pending_since: dict[str, float] = {}
        self.longest_pending = 0.0
        self.stop = threading.Event()

    def capacities(self) -> dict[str, float]:
        deps = self.kube.json(
            "get", "deployments", "-n", self.ns, "-l", f"kvpilot.io/inference-service={self.name}"
        )["items"]
        out = {}
        for d in deps:
            rev = d["spec"]["template"]["metadata"]["labels"]["kvpilot.io/revision"]
            out[rev] = float((d["metadata"].get("annotations") or {}).get(CAPACITY, "0"))
        return out

    def sample(self) -> None:
        caps = self.capacities()
        pods = pods_of(self.kube, self.ns, self.name)
        cap = sum(
            caps.get(p["metadata"]["labels"]["kvpilot.io/revision"], 0.0) for p in pods if _ready(p)
        )
        self.min_capacity = min(self.min_capacity, cap)
        all_pods = self.kube.json("get", "pods", "-A", "--field-selector=status.phase!=Succeeded")
        gpus = 0
        for p in all_pods["items"]:
            node = p["spec"].get("nodeName") or ""
            if not node.startswith("a100-") or p["metadata"].get("deletionTimestamp"):
                continue
            for c in p["spec"]["containers"]:
                gpus += int(((c.get("resources") or {}).get("requests") or {}).get(
                    "nvidia.com/gpu", 0))  # fmt: skip
        self.max_gpus = max(self.max_gpus, gpus)
        now = time.monotonic()
        for p in pods:
            uid = p["metadata"]["uid"]
            if not p["spec"].get("nodeName"):
                self.pending_since.setdefault(uid, now)
                self.longest_pending = max(self.longest_pending, now - self.pending_since[uid])

    def run(self) -> None:
        while not self.stop.is_set():
            # a kubectl call may race a deletion; the next sample sees the result
            with contextlib.suppress(AssertionError):
                self.sample()
            time.sleep(0.5)


@contextmanager
def under_load(
    cluster: Cluster, kube: Kube, ns: str, name: str
) -> Iterator[tuple[Watcher, dict[str, Any]]]:
    watcher = Watcher(kube, ns, name)
    result: dict[str, Any] = {}
    arrivals = schedule_arrivals((Segment(900.0, 2.0, 2.0),), fixed_lengths(128, 16), seed=5)

    def load() -> None:
        result["run"] = run(
            arrivals,
            lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
            LoadConfig(
                balance="least-outstanding", drain_timeout=120, seed=5, refresh_interval=0.2
            ),
            stop=watcher.stop.is_set,
        )

    threads = [threading.Thread(target=watcher.run), threading.Thread(target=load)]
    for t in threads:
        t.start()
    try:
        yield watcher, result
    finally:
        watcher.stop.set()
        for t in threads:
            t.join(180)


def revisions(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return ((isvc(kube, ns, name) or {}).get("status") or {}).get("revisions") or {}


def events(kube: Kube, ns: str, name: str) -> list[tuple[str, str, str]]:
    items = kube.json("get", "events", "-n", ns, f"--field-selector=involvedObject.name={name}")
    return [(e["type"], e["reason"], e["message"]) for e in items["items"]]


def start_stable(cluster: Cluster, kube: Kube, ns: str, name: str, replicas: int) -> str:
    apply(kube, ns, spec(name, BF16, "none", 4, replicas))
    wait_for(
        lambda: [p for p in pods_of(kube, ns, name) if _ready(p)],
        lambda ready: len(ready) == replicas,
        timeout=180,
        what=f"{replicas} BF16 replicas Ready",
    )
    wait_for(
        lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
        lambda t: len(t) == replicas,
        timeout=60,
        what="live replicas",
    )
    stable = revisions(kube, ns, name).get("stable")
    assert stable
    return str(stable)


def promoted(kube: Kube, ns: str, name: str, old: str, *, replicas: int, timeout: float) -> float:
    started = time.monotonic()
    wait_for(
        lambda: (revisions(kube, ns, name), pods_of(kube, ns, name)),
        lambda rp: (
            rp[0].get("stable") not in (None, old)
            and not rp[0].get("canary")
            and len([p for p in rp[1] if _ready(p)]) == replicas
            and all(p["metadata"]["labels"]["kvpilot.io/revision"] != old for p in rp[1])
        ),
        timeout=timeout,
        what="the AWQ revision promoted and the BF16 one gone",
    )
    return time.monotonic() - started


def block_gpus(kube: Kube, ns: str, node: str, gpus: int) -> None:
    """A pod that is not kvpilot's holding GPUs on one node (another team's job)."""
    apply(kube, ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"blocker-{node}"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "job", "image": "busybox",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
    })  # fmt: skip


def check(watcher: Watcher, result: dict[str, Any], bound: float) -> None:
    records, summary = result["run"]
    assert summary.ok > 0
    assert summary.errors == 0, [(r.status, r.error) for r in records if not r.ok][:3]
    assert watcher.min_capacity >= bound - 1e-6, (watcher.min_capacity, bound)
    assert watcher.max_gpus <= A100_GPUS


def test_bf16_tp4_to_awq_tp1_with_free_gpus(
    kube: Kube, served_namespace: str, cluster: Cluster
) -> None:
    ns, name = served_namespace, "upgrade"
    old = start_stable(cluster, kube, ns, name, 2)
    with under_load(cluster, kube, ns, name) as (watcher, result):
        wait_for(lambda: watcher.min_capacity, lambda c: c < float("inf"), timeout=30,
                 what="a first capacity sample")  # fmt: skip
        baseline = watcher.min_capacity
        apply(kube, ns, spec(name, AWQ, "awq", 1, 8))
        took = promoted(kube, ns, name, old, replicas=8, timeout=240)
    final = 8 * next(iter(watcher.capacities().values()))
    bound = 0.75 * min(baseline, final)
    print(
        f"\nupgrade: {took:.0f}s; min capacity {watcher.min_capacity:.0f} tok/s of baseline "
        f"{baseline:.0f} (bound {bound:.0f}); max A100 GPUs {watcher.max_gpus}"
    )
    check(watcher, result, bound)
    # Events are posted in the background, so the last may follow the status
    wait_for(
        lambda: [r for _, r, _ in events(kube, ns, name)],
        lambda reasons: "Surging" in reasons and "Promoted" in reasons,
        timeout=30,
        what="the Surging and Promoted Events",
    )


def test_no_free_gpu_replaces_one_for_one(
    kube: Kube, served_namespace: str, cluster: Cluster
) -> None:
    """3 BF16 TP4 replicas and another team's 4-GPU job fill both A100 nodes. One TP4
    replica is a third of the capacity, so maxUnavailable 40 lets one go at a time."""
    ns, name = served_namespace, "full"
    block_gpus(kube, ns, "a100-1", 4)
    old = start_stable(cluster, kube, ns, name, 3)
    with under_load(cluster, kube, ns, name) as (watcher, result):
        wait_for(lambda: watcher.min_capacity, lambda c: c < float("inf"), timeout=30,
                 what="a first capacity sample")  # fmt: skip
        baseline = watcher.min_capacity
        body = spec(name, AWQ, "awq", 1, 12)
        body["spec"]["rollout"]["maxUnavailable"] = 40
        apply(kube, ns, body)
        took = promoted(kube, ns, name, old, replicas=12, timeout=300)
    final = 12 * next(iter(watcher.capacities().values()))
    bound = 0.6 * min(baseline, final)
    print(f"\nno free GPU: {took:.0f}s; min capacity {watcher.min_capacity:.0f} tok/s "
          f"(bound {bound:.0f}); max A100 GPUs {watcher.max_gpus}; longest Pending "
          f"{watcher.longest_pending:.0f}s")  # fmt: skip
    check(watcher, result, bound)
    evs = events(kube, ns, name)
    reasons = [r for _, r, _ in evs]
    assert "Replacing" in reasons, [(r, m) for _, r, m in evs]
    assert watcher.longest_pending < 120


def test_surge_that_cannot_schedule_is_noticed_and_replaced(
    kube: Kube, served_namespace: str, cluster: Cluster
) -> None:
    """GPUs look free but their node cannot hold the pod: another team's job holds most
    of the free A100 node's memory, and the AWQ replicas ask for 100Gi. The surge pods
    stay Pending with GPUs free; the planner notices, says so in an Event and replaces
    stable replicas instead."""
    ns, name = served_namespace, "stuck"
    block_gpus(kube, ns, "a100-1", 8)  # the stable replicas start on a100-0
    old = start_stable(cluster, kube, ns, name, 2)
    kube("delete", "pod", "blocker-a100-1", "-n", ns, "--wait=true")
    other = "a100-1"
    apply(kube, ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "memory-hog"},
        "spec": {"nodeName": other, "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "job", "image": "busybox",
                                 "resources": {"requests": {"memory": "1050Gi"}}}]},
    })  # fmt: skip
    with under_load(cluster, kube, ns, name) as (watcher, result):
        wait_for(lambda: watcher.min_capacity, lambda c: c < float("inf"), timeout=30,
                 what="a first capacity sample")  # fmt: skip
        baseline = watcher.min_capacity
        # 8 AWQ replicas serve a little less than 2 BF16 ones, so no stable replica is
        # surplus before the canary serves; one TP4 replica is half the capacity.
        body = spec(name, AWQ, "awq", 1, 8)
        body["spec"]["runtime"] = {"memory": "100Gi"}
        body["spec"]["rollout"]["maxUnavailable"] = 50
        apply(kube, ns, body)
        started = time.monotonic()
        wait_for(
            lambda: [r for _, r, _ in events(kube, ns, name)],
            lambda reasons: "SurgeBlocked" in reasons,
            timeout=150,
            what="the SurgeBlocked Event",
        )
        noticed = time.monotonic() - started
        took = promoted(kube, ns, name, old, replicas=8, timeout=300)
    final = 8 * next(iter(watcher.capacities().values()))
    bound = 0.5 * min(baseline, final)
    print(
        f"\ndeadlock: SurgeBlocked {noticed:.0f}s after the change (longest Pending "
        f"{watcher.longest_pending:.0f}s); promoted {took:.0f}s later; min capacity "
        f"{watcher.min_capacity:.0f} (bound {bound:.0f}); max A100 GPUs {watcher.max_gpus}"
    )
    check(watcher, result, bound)
    assert noticed < 120


def test_operator_restart_mid_rollout_continues(
    kube: Kube, served_namespace: str, cluster: Cluster, operator: OperatorProcess
) -> None:
    ns, name = served_namespace, "restart"
    old = start_stable(cluster, kube, ns, name, 2)
    body = spec(name, AWQ, "awq", 1, 8)
    body["spec"]["rollout"]["paused"] = False
    with under_load(cluster, kube, ns, name) as (watcher, result):
        wait_for(lambda: watcher.min_capacity, lambda c: c < float("inf"), timeout=30,
                 what="a first capacity sample")  # fmt: skip
        baseline = watcher.min_capacity
        apply(kube, ns, body)
        wait_for(lambda: revisions(kube, ns, name), lambda r: bool(r.get("canary")),
                 timeout=60, what="the rollout under way")  # fmt: skip
        operator.stop()
        mid = revisions(kube, ns, name)
        operator.start()
        took = promoted(kube, ns, name, old, replicas=8, timeout=240)
    final = 8 * next(iter(watcher.capacities().values()))
    print(f"\nrestart: stopped at {mid.get('step')} ({mid.get('canaryWeight')}%), promoted "
          f"{took:.0f}s after the restart; min capacity {watcher.min_capacity:.0f}")  # fmt: skip
    check(watcher, result, 0.75 * min(baseline, final))


def test_abort_rolls_back_and_clearing_it_resumes(
    kube: Kube, served_namespace: str, cluster: Cluster
) -> None:
    """spec.rollout.abort removes the canary and records it as failed; the stable revision
    keeps serving; clearing abort rolls the same revision out again."""
    ns, name = served_namespace, "abort"
    old = start_stable(cluster, kube, ns, name, 2)
    body = spec(name, AWQ, "awq", 1, 8)
    # With the analysis on and its first window an hour away, the canary holds at step 1.
    body["spec"]["rollout"]["analysis"] = {"enabled": True, "intervalSeconds": 3600}
    with under_load(cluster, kube, ns, name) as (watcher, result):
        apply(kube, ns, body)
        canary = wait_for(
            lambda: (revisions(kube, ns, name), pods_of(kube, ns, name)),
            lambda rp: bool(rp[0].get("canary"))
            and any(_ready(p) for p in rp[1]
                    if p["metadata"]["labels"]["kvpilot.io/revision"] == rp[0]["canary"]),
            timeout=60,
            what="a canary replica ready, held by the analysis",
        )[0]["canary"]  # fmt: skip
        body["spec"]["rollout"]["abort"] = True
        apply(kube, ns, body)
        wait_for(
            lambda: (revisions(kube, ns, name), pods_of(kube, ns, name)),
            lambda rp: (
                rp[0].get("phase") == "RolledBack"
                and (rp[0].get("failed") or {}).get("reason") == "Aborted"
                and all(p["metadata"]["labels"]["kvpilot.io/revision"] == old for p in rp[1])
            ),
            timeout=120,
            what="the canary removed and the abort recorded",
        )
        assert revisions(kube, ns, name)["stable"] == old
        body["spec"]["rollout"]["abort"] = False
        body["spec"]["rollout"]["analysis"] = {"enabled": False}
        apply(kube, ns, body)
        took = promoted(kube, ns, name, old, replicas=8, timeout=240)
    assert revisions(kube, ns, name)["stable"] == canary
    wait_for(
        lambda: [r for _, r, _ in events(kube, ns, name)],
        lambda reasons: {"Aborted", "RolledBack", "Promoted"} <= set(reasons),
        timeout=30,
        what="the story in Events",
    )
    print(f"\nabort: rolled back, resumed and promoted {took:.0f}s after abort was cleared")
    check(watcher, result, 0.0)
