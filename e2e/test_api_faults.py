"""The operator behind a fault-injecting proxy (e2e/faultproxy.py): a seeded share of its
API requests answered 409, 429 (with Retry-After) or 5xx, and its watch streams cut.
It keeps its Lease, honours Retry-After, and the services still converge."""

from __future__ import annotations

import json
import re

import pytest

from e2e.chaos import PLURAL, converged
from e2e.conftest import Cluster
from e2e.faultproxy import FaultProxy, Faults
from e2e.helpers import service_deployment, wait_for
from e2e.operator import OperatorProcess, install_crds
from e2e.test_core import small
from e2e.test_operator import apply

pytestmark = pytest.mark.slow

FAULTS = Faults(conflict=0.1, throttle=0.1, server_error=0.1, cut_watch=0.5, retry_after=1)


def service(name: str, replicas: int) -> dict[str, object]:
    obj = small(name, replicas)
    obj["spec"]["placement"] = {"gpuTypes": ["A100-80GB"]}
    obj["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 3}
    obj["spec"]["replicas"] = replicas
    return obj


def test_operator_converges_through_api_faults(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    install_crds(cluster.kube)
    kube = cluster.kube
    operator.stop()  # one Lease: this test's operator talks through the proxy
    proxy = FaultProxy(
        upstream=f"https://127.0.0.1:{_api_port(cluster)}", pki=cluster.layout.pki,
        faults=FAULTS, seed=16,
    )  # fmt: skip
    log_file = cluster.layout.logs / "operator-faults.log"
    log_file.write_text("")
    with proxy:
        kubeconfig = proxy.kubeconfig(cluster.kubeconfig, cluster.layout.root / "faulty.kubeconfig")
        op = OperatorProcess(kubeconfig, log_file, repair_interval=5.0)
        try:
            op.start()
            for name, replicas in (("a", 1), ("b", 2), ("c", 1)):
                apply(kube, namespace, service(name, replicas))
            wait_for(
                lambda: converged(kube, namespace, capacity=1000), lambda p: not p,
                timeout=180, what="convergence through the faults", interval=1.0,
            )  # fmt: skip
            kube("scale", f"{PLURAL}/a", "--replicas=3", "-n", namespace)
            kube(
                "patch", PLURAL, "b", "-n", namespace, "--type=merge",
                "-p", '{"spec": {"model": {"maxModelLen": 8192}}}',
            )  # fmt: skip
            kube("delete", PLURAL, "c", "-n", namespace, "--wait=false")
            problems = wait_for(
                lambda: converged(kube, namespace, capacity=1000), lambda p: not p,
                timeout=180, what="convergence after changes through the faults", interval=1.0,
            )  # fmt: skip
            assert problems == []
            dep = service_deployment(kube, namespace, "a")
            assert dep is not None and dep["spec"]["replicas"] == 3
            assert op.proc is not None and op.proc.poll() is None, "the operator exited"
        finally:
            op.stop()
            operator.start()
    counts = dict(proxy.counts)
    for fault in ("injected_409", "injected_429", "injected_cut_watch"):
        assert counts.get(fault, 0) > 0, counts
    assert sum(counts.get(f"injected_{c}", 0) for c in ("500", "503", "504")) > 0, counts
    text = log_file.read_text()
    # Retry-After is honoured: the retry waits exactly what the server asked for.
    assert re.search(r"Retrying method=\S+ path=\S+ status=429 after=1\.0s", text), counts
    assert "Lost the lease" not in text and "Could not renew" not in text
    (cluster.layout.logs / "api-faults-e2e.json").write_text(json.dumps(counts, indent=2))


def _api_port(cluster: Cluster) -> int:
    from e2e.devcluster import PORTS

    return PORTS["kube-apiserver"]
