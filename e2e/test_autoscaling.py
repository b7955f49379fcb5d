"""The autoscaler end to end: load-generator traffic on pod-runner replicas, scraped by the
dev cluster's Prometheus, read by the operator, applied through the scale subresource.

One service goes through a whole day in a few minutes: a load ramp builds a queue and it
scales up (replicas that are still loading count as capacity, so it does not pile on);
the operator restarts in the middle and carries on from the state in status; Prometheus
stops, the autoscaler holds replicas and says why, and the load ends while it is blind,
so nothing scales down on missing data; Prometheus comes back and the service scales down
after the stabilization window. The timings are written to
``.dev-cluster/logs/autoscaling-e2e.json``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from e2e import devcluster
from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, service_deployment, wait_for
from e2e.operator import OperatorProcess
from e2e.test_podrunner import apply, isvc_manifest, prometheus
from kvpilot_runtime.loadgen import (
    LoadConfig,
    RequestRecord,
    Segment,
    Summary,
    discover_targets,
    fixed_lengths,
    run,
    schedule_arrivals,
)

pytestmark = pytest.mark.usefixtures("pod_runner")

#: Seconds a new replica loads its model before /health answers (a cold start).
LOAD_DELAY_S = 6.0
#: Llama-3.1-8B on an L4 with 2 sequence slots: about 0.9 requests/s of 256+32 tokens per
#: replica. The ramp passes one replica's capacity within seconds; the plateau is more than
#: three replicas serve, so the queue holds the service at maxReplicas until the load ends.
PROMPT, OUTPUT = 256, 32
RAMP = (Segment(20.0, 0.3, 3.0), Segment(600.0, 3.0, 3.0))
SCALE_DOWN_WINDOW_S = 15
SCALE_DOWN_PERIOD_S = 5
BURST_HOLD_S = 20

SCALING: dict[str, Any] = {
    "minReplicas": 1,
    "maxReplicas": 3,
    "targets": {"queueDepthPerReplica": 2, "kvCacheUtilization": 0.8},
    "stableWindowSeconds": 20,
    "panicWindowSeconds": 6,
    "tolerance": 0.1,
    "scaleUp": {"stabilizationWindowSeconds": 0, "maxReplicasPerStep": 1, "periodSeconds": 4},
    "scaleDown": {
        "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
        "maxReplicasPerStep": 1,
        "periodSeconds": SCALE_DOWN_PERIOD_S,
        # The plateau queues at maxReplicas (a burst): keep the hold after it short, so
        # that scale-down after the outage still follows the window.
        "burstHoldSeconds": BURST_HOLD_S,
    },
    "coldStartGraceSeconds": 30,
    "maxMetricAgeSeconds": 10,
}


def manifest(name: str) -> dict[str, Any]:
    obj = isvc_manifest(
        name,
        gpu_types=("L4-24GB",),
        env={"KVPILOT_SIM_LOAD_DELAY": str(LOAD_DELAY_S)},
        max_num_seqs=2,
    )
    obj["spec"]["scaling"] = SCALING
    return obj


@dataclass
class Watch:
    """What the test reads from the cluster, by name."""

    kube: Kube
    ns: str
    name: str
    timeline: list[tuple[float, str]] = field(default_factory=list)
    t0: float = field(default_factory=time.time)

    def isvc(self) -> dict[str, Any]:
        obj = self.kube.get("inferenceservice", self.name, self.ns)
        assert obj is not None, f"{self.ns}/{self.name} is gone"
        return obj

    def spec_replicas(self) -> int:
        return int(self.isvc()["spec"].get("replicas") or 0)

    def ready_replicas(self) -> int:
        dep = service_deployment(self.kube, self.ns, self.name) or {}
        return int((dep.get("status") or {}).get("readyReplicas") or 0)

    def scaling_active(self) -> dict[str, Any] | None:
        return condition(self.isvc(), "ScalingActive")

    def events(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kube.json(
            "get", "events", "-n", self.ns, "--field-selector",
            f"involvedObject.kind=InferenceService,involvedObject.name={self.name}",
        )["items"]  # fmt: skip
        return sorted(items, key=lambda e: e.get("eventTime") or e.get("firstTimestamp") or "")

    def mark(self, what: str) -> float:
        now = time.time()
        self.timeline.append((round(now - self.t0, 2), what))
        print(f"[{now - self.t0:7.1f}s] {what}", flush=True)
        return now

    def until(
        self, observe: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str
    ) -> Any:
        value = wait_for(observe, done, timeout=timeout, what=what, interval=0.25)
        self.mark(what)
        return value

    def when(
        self, observe: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str
    ) -> float:
        """Like ``until``; returns the wall-clock time it was seen."""
        self.until(observe, done, timeout, what)
        return self.t0 + self.timeline[-1][0]

    def holds(self, observe: Callable[[], Any], expected: Any, seconds: float, what: str) -> None:
        """``observe()`` stays ``expected`` for ``seconds`` (an invariant, checked throughout)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            value = observe()
            assert value == expected, f"{what}: saw {value!r}, expected {expected!r}"
            time.sleep(0.5)
        self.mark(f"{what} for {seconds:.0f}s")


class Load:
    """The load generator in a thread, stoppable."""

    def __init__(self, cluster: Cluster, ns: str, name: str) -> None:
        self.stop_event = threading.Event()
        self.result: dict[str, Any] = {}
        arrivals = schedule_arrivals(RAMP, fixed_lengths(PROMPT, OUTPUT), seed=11)

        def go() -> None:
            try:
                self.result["run"] = run(
                    arrivals,
                    lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
                    LoadConfig(balance="least-outstanding", drain_timeout=180, seed=11),
                    stop=self.stop_event.is_set,
                )
            except BaseException as exc:
                self.result["error"] = exc

        self.thread = threading.Thread(target=go, name="loadgen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 240) -> tuple[list[RequestRecord], Summary]:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the load generator did not drain in time"
        assert "error" not in self.result, self.result.get("error")
        out: tuple[list[RequestRecord], Summary] = self.result["run"]
        return out


def test_autoscaler_follows_load_through_restart_and_prometheus_outage(
    kube: Kube, served_namespace: str, cluster: Cluster, operator: OperatorProcess
) -> None:
    ns, name = served_namespace, "autoscaled"
    w = Watch(kube, ns, name)
    apply(kube, ns, manifest(name))
    w.until(w.ready_replicas, lambda n: n == 1, 90, "one replica Ready")
    selector = f'namespace="{ns}",inference_service="{name}"'
    w.until(
        lambda: prometheus(cluster, f"vllm:num_requests_waiting{{{selector}}}"),
        lambda res: len(res) == 1,
        60,
        "the replica's series in Prometheus",
    )
    w.until(
        w.scaling_active,
        lambda c: c is not None and c["status"] == "True" and c["reason"] == "ValidMetrics",
        60,
        "ScalingActive=True on valid metrics while idle",
    )
    assert w.spec_replicas() == 1

    # --- a load ramp: scale up as the queue builds ---------------------------------------
    load = Load(cluster, ns, name)
    t_load = w.mark("load ramp starts (0.3 -> 3 requests/s over 20 s, then 3/s)")
    load.start()
    try:
        t_queue = w.when(
            lambda: prometheus(cluster, f"max(vllm:num_requests_waiting{{{selector}}})"),
            lambda res: bool(res) and float(res[0]["value"][1]) > 0,
            60,
            "a queue in Prometheus",
        )
        t_up = w.when(w.spec_replicas, lambda n: n >= 2, 90, "scaled up to 2 (spec.replicas)")
        starting = w.ready_replicas()
        t_ready = w.when(w.ready_replicas, lambda n: n >= 2, 90, "the second replica Ready")
        assert starting == 1, "the new replica was Ready before its model loaded"
        w.until(w.spec_replicas, lambda n: n == 3, 120, "scaled up to maxReplicas (3)")
        t_ready3 = w.when(w.ready_replicas, lambda n: n == 3, 90, "three replicas Ready")
        ups = [e for e in w.events() if e["reason"] == "ScaledUp"]
        assert [e["message"].split(":")[0] for e in ups] == ["1 -> 2", "2 -> 3"], ups
        assert all("queue" in e["message"] for e in ups), ups

        # --- the operator restarts mid-run and carries on ---------------------------------
        before = w.isvc()["status"]["autoscaler"]
        operator.restart()
        t_restart = w.mark("operator restarted")
        after = w.until(
            lambda: w.isvc()["status"]["autoscaler"],
            lambda a: a["lastDecisionTime"] != before["lastDecisionTime"],
            60,
            "a decision by the restarted operator",
        )
        assert w.spec_replicas() == 3, after
        # It took over the persisted state: its own last change, not a manual override.
        assert after["state"].get("lastApplied") == before["state"].get("lastApplied") == 3
        assert "manualAt" not in after["state"], after

        # --- Prometheus stops: hold, say why, never scale down on missing data ------------
        assert devcluster.stop_component("prometheus", cluster.layout)
        w.mark("Prometheus stopped")
        blind = w.until(
            w.scaling_active,
            lambda c: c is not None and c["status"] == "False",
            60,
            "ScalingActive=False with Prometheus down",
        )
        assert blind["reason"] == "MetricsUnavailable", blind
        assert "Prometheus" in blind["message"], blind
        records, summary = load.stop()
        w.mark(f"load stopped and drained: {summary.ok} ok, {summary.errors} errors")
    finally:
        load.stop_event.set()
    w.holds(
        lambda: (w.spec_replicas(), (w.scaling_active() or {}).get("status")),
        (3, "False"),
        SCALE_DOWN_WINDOW_S + 2 * SCALE_DOWN_PERIOD_S,
        "replicas held at 3 while blind and idle",
    )
    warnings = [e for e in w.events() if e["type"] == "Warning"]
    assert any(e["reason"] == "MetricsUnavailable" for e in warnings), warnings

    # --- Prometheus is back: the idle service scales down after the window ---------------
    devcluster.up(layout=cluster.layout)
    t_back = w.mark("Prometheus restarted")
    w.until(
        w.scaling_active,
        lambda c: c is not None and c["status"] == "True",
        60,
        "ScalingActive=True again",
    )
    t_down = w.when(w.spec_replicas, lambda n: n < 3, 90, "first scale-down")
    w.until(w.spec_replicas, lambda n: n == 1, 90, "scaled down to minReplicas (1)")
    w.until(w.ready_replicas, lambda n: n == 1, 60, "one replica left")
    downs = [e for e in w.events() if e["reason"] == "ScaledDown"]
    assert [e["message"].split(":")[0] for e in downs] == ["3 -> 2", "2 -> 1"], downs
    assert t_down - t_back >= SCALE_DOWN_WINDOW_S - 2, "scaled down inside the stabilization window"

    assert summary.errors == 0, summary.error_kinds
    assert len(records) == summary.ok
    figures = {
        "load_start_to_queue_s": round(t_queue - t_load, 1),
        "load_start_to_scale_up_decision_s": round(t_up - t_load, 1),
        "queue_seen_to_scale_up_decision_s": round(t_up - t_queue, 1),
        "scale_up_decision_to_replica_ready_s": round(t_ready - t_up, 1),
        "load_start_to_second_replica_ready_s": round(t_ready - t_load, 1),
        "load_start_to_three_replicas_ready_s": round(t_ready3 - t_load, 1),
        "model_load_delay_s": LOAD_DELAY_S,
        "operator_restart_to_decision_s": round(
            w.timeline[[m for _, m in w.timeline].index("a decision by the restarted operator")][0]
            - (t_restart - w.t0),
            1,
        ),
        "prometheus_back_to_first_scale_down_s": round(t_down - t_back, 1),
        "requests": summary.ok,
        "ttft_p50_s": summary.ttft_p50_s,
        "ttft_p90_s": summary.ttft_p90_s,
        "timeline": w.timeline,
    }
    out = cluster.layout.logs / "autoscaling-e2e.json"
    Path(out).write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "timeline"}, indent=2))


def test_kubectl_scale_is_adopted_held_then_autoscaled(
    kube: Kube, served_namespace: str, operator: OperatorProcess
) -> None:
    """`kubectl scale` and the autoscaler share spec.replicas: a manual change is adopted and
    held for manualOverrideSeconds (not undone on the next tick), then autoscaling resumes
    from it; the idle service goes back to minReplicas after the scale-down window."""
    ns, name = served_namespace, "manual"
    w = Watch(kube, ns, name)
    obj = manifest(name)
    obj["spec"]["scaling"] = {**SCALING, "manualOverrideSeconds": 20}
    apply(kube, ns, obj)
    w.until(w.ready_replicas, lambda n: n == 1, 90, "one replica Ready")
    w.until(
        w.scaling_active,
        lambda c: c is not None and c["status"] == "True",
        60,
        "ScalingActive=True while idle",
    )
    kube("scale", "inferenceservice", name, "-n", ns, "--replicas=3")
    t_manual = w.mark("kubectl scale --replicas=3")
    w.until(w.ready_replicas, lambda n: n == 3, 90, "three replicas Ready")
    held = w.until(
        w.scaling_active,
        lambda c: c is not None and c["reason"] == "ManualOverride",
        30,
        "ScalingActive reason ManualOverride",
    )
    assert held["status"] == "True", held
    remaining = 20 - (time.time() - t_manual) - 2
    if remaining > 0:
        w.holds(w.spec_replicas, 3, remaining, "the manual 3 replicas held")
    t_down = w.when(w.spec_replicas, lambda n: n < 3, 90, "autoscaling resumed: scale-down")
    assert t_down - t_manual >= 20, "the manual change was undone inside manualOverrideSeconds"
    w.until(w.spec_replicas, lambda n: n == 1, 60, "back to minReplicas (1)")
    downs = [e["message"].split(":")[0] for e in w.events() if e["reason"] == "ScaledDown"]
    assert downs == ["3 -> 2", "2 -> 1"], downs


def test_a_policy_that_does_not_merge_holds_with_a_reason(
    kube: Kube, served_namespace: str, operator: OperatorProcess
) -> None:
    """spec.scaling passes admission (its own knobs agree) but clashes with the operator-wide
    policy: a panic window longer than the default stable window. Replicas are held and the
    condition says which knobs."""
    ns, name = served_namespace, "clash"
    w = Watch(kube, ns, name)
    obj = manifest(name)
    obj["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 3, "panicWindowSeconds": 200}
    apply(kube, ns, obj)
    cond = w.until(
        w.scaling_active,
        lambda c: c is not None and c["reason"] == "InvalidPolicy",
        60,
        "ScalingActive=False InvalidPolicy",
    )
    assert cond["status"] == "False"
    assert "panicWindowSeconds (200) exceeds stableWindowSeconds (180)" in cond["message"], cond
    assert w.spec_replicas() == 1
    assert any(e["reason"] == "InvalidPolicy" for e in w.events() if e["type"] == "Warning")
