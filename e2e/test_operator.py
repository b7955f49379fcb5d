"""The operator on the real control plane, running as ``kvpilot run``."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster
from e2e.helpers import GC_TIMEOUT, Kube, condition, condition_true, service_deployment, wait_for
from e2e.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("operator")


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return doc


def apply(kube: Kube, namespace: str, obj: dict[str, Any]) -> None:
    kube("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(obj))


def isvc(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get("inferenceservice", name, namespace)


def wait_ready(
    kube: Kube, namespace: str, name: str, replicas: int, timeout: float = 90
) -> dict[str, Any]:
    obj = wait_for(
        lambda: isvc(kube, namespace, name),
        lambda o: (
            condition_true(o, "Ready")
            and o is not None
            and o.get("status", {}).get("readyReplicas") == replicas
            and condition(o, "Progressing") is not None
            and condition(
                o,
                "Progressing",
            ).get("status")
            == "False"
        ),  # type: ignore[union-attr]
        timeout=timeout,
        what=f"{namespace}/{name} Ready with {replicas} replica(s) and its rollout complete",
    )
    assert obj is not None
    return obj


def pods_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.json(
        "get", "pods", "-n", namespace, "-l", f"kvpilot.io/inference-service={name}"
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_example_becomes_ready_with_expected_objects(kube: Kube, namespace: str) -> None:
    obj = example("llama-3.1-70b-tp4.yaml")
    name = obj["metadata"]["name"]
    apply(kube, namespace, obj)
    # What a user would run.
    wait = subprocess.run(
        [
            str(kube.bin_dir / "kubectl"),
            f"--kubeconfig={kube.kubeconfig}",
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            "--timeout=90s",
            f"inferenceservice/{name}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wait.returncode == 0, wait.stderr
    status = wait_ready(kube, namespace, name, 1)["status"]
    assert status["placement"]["gpuType"] == "H100-80GB"
    assert status["placement"]["tensorParallel"] == 4
    assert status["selector"] == f"kvpilot.io/inference-service={name}"

    dep = service_deployment(kube, namespace, name)
    assert dep is not None
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--model") + 1] == "meta-llama/Llama-3.1-70B-Instruct"
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--max-model-len") + 1] == "16384"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert kube.get("service", name, namespace) is not None
    assert kube.get("poddisruptionbudget", name, namespace) is not None

    nodes = {n["metadata"]["name"]: n for n in kube.json("get", "nodes")["items"]}
    for pod in pods_of(kube, namespace, name):
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"

    printed = kube("get", "inferenceservice", name, "-n", namespace)
    assert "H100-80GB" in printed and "True" in printed


def test_pod_irrelevant_edit_keeps_pods_and_model_edit_rolls(kube: Kube, namespace: str) -> None:
    obj = example("llama-3.1-8b.yaml")
    name = obj["metadata"]["name"]
    apply(kube, namespace, obj)
    before = wait_ready(kube, namespace, name, 1)
    uids = {p["metadata"]["uid"] for p in pods_of(kube, namespace, name)}
    rev = before["status"]["revision"]

    edited = copy.deepcopy(obj)
    edited["spec"]["scaling"]["maxReplicas"] = 6
    apply(kube, namespace, edited)
    after = wait_for(
        lambda: isvc(kube, namespace, name),
        lambda o: (
            o is not None and o["status"].get("observedGeneration") == o["metadata"]["generation"]
        ),
        timeout=60,
        what="the scaling edit to be observed",
    )
    assert after["status"]["revision"] == rev
    assert {p["metadata"]["uid"] for p in pods_of(kube, namespace, name)} == uids

    edited["spec"]["model"]["maxModelLen"] = 4096
    apply(kube, namespace, edited)
    rolled = wait_for(
        lambda: isvc(kube, namespace, name),
        lambda o: o is not None and o["status"].get("revision") != rev,
        timeout=60,
        what="a new revision after the model edit",
    )
    new_rev = rolled["status"]["revision"]
    wait_for(
        lambda: pods_of(kube, namespace, name),
        lambda pods: (
            len(pods) == 1
            and all(p["metadata"]["labels"]["kvpilot.io/revision"] == new_rev for p in pods)
            and all(p["metadata"]["uid"] not in uids for p in pods)
        ),
        timeout=90,
        what="pods of the new revision to replace the old ones",
    )
    dep = service_deployment(kube, namespace, name)
    assert dep is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-model-len") + 1] == "4096"
    wait_ready(kube, namespace, name, 1)


def test_drift_is_repaired(kube: Kube, namespace: str) -> None:
    obj = example("llama-3.1-8b.yaml")
    name = obj["metadata"]["name"]
    apply(kube, namespace, obj)
    wait_ready(kube, namespace, name, 1)
    dep = service_deployment(kube, namespace, name)
    assert dep is not None
    good_args = dep["spec"]["template"]["spec"]["containers"][0]["args"]

    patch = [
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/args",
            "value": ["--model", "other"],
        }
    ]
    kube("patch", "deployment", name, "-n", namespace, "--type=json", "-p", json.dumps(patch))
    wait_for(
        lambda: kube.get("deployment", name, namespace),
        lambda d: (
            d is not None and d["spec"]["template"]["spec"]["containers"][0]["args"] == good_args
        ),
        timeout=30,
        what="the hand-edited args to be restored",
    )

    kube("delete", "deployment", name, "-n", namespace, "--wait=true")
    wait_for(
        lambda: kube.get("deployment", name, namespace),
        lambda d: d is not None and d.get("status", {}).get("readyReplicas") == 1,
        timeout=60,
        what="the deleted Deployment to be recreated and ready",
    )


def test_kubectl_scale(kube: Kube, namespace: str) -> None:
    obj = example("llama-3.1-8b.yaml")
    name = obj["metadata"]["name"]
    obj["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 3}
    obj["spec"]["replicas"] = 1  # parked below the minimum by hand, as `kubectl scale` may
    obj["spec"]["placement"]["gpuTypes"] = ["H100-80GB"]
    apply(kube, namespace, obj)
    wait_ready(kube, namespace, name, 1)
    kube("scale", "-n", namespace, f"inferenceservice/{name}", "--replicas=3")
    status = wait_ready(kube, namespace, name, 3)["status"]
    assert status["replicas"] == 3
    assert status["desiredReplicas"] == 3
    scale = json.loads(
        kube(
            "get",
            "--raw",
            f"/apis/kvpilot.io/v1alpha1/namespaces/{namespace}/inferenceservices/{name}/scale",
        )
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == f"kvpilot.io/inference-service={name}"
    # Never above maxReplicas, even with autoscaling off: the API server refuses it.
    refused = kube.run(
        "scale", "-n", namespace, f"inferenceservice/{name}", "--replicas=1000", check=False
    )
    assert refused.returncode != 0 and "maxReplicas" in refused.stderr


def test_unsatisfiable_spec_reports_and_creates_nothing(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    obj = example("llama-3.1-8b.yaml")
    obj["metadata"]["name"] = "too-wide"
    obj["spec"]["parallelism"] = {"tensor": 8}
    obj["spec"]["placement"]["gpuTypes"] = ["L4-24GB"]  # L4 nodes have one GPU each
    apply(kube, namespace, obj)
    got = wait_for(
        lambda: isvc(kube, namespace, "too-wide"),
        lambda o: condition(o, "Ready") is not None and condition(o, "Ready")["status"] == "False",  # type: ignore[index]
        timeout=30,
        what="Ready=False on an unsatisfiable spec",
    )
    ready = condition(got, "Placed")
    assert ready is not None and ready["reason"] == "NoGPUTypeFits", ready
    assert "L4" in ready["message"]
    assert kube.get("deployment", "too-wide", namespace) is None
    assert kube.get("service", "too-wide", namespace) is None
    events = kube.json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=too-wide"
    )
    assert any(e["reason"] == "NoGPUTypeFits" for e in events["items"])
    assert "Traceback" not in operator.log()


def test_delete_removes_owned_objects(kube: Kube, namespace: str, cluster: Cluster) -> None:
    obj = example("qwen2.5-7b-awq.yaml")
    name = obj["metadata"]["name"]
    apply(kube, namespace, obj)
    wait_ready(kube, namespace, name, obj["spec"].get("scaling", {}).get("minReplicas", 1))
    kube("delete", "inferenceservice", name, "-n", namespace, "--wait=true", "--timeout=60s")
    for kind in ("deployment", "service", "poddisruptionbudget"):
        wait_for(
            lambda k=kind: kube.get(k, name, namespace),  # type: ignore[misc]
            lambda o: o is None,
            timeout=GC_TIMEOUT,
            what=f"{kind}/{name} to be garbage-collected",
        )
    wait_for(
        lambda: pods_of(kube, namespace, name),
        lambda p: not p,
        timeout=GC_TIMEOUT,
        what="pods to go",
    )
