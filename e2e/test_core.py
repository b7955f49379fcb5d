"""The operator core on the real control plane: one acting replica, deletion that never
waits for the operator, no writes when settled, and never adopting what is not ours."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import GC_TIMEOUT, Kube, condition, service_deployment, wait_for
from e2e.operator import OperatorProcess
from e2e.test_operator import apply, example, isvc, wait_ready

ROOT = Path(__file__).resolve().parents[1]
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY", "CREATE", "UPDATE")
WATCHED = ("inferenceservices", "deployments", "services", "poddisruptionbudgets", "events")
_SAMPLE = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def api_writes(kube: Kube) -> Counter[tuple[str, str, str]]:
    """The API server's own count of write requests, by (resource, subresource, verb)."""
    out: Counter[tuple[str, str, str]] = Counter()
    for line in kube("get", "--raw", "/metrics").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in WATCHED:
            key = (labels["resource"], labels.get("subresource", ""), labels["verb"])
            out[key] += int(float(m.group(2)))
    return out


def small(name: str, replicas: int = 1, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
            "placement": {"gpuTypes": ["L4-24GB"]},
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas, **scaling},
        },
    }


def no_terminating_namespaces(kube: Kube) -> None:
    """Other tests' namespaces being deleted write Deployments and Events; wait them out."""
    wait_for(
        lambda: [
            n["metadata"]["name"]
            for n in kube.json("get", "namespaces")["items"]
            if n["status"].get("phase") == "Terminating"
        ],
        lambda left: not left,
        timeout=GC_TIMEOUT,
        what="no namespace terminating",
    )


@pytest.mark.usefixtures("operator")
def test_settled_operator_makes_no_writes(kube: Kube, namespace: str) -> None:
    """With the examples Ready and nothing changing, the API server counts zero writes to
    InferenceServices, Deployments, Services, PDBs and Events over a minute and a half —
    through many repair passes (every 5 s) and autoscaler ticks (every 2 s)."""
    for name in ("llama-3.1-8b.yaml", "qwen2.5-7b-awq.yaml", "llama-3.1-70b-tp4.yaml"):
        apply(kube, namespace, example(name))
    autoscaled = small("autoscaled", 1)
    autoscaled["spec"]["scaling"]["maxReplicas"] = 2
    apply(kube, namespace, autoscaled)
    for name in ("llama-3-1-8b", "qwen2-5-7b-awq", "llama-3-1-70b", "autoscaled"):
        wait_ready(kube, namespace, name, 1, timeout=120)
    no_terminating_namespaces(kube)

    # Settled: a quiet spell of 10 s with no write at all.
    def quiet() -> bool:
        before = api_writes(kube)
        time.sleep(10)
        return api_writes(kube) == before

    wait_for(quiet, lambda q: q, timeout=120, what="a quiet 10 s", interval=0)
    before = api_writes(kube)
    time.sleep(90)
    diff = api_writes(kube) - before
    assert sum(diff.values()) == 0, f"writes on a settled cluster: {dict(diff)}"


@pytest.mark.usefixtures("operator")
def test_existing_object_of_the_same_name_is_never_adopted(kube: Kube, namespace: str) -> None:
    """A Service that happens to carry the InferenceService's name is left exactly as it
    was; the InferenceService says NameConflict and nothing else is created."""
    kube(
        "create", "service", "clusterip", "clash", "--tcp=80:8080", "-n", namespace,
    )  # fmt: skip
    theirs = kube.get("service", "clash", namespace)
    assert theirs is not None
    apply(kube, namespace, small("clash"))
    obj = wait_for(
        lambda: isvc(kube, namespace, "clash"),
        lambda o: (condition(o, "Ready") or {}).get("reason") == "NameConflict",
        timeout=60,
        what="Ready=False NameConflict",
    )
    ready = condition(obj, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert f"Service {namespace}/clash" in ready["message"]
    after = kube.get("service", "clash", namespace)
    assert after is not None
    assert after["metadata"].get("ownerReferences") is None
    assert after["spec"]["selector"] == theirs["spec"]["selector"]
    assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert service_deployment(kube, namespace, "clash") is None
    assert kube.get("poddisruptionbudget", "clash", namespace) is None
    events = kube.json("get", "events", "-n", namespace, "--field-selector", "reason=NameConflict")
    assert len(events["items"]) == 1

    # Once the other Service is gone, the InferenceService is served as usual.
    kube("delete", "service", "clash", "-n", namespace)
    wait_ready(kube, namespace, "clash", 1, timeout=90)


@pytest.mark.usefixtures("operator")
def test_a_taken_revision_deployment_name_is_never_adopted(kube: Kube, namespace: str) -> None:
    """Each revision gets a Deployment `<service>-<revision>`; one of that name that kvpilot
    does not own is left alone and named in Ready=False NameConflict."""
    # The revision hashes the pod-relevant spec only: a twin service tells its name.
    apply(kube, namespace, small("twin"))
    wait_ready(kube, namespace, "twin", 1)
    twin = service_deployment(kube, namespace, "twin")
    assert twin is not None
    revision = twin["spec"]["template"]["metadata"]["labels"]["kvpilot.io/revision"]
    taken = f"taken-{revision}"
    kube("create", "deployment", taken, "--image=busybox", "--replicas=0", "-n", namespace)
    theirs = kube.get("deployment", taken, namespace)
    assert theirs is not None
    apply(kube, namespace, small("taken"))
    obj = wait_for(
        lambda: isvc(kube, namespace, "taken"),
        lambda o: (condition(o, "Ready") or {}).get("reason") == "NameConflict",
        timeout=60,
        what="Ready=False NameConflict",
    )
    ready = condition(obj, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert f"Deployment {namespace}/{taken}" in ready["message"]
    after = kube.get("deployment", taken, namespace)
    assert after is not None and after["metadata"].get("ownerReferences") is None
    assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert kube.get("service", "taken", namespace) is None

    # Once it is gone, the InferenceService is served as usual.
    kube("delete", "deployment", taken, "-n", namespace)
    wait_ready(kube, namespace, "taken", 1, timeout=90)


def test_deletion_never_waits_for_the_operator(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """No finalizer: with the operator stopped, deleting an InferenceService completes and
    garbage collection removes its Deployment, Service and PDB."""
    apply(kube, namespace, small("gone"))
    obj = wait_ready(kube, namespace, "gone", 1)
    assert not obj["metadata"].get("finalizers")
    operator.stop()
    try:
        kube("delete", "inferenceservice", "gone", "-n", namespace, "--timeout=60s")
        assert isvc(kube, namespace, "gone") is None
        for kind in ("deployment", "service", "poddisruptionbudget"):
            wait_for(
                lambda k=kind: kube.get(k, "gone", namespace),  # type: ignore[misc]
                lambda o: o is None,
                timeout=GC_TIMEOUT,
                what=f"{kind} gone garbage-collected",
            )
    finally:
        operator.start()


def test_failover_to_the_standby_replica(
    kube: Kube, namespace: str, operator: OperatorProcess, cluster: Cluster
) -> None:
    """Two replicas: one acts (one Event per decision), the other stands by; SIGKILL of
    the active one hands over within the Lease duration, and the standby carries on."""
    operator.stop()  # the session's operator holds the same Lease; make room for two
    logs = cluster.layout.logs
    first = OperatorProcess(
        cluster.kubeconfig, logs / "operator-a.log", repair_interval=5.0,
        prometheus_url=cluster.prometheus_url,
    )  # fmt: skip
    second = OperatorProcess(
        cluster.kubeconfig, logs / "operator-b.log", repair_interval=5.0,
        prometheus_url=cluster.prometheus_url, ready_marker="Standing by",
    )  # fmt: skip
    for p in (first, second):
        p.log_file.write_text("")
    try:
        first.start()
        second.start()
        ha = small("ha")
        ha["spec"]["scaling"]["maxReplicas"] = 2
        apply(kube, namespace, ha)
        wait_ready(kube, namespace, "ha", 1)
        created = kube.json(
            "get", "events", "-n", namespace, "--field-selector", "reason=CreatedDeployment"
        )["items"]
        assert len(created) == 1, "exactly one replica acts"
        assert "Became leader" not in second.log()

        killed = time.monotonic()
        first.kill()
        wait_for(second.log, lambda t: "Became leader" in t, timeout=60, what="standby takes over")
        took_over = time.monotonic() - killed
        kube("scale", "inferenceservice/ha", "--replicas=2", "-n", namespace)
        wait_ready(kube, namespace, "ha", 2)
        acted = time.monotonic() - killed
        (logs / "failover-e2e.json").write_text(
            f'{{"takeover_seconds": {took_over:.1f}, "first_action_seconds": {acted:.1f}}}\n'
        )
        assert took_over < 15 + 2 + 10  # lease duration + renew period + a busy machine
    finally:
        first.stop()
        second.stop()
        operator.start()
