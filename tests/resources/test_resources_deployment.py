"""The Deployment builder: whole objects for two services, then each part table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kvpilot.api import InferenceService, parse_spec
from kvpilot.api.security import FIELD_ENV, SECRET_NAME
from kvpilot.resources import RenderPlan, build_deployment, vllm_args
from kvpilot.resources.deployment import QUALITY_GATE_CONDITION, has_quality_gate

OWNER = {
    "apiVersion": "kvpilot.io/v1alpha1",
    "kind": "InferenceService",
    "name": "llama",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}
LABELS = {
    "app.kubernetes.io/managed-by": "kvpilot",
    "app.kubernetes.io/name": "llama",
    "kvpilot.io/inference-service": "llama",
}
HOME = {"name": "HOME", "value": "/tmp"}
PLAN = RenderPlan(
    tensor_parallel=1,
    gpus_per_replica=1,
    gpu_product="NVIDIA-L4",
    replicas=2,
    revision="rev0000001",
)


def isvc(spec: dict[str, Any], name: str = "llama") -> InferenceService:
    return InferenceService(name=name, namespace="serving", uid="uid-1", spec=parse_spec(spec))


def probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def deployment(
    *,
    replicas: int,
    revision: str,
    image: str,
    args: str,
    port: int,
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    startup_failures: int,
    product: str,
) -> dict[str, Any]:
    """The fixed skeleton of every kvpilot Deployment, with the parts that vary."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"llama-{revision}",
            "namespace": "serving",
            "labels": {**LABELS, "kvpilot.io/revision": revision},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {
                "matchLabels": {
                    "kvpilot.io/inference-service": "llama",
                    "kvpilot.io/revision": revision,
                }
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**LABELS, "kvpilot.io/revision": revision},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "vllm",
                            "image": image,
                            "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                            "args": args.split(),
                            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                            "env": env,
                            "resources": resources,
                            "volumeMounts": mounts,
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "privileged": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True,
                            },
                            "startupProbe": probe(10, 5, startup_failures),
                            "readinessProbe": probe(5, 5, 3),
                            "livenessProbe": probe(10, 10, 6),
                            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                        }
                    ],
                    "volumes": volumes,
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {
                            "key": "kvpilot.io/reserved",
                            "operator": "Equal",
                            "value": "serving.llama",
                            "effect": "NoSchedule",
                        },
                    ],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "nvidia.com/gpu.product",
                                                "operator": "In",
                                                "values": [product],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                },
            },
        },
    }


def test_minimal_hf_service() -> None:
    got = build_deployment(
        isvc({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}}), PLAN
    )
    assert got == deployment(
        replicas=2,
        revision="rev0000001",
        image="vllm/vllm-openai:v0.11.0",
        args=(
            "--model meta-llama/Llama-3.1-8B-Instruct --served-model-name llama "
            "--tensor-parallel-size 1 --dtype auto --kv-cache-dtype auto --max-model-len "
            "8192 --gpu-memory-utilization 0.9 --host 0.0.0.0 --port 8000 --download-dir "
            "/model-cache/hub"
        ),
        port=8000,
        env=[HOME, {"name": "HF_HOME", "value": "/model-cache"}],
        resources={"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
        mounts=[
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": "/model-cache"},
        ],
        volumes=[
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
            {"name": "model-cache", "emptyDir": {}},
        ],
        startup_failures=180,
        product="NVIDIA-L4",
    )


def test_pvc_service_with_everything_set() -> None:
    spec = {
        "model": {
            "source": "pvc://models/llama-3.1-70b",
            "servedName": "llama-70b",
            "quantization": "fp8",
            "dtype": "bfloat16",
            "kvCacheDtype": "fp8",
            "maxModelLen": 32768,
        },
        "runtime": {
            "image": "registry.example/vllm:v0.11.0-patched",
            "port": 8080,
            "extraArgs": ["--enforce-eager"],
            "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
            "gpuMemoryUtilization": 0.95,
            "maxNumSeqs": 128,
            "maxNumBatchedTokens": 16384,
            "enablePrefixCaching": False,
            "shmSize": "32Gi",
            "modelCache": {"claimName": "vllm-cache"},
            "cpu": 16,
            "memory": "256Gi",
            "startupTimeoutSeconds": 3601,
        },
    }
    plan = RenderPlan(
        tensor_parallel=4,
        gpus_per_replica=4,
        gpu_product="NVIDIA-H100-80GB-HBM3",
        replicas=1,
        revision="rev0000002",
    )
    assert build_deployment(isvc(spec), plan) == deployment(
        replicas=1,
        revision="rev0000002",
        image="registry.example/vllm:v0.11.0-patched",
        args=(
            "--model /model-source/llama-3.1-70b --served-model-name llama-70b "
            "--tensor-parallel-size 4 --quantization fp8 --dtype bfloat16 --kv-cache-dtype "
            "fp8 --max-model-len 32768 --gpu-memory-utilization 0.95 --max-num-seqs 128 "
            "--max-num-batched-tokens 16384 --no-enable-prefix-caching --host 0.0.0.0 "
            "--port 8080 --enforce-eager"
        ),
        port=8080,
        env=[
            HOME,
            {"name": "HF_HOME", "value": "/model-cache"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
        ],
        resources={
            "requests": {"nvidia.com/gpu": "4", "cpu": "16", "memory": "256Gi"},
            "limits": {"nvidia.com/gpu": "4"},
        },
        mounts=[
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": "/model-cache"},
            {"name": "model-source", "mountPath": "/model-source", "readOnly": True},
        ],
        volumes=[
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}},
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": "vllm-cache"}},
            {
                "name": "model-source",
                "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
            },
        ],
        startup_failures=361,
        product="NVIDIA-H100-80GB-HBM3",
    )


COMMON = "--dtype auto --kv-cache-dtype auto --max-model-len 8192 --gpu-memory-utilization 0.9"
NET = "--host 0.0.0.0 --port 8000"
HUB = "--download-dir /model-cache/hub"


@pytest.mark.parametrize(
    ("model", "runtime", "expected"),
    [
        pytest.param(
            {
                "source": "hf://Qwen/Qwen2.5-7B-Instruct-AWQ",
                "quantization": "awq",
                "revision": "main",
            },
            {},
            f"--model Qwen/Qwen2.5-7B-Instruct-AWQ --served-model-name llama "
            f"--tensor-parallel-size 1 --quantization awq {COMMON} {NET} {HUB} --revision main",
            id="hf-awq-revision",
        ),
        pytest.param(
            {"source": "hf://org/m-gptq", "quantization": "gptq", "dtype": "float16"},
            {"enablePrefixCaching": True},
            "--model org/m-gptq --served-model-name llama --tensor-parallel-size 1 "
            "--quantization gptq --dtype float16 --kv-cache-dtype auto --max-model-len 8192 "
            f"--gpu-memory-utilization 0.9 --enable-prefix-caching {NET} {HUB}",
            id="hf-gptq-prefix-caching",
        ),
        pytest.param(
            # int8 (W8A8) checkpoints carry their scheme; vLLM has no --quantization int8.
            {"source": "hf://org/m-w8a8", "quantization": "int8"},
            {"extraArgs": ["--max-num-seqs=8", "--seed", "1"]},
            f"--model org/m-w8a8 --served-model-name llama --tensor-parallel-size 1 {COMMON} "
            f"{NET} {HUB} --max-num-seqs=8 --seed 1",
            id="hf-int8-extra-args-last",
        ),
        pytest.param(
            {"source": "s3://models-bucket/llama/8b", "servedName": "llama-8b"},
            {},
            "--model s3://models-bucket/llama/8b --served-model-name llama-8b "
            f"--tensor-parallel-size 1 {COMMON} {NET} --load-format runai_streamer",
            id="s3-streamer",
        ),
        pytest.param(
            {"source": "pvc://models"},
            {},
            "--model /model-source --served-model-name llama --tensor-parallel-size 1 "
            f"{COMMON} {NET}",
            id="pvc-root",
        ),
    ],
)
def test_vllm_args(model: dict[str, Any], runtime: dict[str, Any], expected: str) -> None:
    assert vllm_args(isvc({"model": model, "runtime": runtime}), PLAN) == expected.split()


HF = {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}


def container(spec: dict[str, Any], plan: RenderPlan = PLAN) -> dict[str, Any]:
    got: dict[str, Any] = build_deployment(isvc(spec), plan)["spec"]["template"]["spec"]
    return got


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ({}, [HOME, {"name": "HF_HOME", "value": "/model-cache"}]),
        (
            {"env": [{"name": "HF_HOME", "value": "/cache"}, {"name": "A", "value": "1"}]},
            [HOME, {"name": "HF_HOME", "value": "/cache"}, {"name": "A", "value": "1"}],
        ),
        (
            # Credentials travel as Secret references only, from the fields and from env.
            {
                "hfTokenSecretRef": {"name": "s", "key": "k"},
                "apiKeySecretRef": {"name": "api", "key": "key"},
                "env": [
                    {
                        "name": "AWS_SECRET_ACCESS_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "aws", "key": "secret"}},
                    },
                    {"name": "EMPTY"},
                ],
            },
            [
                HOME,
                {"name": "HF_HOME", "value": "/model-cache"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                {
                    "name": "VLLM_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}},
                },
                {
                    "name": "AWS_SECRET_ACCESS_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "aws", "key": "secret"}},
                },
                {"name": "EMPTY", "value": ""},
            ],
        ),
    ],
)
def test_env(runtime: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert container({"model": HF, "runtime": runtime})["containers"][0]["env"] == expected


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ({"modelCache": {"sizeLimit": "200Gi"}}, {"sizeLimit": "200Gi"}),
        ({"modelCache": {}}, {}),
    ],
)
def test_cache_volume(runtime: dict[str, Any], expected: dict[str, Any]) -> None:
    volumes = container({"model": HF, "runtime": runtime})["volumes"]
    assert volumes[1] == {"name": "model-cache", "emptyDir": expected}


@pytest.mark.parametrize(
    ("timeout", "failures"), [(60, 6), (1800, 180), (1805, 181), (86400, 8640)]
)
def test_startup_probe_tolerates_the_configured_load_time(timeout: int, failures: int) -> None:
    spec = {"model": HF, "runtime": {"startupTimeoutSeconds": timeout}}
    startup = container(spec)["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= timeout
    assert startup == probe(10, 5, failures)


def test_gpus_per_replica_can_exceed_tensor_parallel() -> None:
    plan = RenderPlan(
        tensor_parallel=2, gpus_per_replica=4, gpu_product="P", replicas=1, revision="r"
    )
    spec = container({"model": HF}, plan)["containers"][0]
    assert spec["resources"] == {
        "requests": {"nvidia.com/gpu": "4"},
        "limits": {"nvidia.com/gpu": "4"},
    }
    assert spec["args"][4:6] == ["--tensor-parallel-size", "2"]


def test_builder_is_pure() -> None:
    service = isvc({"model": HF})
    first = build_deployment(service, PLAN)
    again = copy.deepcopy(first)
    first["spec"]["template"]["spec"]["containers"][0]["args"].append("--mutated")
    assert build_deployment(service, PLAN) == again


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tensor_parallel": 0},
        {"gpus_per_replica": 0},
        {"replicas": -1},
        {"gpu_product": ""},
    ],
)
def test_render_plan_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "tensor_parallel": 1,
        "gpus_per_replica": 1,
        "gpu_product": "NVIDIA-L4",
        "replicas": 1,
        "revision": "r",
    }
    with pytest.raises(ValueError):
        RenderPlan(**{**base, **kwargs})


def test_credentials_reach_the_pod_only_by_secret_reference() -> None:
    """Every credential the spec can name is a secretKeyRef; annotations carry none."""
    ref = {"secretKeyRef": {"name": "creds", "key": "k"}}
    spec = {
        "model": {"source": "s3://models-bucket/llama"},
        "runtime": {
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
            "apiKeySecretRef": {"name": "api", "key": "key"},
            "env": [
                {"name": "AWS_ACCESS_KEY_ID", "valueFrom": ref},
                {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": ref},
                {"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"},
            ],
        },
    }
    template = build_deployment(isvc(spec), PLAN)["spec"]["template"]
    env = template["spec"]["containers"][0]["env"]
    secret_like = [e for e in env if SECRET_NAME.search(e["name"]) or e["name"] in FIELD_ENV]
    assert {e["name"] for e in secret_like} == {
        "HF_TOKEN",
        "VLLM_API_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert all(set(e) == {"name", "valueFrom"} for e in secret_like)
    assert set(template["metadata"]["annotations"]) == {
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
    }
    assert "--api-key" not in template["spec"]["containers"][0]["args"]


def test_trust_remote_code_is_an_explicit_field() -> None:
    args = container({"model": HF, "runtime": {"trustRemoteCode": True}})["containers"][0]["args"]
    assert "--trust-remote-code" in args
    assert "--trust-remote-code" not in container({"model": HF})["containers"][0]["args"]


def test_quality_gate_adds_only_the_readiness_gate() -> None:
    """The gate is the only template difference, and the revision (and so the Deployment
    name and selector) is the same either way."""
    service = isvc({"model": HF})
    plain = build_deployment(service, PLAN)
    gated = build_deployment(service, PLAN, quality_gate=True)
    gates = gated["spec"]["template"]["spec"].pop("readinessGates")
    assert gates == [{"conditionType": QUALITY_GATE_CONDITION}]
    assert gated == plain
    assert not has_quality_gate(plain)
    assert has_quality_gate(build_deployment(service, PLAN, quality_gate=True))
    pod = {"spec": {"readinessGates": [{"conditionType": QUALITY_GATE_CONDITION}]}}
    assert has_quality_gate(pod) and not has_quality_gate({"spec": {}})
