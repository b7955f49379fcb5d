"""The local control plane behaves like a real GPU cluster."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from typing import Any

import yaml

from e2e import devcluster
from e2e.conftest import Cluster
from e2e.helpers import Kube, condition, wait_for


def _inventory_nodes() -> dict[str, dict[str, Any]]:
    inv = devcluster.load_inventory(devcluster.repo_root() / "e2e" / "clusters" / "default.yaml")
    return {n["metadata"]["name"]: n for n in devcluster.node_manifests(inv)}


def test_nodes_carry_gpus_and_gfd_labels(kube: Kube) -> None:
    expected = _inventory_nodes()
    nodes = {n["metadata"]["name"]: n for n in kube.json("get", "nodes")["items"]}
    assert set(expected) <= set(nodes)
    for name, want in expected.items():
        got = nodes[name]
        labels = got["metadata"]["labels"]
        for key in ("nvidia.com/gpu.product", "nvidia.com/gpu.memory", "nvidia.com/gpu.count"):
            assert labels[key] == want["metadata"]["labels"][key]
        assert (
            got["status"]["allocatable"]["nvidia.com/gpu"]
            == want["status"]["allocatable"]["nvidia.com/gpu"]
        )
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in got["spec"][
            "taints"
        ]
        assert condition(got, "Ready")["status"] == "True"  # type: ignore[index]
    h100 = [n for n in expected if n.startswith("h100")]
    assert len(h100) == 2 and nodes[h100[0]]["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def _gpu_deployment(name: str, gpus: int, replicas: int = 1) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "main",
                                "image": "registry.invalid/none:0",
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            }
                        ],
                    },
                },
            },
        }
    )


def test_gpu_deployment_is_scheduled_and_ready(kube: Kube, namespace: str) -> None:
    kube("apply", "-n", namespace, "-f", "-", input_text=_gpu_deployment("tp4", 4, replicas=2))
    dep = wait_for(
        lambda: kube.get("deployment", "tp4", namespace),
        lambda d: d is not None and d.get("status", {}).get("readyReplicas") == 2,
        timeout=90,
        what="2 ready replicas of a 4-GPU deployment",
    )
    assert dep is not None
    pods = kube.json("get", "pods", "-n", namespace, "-l", "app=tp4")["items"]
    nodes = {n["metadata"]["name"]: n for n in kube.json("get", "nodes")["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 4
        assert pod["status"]["phase"] == "Running"


def test_pod_needing_more_gpus_than_any_node_stays_pending(kube: Kube, namespace: str) -> None:
    kube("apply", "-n", namespace, "-f", "-", input_text=_gpu_deployment("tp16", 16))

    def scheduled_condition() -> dict[str, Any] | None:
        pods = kube.json("get", "pods", "-n", namespace, "-l", "app=tp16")["items"]
        return condition(pods[0], "PodScheduled") if pods else None

    cond = wait_for(
        scheduled_condition,
        lambda c: c is not None and c.get("reason") == "Unschedulable",
        timeout=60,
        what="the scheduler to mark the 16-GPU pod Unschedulable",
    )
    assert cond is not None
    assert cond["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in cond["message"]


def test_namespace_deletion_completes(kube: Kube, cluster: Cluster) -> None:
    name = "ns-delete-check"
    kube.run("delete", "namespace", name, "--wait=true", "--timeout=60s", check=False)
    kube("create", "namespace", name)
    kube("create", "configmap", "x", "-n", name, "--from-literal=a=b")
    kube("apply", "-n", name, "-f", "-", input_text=_gpu_deployment("one", 1))
    wait_for(
        lambda: kube.get("deployment", "one", name),
        lambda d: d is not None and d.get("status", {}).get("readyReplicas") == 1,
        timeout=60,
        what="a ready 1-GPU deployment",
    )
    kube("delete", "namespace", name, "--wait=false")
    wait_for(
        lambda: kube.get("namespace", name),
        lambda ns: ns is None,
        timeout=90,
        what=f"namespace {name} to be deleted",
    )


def test_prometheus_answers_up(cluster: Cluster) -> None:
    url = cluster.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": "up"})

    def query() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result: dict[str, Any] = json.load(resp)
            return result

    body = wait_for(
        query,
        lambda b: b["status"] == "success" and len(b["data"]["result"]) > 0,
        timeout=30,
        what="Prometheus to return a sample of up",
    )
    jobs = {r["metric"]["job"] for r in body["data"]["result"]}
    assert "prometheus" in jobs


def test_helm_and_kubectl_versions(cluster: Cluster) -> None:
    helm = subprocess.run(
        [str(cluster.layout.bin / "helm"), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert helm.stdout.startswith(devcluster.HELM_VERSION)
    server = cluster.kube.json("version")["serverVersion"]
    assert server["gitVersion"] == devcluster.KUBE_VERSION


def test_status_reports_every_component_up(cluster: Cluster) -> None:
    st = devcluster.status(cluster.layout)
    assert set(st) == set(devcluster.COMPONENTS)
    assert all(s["healthy"] for s in st.values()), st
