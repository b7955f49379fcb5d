"""A quality-gated canary takes no traffic before its gate passes (simulator replicas).

The canary's pods carry the readinessGate ``kvpilot.io/quality-gate``: the pod runner
(playing the kubelet) reports the container ready but the pod not Ready, so the pod is
neither in a Service's endpoints nor in the load generator's replica list (which follows
pod readiness as endpoints do) until the operator sets the condition after a pass.

The simulator decodes from one seeded random stream per replica, so two fresh replicas
of the same seed give the same greedy answers to the gate's prompts (a pass), while a
replica that has already served requests answers differently (a failure). The first
rollout below runs with no traffic and passes; the second, under load, fails and is
rolled back without the canary ever having served a request.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, wait_for
from e2e.test_operator import apply, pods_of
from e2e.test_rollout import BF16, events, revisions, spec, start_stable, under_load
from kvpilot_runtime.loadgen import discover_targets

pytestmark = pytest.mark.usefixtures("operator", "pod_runner")

GATE = "kvpilot.io/quality-gate"


def release(n: int) -> dict[str, Any]:
    """The stable spec with a new revision: only a container env value differs, so both
    revisions run the same simulator (same profile, seed and batching)."""
    body = spec("gated", BF16, "none", 4, 1)
    body["spec"]["runtime"] = {"env": [{"name": "RELEASE", "value": str(n)}]}
    body["spec"]["rollout"]["qualityGate"] = {"enabled": True}
    return body


def _status(obj: dict[str, Any] | None, ctype: str) -> str | None:
    cond = condition(obj, ctype)
    return None if cond is None else str(cond.get("status"))


def container_ready(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


@dataclass
class CanaryWatch:
    """Samples, every 0.2 s, the pods of one revision, the gate's record and the replicas
    the load generator would pick; remembers when each first changed."""

    cluster: Cluster
    kube: Kube
    ns: str
    name: str
    revision: str
    started: float = field(default_factory=time.monotonic)
    first: dict[str, float] = field(default_factory=dict)
    #: (pod, Ready, ContainersReady, gate condition, listed) seen while no gate had passed
    before_pass: list[tuple[str, str | None, str | None, str | None, bool]] = field(
        default_factory=list
    )
    stop: threading.Event = field(default_factory=threading.Event)

    def note(self, what: str) -> None:
        self.first.setdefault(what, time.monotonic() - self.started)

    def sample(self) -> None:
        # Listing and pods first, the record after: the operator records the verdict
        # before it sets any pod's condition, so a pod admitted here has its record below.
        listed = {t.name for t in discover_targets(self.cluster.layout.scrape_targets,
                                                   self.ns, self.name)}  # fmt: skip
        pods = pods_of(self.kube, self.ns, self.name)
        quality = revisions(self.kube, self.ns, self.name).get("quality") or {}
        if quality.get("revision") == self.revision:
            self.note("gate passed" if quality.get("passed") else "gate failed")
        passed = "gate passed" in self.first
        for pod in pods:
            if pod["metadata"]["labels"].get("kvpilot.io/revision") != self.revision:
                continue
            name = pod["metadata"]["name"]
            ready = _status(pod, "Ready")
            if container_ready(pod):
                self.note("container ready")
            if ready == "True":
                self.note("pod Ready")
            if name in listed:
                self.note("listed")
            if not passed:
                self.before_pass.append((name, ready, _status(pod, "ContainersReady"),
                                         _status(pod, GATE), name in listed))  # fmt: skip

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(AssertionError):  # a kubectl call racing a deletion
                self.sample()
            time.sleep(0.2)


@contextlib.contextmanager
def watching(cluster: Cluster, kube: Kube, ns: str, name: str, revision: str) -> Any:
    watch = CanaryWatch(cluster, kube, ns, name, revision)
    thread = threading.Thread(target=watch.run)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(30)


def canary_of(kube: Kube, ns: str, name: str, old: str) -> str:
    revs = wait_for(
        lambda: revisions(kube, ns, name),
        lambda r: r.get("canary") not in (None, old),
        timeout=60,
        what="the new revision named as canary",
    )
    return str(revs["canary"])


def test_gated_canary_takes_traffic_only_after_its_gate_passes(
    kube: Kube, served_namespace: str, cluster: Cluster
) -> None:
    ns, name = served_namespace, "gated"
    first = start_stable(cluster, kube, ns, name, 1)
    stable_pod = pods_of(kube, ns, name)[0]
    assert not stable_pod["spec"].get("readinessGates"), "the first revision has no gate"

    # 1. No traffic: two fresh simulator replicas agree, the gate passes.
    apply(kube, ns, release(2))
    second = canary_of(kube, ns, name, first)
    with watching(cluster, kube, ns, name, second) as watch:
        wait_for(
            lambda: revisions(kube, ns, name),
            lambda r: r.get("stable") == second and not r.get("canary"),
            timeout=120,
            what="the gated canary promoted",
        )
        wait_for(lambda: watch.first, lambda f: "listed" in f, timeout=30,
                 what="the promoted replica listed for clients")  # fmt: skip
    got = watch.first
    assert got["container ready"] <= got["gate passed"] <= got["pod Ready"] <= got["listed"], got
    held = [s for s in watch.before_pass if s[2] == "True"]
    assert held, "the canary's container was ready before the gate passed"
    assert all(ready != "True" and not listed for _, ready, _, _, listed in watch.before_pass)
    assert all(gate != "True" for *_, gate, _ in watch.before_pass)
    pod = next(p for p in pods_of(kube, ns, name)
               if p["metadata"]["labels"]["kvpilot.io/revision"] == second)  # fmt: skip
    assert pod["spec"]["readinessGates"] == [{"conditionType": GATE}]
    assert condition(pod, GATE)["reason"] == "QualityGatePassed"  # type: ignore[index]
    gate_s = got["gate passed"] - got["container ready"]
    print(
        f"\ngate pass: container ready -> gate passed {gate_s:.1f}s"
        f", -> pod Ready {got['pod Ready'] - got['gate passed']:.1f}s"
        f", -> listed for clients {got['listed'] - got['gate passed']:.1f}s"
    )

    # 2. Under load the stable replica's answers have moved on: the gate fails, and the
    # canary is rolled back without having served a single request.
    with under_load(cluster, kube, ns, name) as (_, result):
        wait_for(lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
                 lambda t: len(t) == 1, timeout=30, what="the stable replica listed")  # fmt: skip
        apply(kube, ns, release(3))
        third = canary_of(kube, ns, name, second)
        with watching(cluster, kube, ns, name, third) as watch:
            wait_for(
                lambda: revisions(kube, ns, name),
                lambda r: (r.get("failed") or {}).get("revision") == third,
                timeout=120,
                what="the gated canary rolled back",
            )
            wait_for(
                lambda: [p for p in pods_of(kube, ns, name)
                         if p["metadata"]["labels"]["kvpilot.io/revision"] == third],
                lambda pods: not pods,
                timeout=60,
                what="the canary's pods gone",
            )  # fmt: skip
    records, summary = result["run"]
    assert summary.ok > 0 and summary.errors == 0
    canary_pods = {s[0] for s in watch.before_pass}
    assert canary_pods, "the canary's pod was seen"
    assert any(s[2] == "True" for s in watch.before_pass), "its container got ready"
    served = {r.replica for r in records}
    assert not served & canary_pods, served
    assert "pod Ready" not in watch.first and "listed" not in watch.first
    revs = revisions(kube, ns, name)
    assert revs["stable"] == second and revs["failed"]["reason"] == "QualityGateFailed"
    assert any(r == "QualityGateFailed" for _, r, _ in events(kube, ns, name))
    got = watch.first
    gate_s = got["gate failed"] - got["container ready"]
    print(
        f"gate fail: container ready -> gate failed {gate_s:.1f}s"
        f"; {summary.ok} requests, none to the canary"
    )
