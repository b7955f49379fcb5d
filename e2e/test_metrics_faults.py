"""The autoscaler on bad metrics, live: the operator reads the dev cluster's Prometheus
through a proxy (e2e/promproxy.py) that makes its answers slow, NaN, negative, stale or
missing, or refuses them. Each time the autoscaler holds (fail-static): ScalingActive=False
with a reason, and an idle service is never scaled down on the bad data. Once the answers
are good again, the same idle service scales down, which shows that the holds mattered.
(Prometheus stopped outright is in test_autoscaling.py.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, service_deployment, wait_for
from e2e.operator import OperatorProcess
from e2e.promproxy import PromProxy
from e2e.test_podrunner import apply, isvc_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("pod_runner")]

SCALE_DOWN_WINDOW_S = 10
#: mode -> the ScalingActive reasons it may give
BAD = {
    "nan": {"MetricsInvalid"},
    "negative": {"MetricsInvalid"},
    "stale": {"MetricsStale", "NoMetrics"},
    "missing": {"NoMetrics"},
    "slow": {"MetricsUnavailable"},
    "down": {"MetricsUnavailable"},
}


def manifest(name: str) -> dict[str, Any]:
    obj = isvc_manifest(name, replicas=2, gpu_types=("H100-80GB",))
    obj["spec"]["scaling"] = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "stableWindowSeconds": 10,
        "panicWindowSeconds": 5,
        "maxMetricAgeSeconds": 10,
        "scaleDown": {
            "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
            "maxReplicasPerStep": 1,
            "periodSeconds": 2,
        },
    }
    return obj


def test_bad_metrics_hold_replicas(
    kube: Kube, served_namespace: str, cluster: Cluster, operator: OperatorProcess
) -> None:
    ns, name = served_namespace, "held"
    operator.stop()  # one Lease: this test's operator reads Prometheus through the proxy
    log_file = cluster.layout.logs / "operator-metrics-faults.log"
    log_file.write_text("")
    with PromProxy(cluster.prometheus_url, delay=8.0) as proxy:
        proxy.mode = "nan"  # bad from the first tick: the idle service must never shrink
        op = OperatorProcess(
            cluster.kubeconfig, log_file, prometheus_url=proxy.url, autoscale_interval=1.0,
            metrics_step=1.0,
        )  # fmt: skip
        try:
            op.start()
            apply(kube, ns, manifest(name))

            def state() -> tuple[int, dict[str, Any]]:
                obj = kube.get("inferenceservice", name, ns) or {}
                return int(obj.get("spec", {}).get("replicas") or 0), condition(
                    obj, "ScalingActive"
                ) or {}

            wait_for(
                lambda: (service_deployment(kube, ns, name) or {}).get("status", {}),
                lambda s: s.get("readyReplicas") == 2,
                timeout=120,
                what="two replicas ready",
            )
            for mode, reasons in BAD.items():
                proxy.mode = mode
                _, cond = wait_for(
                    state,
                    lambda s, r=reasons: s[1].get("status") == "False" and s[1].get("reason") in r,  # type: ignore[misc]
                    timeout=60,
                    what=f"ScalingActive=False ({'/'.join(reasons)}) on {mode} metrics",
                )
                assert cond["message"], cond
                # hold through a whole scale-down window (and more) of bad data
                end = time.monotonic() + SCALE_DOWN_WINDOW_S + 4
                while time.monotonic() < end:
                    replicas, cond = state()
                    assert replicas == 2, f"scaled to {replicas} on {mode} metrics: {cond}"
                    assert cond.get("status") == "False", f"{mode}: {cond}"
                    time.sleep(0.5)
            assert proxy.counts["slow"] > 0 and proxy.counts["down"] > 0

            # Good answers again: the idle service scales down after its window.
            proxy.mode = "pass"
            wait_for(
                state,
                lambda s: s[1].get("status") == "True",
                timeout=60,
                what="ScalingActive=True on valid metrics",
            )
            wait_for(state, lambda s: s[0] == 1, timeout=90, what="scaled down to 1 when idle")
        finally:
            op.stop()
            operator.start()
    warnings = kube.json(
        "get", "events", "-n", ns, "--field-selector", "type=Warning,involvedObject.name=" + name
    )["items"]
    seen = {e["reason"] for e in warnings}
    assert {"MetricsInvalid", "MetricsUnavailable"} <= seen, seen
