"""The vLLM Deployment of an InferenceService, as a plain dict for server-side apply.

Only fields kvpilot owns are emitted: applying with one field manager then leaves
what others set (an HPA's replicas are not an issue here: /scale goes through the
InferenceService) alone, and a re-apply of the same dict changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from kvpilot.api.names import RESERVED_TAINT, reservation_value
from kvpilot.api.parse import InferenceService
from kvpilot.api.spec import ModelSpec, RuntimeSpec, SecretKeyRef
from kvpilot.resources.labels import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    REVISION,
    common_labels,
    pod_labels,
    selector_labels,
)
from kvpilot.resources.meta import object_meta
from kvpilot.resources.plan import RenderPlan

CONTAINER_NAME: Final = "vllm"
COMMAND: Final = ("python3", "-m", "vllm.entrypoints.openai.api_server")
PORT_NAME: Final = "http"
HEALTH_PATH: Final = "/health"
METRICS_PATH: Final = "/metrics"

SHM_VOLUME: Final = "dshm"
CACHE_VOLUME: Final = "model-cache"
SOURCE_VOLUME: Final = "model-source"
SHM_PATH: Final = "/dev/shm"
CACHE_PATH: Final = "/model-cache"
SOURCE_PATH: Final = "/model-source"
# Weights (--download-dir) and the rest of the Hugging Face cache (HF_HOME) share one
# layout on the cache volume, so a PVC cache serves both.
HF_HOME: Final = CACHE_PATH
DOWNLOAD_DIR: Final = f"{CACHE_PATH}/hub"

# vLLM runs as an ordinary user: the official image needs no root (it writes only to
# HOME, the caches and /dev/shm, all on volumes or world-writable paths). fsGroup makes
# the cache volume writable for that user.
RUN_AS_USER: Final = 1000
HOME: Final = "/tmp"

STARTUP_PERIOD_SECONDS: Final = 10
# A deleted pod leaves the Service's endpoints while it is already stopping; vLLM keeps
# serving this long first, so clients that still pick it (endpoint propagation, routers
# refreshing their lists) are not refused during a rollout or scale-down.
PRE_STOP_SLEEP_SECONDS: Final = 5
REVISION_HISTORY_LIMIT: Final = 3
# Pod condition behind the readinessGate of a revision rolled out with the quality gate:
# the kubelet counts such a pod Ready (and the Service sends it traffic) only once the
# operator has set it True, after the gate passed (see docs/quality-gate.md).
QUALITY_GATE_CONDITION: Final = "kvpilot.io/quality-gate"
# vLLM's flag for each quantization; int8 (W8A8) checkpoints are detected from their
# config and have no flag of their own.
VLLM_QUANTIZATION: Final = {"awq": "awq", "gptq": "gptq", "fp8": "fp8"}


def model_argument(model: ModelSpec) -> str:
    """--model: a Hub repo id, a path on the mounted claim, or an s3:// URI."""
    scheme, _, rest = model.source.partition("://")
    if scheme == "hf":
        return rest
    if scheme == "pvc":
        _, _, path = rest.partition("/")
        return f"{SOURCE_PATH}/{path}" if path else SOURCE_PATH
    return model.source


def source_claim(model: ModelSpec) -> str | None:
    """The PersistentVolumeClaim of a pvc:// source."""
    scheme, _, rest = model.source.partition("://")
    return rest.partition("/")[0] if scheme == "pvc" else None


def vllm_args(isvc: InferenceService, plan: RenderPlan) -> list[str]:
    """vLLM OpenAI server arguments, in the order of the team contract."""
    model, rt = isvc.spec.model, isvc.spec.runtime
    args = [
        "--model",
        model_argument(model),
        "--served-model-name",
        isvc.served_name,
        "--tensor-parallel-size",
        str(plan.tensor_parallel),
    ]
    if model.quantization in VLLM_QUANTIZATION:
        args += ["--quantization", VLLM_QUANTIZATION[model.quantization]]
    args += [
        "--dtype",
        model.dtype,
        "--kv-cache-dtype",
        model.kv_cache_dtype,
        "--max-model-len",
        str(model.max_model_len),
        "--gpu-memory-utilization",
        f"{rt.gpu_memory_utilization:g}",
    ]
    if rt.max_num_seqs is not None:
        args += ["--max-num-seqs", str(rt.max_num_seqs)]
    if rt.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(rt.max_num_batched_tokens)]
    if rt.trust_remote_code:
        args.append("--trust-remote-code")
    if rt.enable_prefix_caching is not None:
        args.append(
            "--enable-prefix-caching" if rt.enable_prefix_caching else "--no-enable-prefix-caching"
        )
    args += ["--host", "0.0.0.0", "--port", str(rt.port)]
    if model.source.startswith("hf://"):
        args += ["--download-dir", DOWNLOAD_DIR]
        if model.revision is not None:
            args += ["--revision", model.revision]
    elif model.source.startswith("s3://"):
        args += ["--load-format", "runai_streamer"]
    return args + list(rt.extra_args)


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _env(rt: RuntimeSpec) -> list[dict[str, Any]]:
    """Container env. Credentials only ever appear as Secret references: the API refuses
    literal HF_TOKEN / VLLM_API_KEY entries, so these references cannot be replaced."""
    env: dict[str, dict[str, Any]] = {
        "HOME": {"name": "HOME", "value": HOME},
        "HF_HOME": {"name": "HF_HOME", "value": HF_HOME},
    }
    if rt.hf_token_secret_ref is not None:
        env["HF_TOKEN"] = _secret_env("HF_TOKEN", rt.hf_token_secret_ref)
    if rt.api_key_secret_ref is not None:
        env["VLLM_API_KEY"] = _secret_env("VLLM_API_KEY", rt.api_key_secret_ref)
    for var in rt.env:  # the user's value wins; one entry per name (SSA list-map key)
        if var.value_from is not None:
            env[var.name] = _secret_env(var.name, var.value_from.secret_key_ref)
        else:
            env[var.name] = {"name": var.name, "value": var.value or ""}
    return list(env.values())


CONTAINER_SECURITY_CONTEXT: Final[dict[str, Any]] = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}
# Root filesystem stays writable: vLLM, Triton and torch.compile write caches under
# HOME and /tmp, and some images keep more state in the image.
POD_SECURITY_CONTEXT: Final[dict[str, Any]] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _resources(rt: RuntimeSpec, gpus: int) -> dict[str, Any]:
    requests: dict[str, str] = {GPU_RESOURCE: str(gpus)}
    if rt.cpu is not None:
        requests["cpu"] = rt.cpu
    if rt.memory is not None:
        requests["memory"] = rt.memory
    return {"requests": requests, "limits": {GPU_RESOURCE: str(gpus)}}


def _volumes(isvc: InferenceService) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rt = isvc.spec.runtime
    cache = rt.model_cache
    cache_volume: dict[str, Any] = {"name": CACHE_VOLUME}
    if cache.claim_name is not None:
        cache_volume["persistentVolumeClaim"] = {"claimName": cache.claim_name}
    elif cache.size_limit is not None:
        cache_volume["emptyDir"] = {"sizeLimit": cache.size_limit}
    else:
        cache_volume["emptyDir"] = {}
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": rt.shm_size}},
        cache_volume,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "mountPath": SHM_PATH},
        {"name": CACHE_VOLUME, "mountPath": CACHE_PATH},
    ]
    claim = source_claim(isvc.spec.model)
    if claim is not None:
        volumes.append(
            {"name": SOURCE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": SOURCE_VOLUME, "mountPath": SOURCE_PATH, "readOnly": True})
    return volumes, mounts


def _probes(rt: RuntimeSpec) -> dict[str, Any]:
    def http(period: int, timeout: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": failures,
        }

    # Loading weights, compiling and capturing CUDA graphs takes minutes; the startup
    # probe holds off liveness until /health answers, for at most startupTimeoutSeconds.
    startup_failures = math.ceil(rt.startup_timeout_seconds / STARTUP_PERIOD_SECONDS)
    return {
        "startupProbe": http(STARTUP_PERIOD_SECONDS, 5, startup_failures),
        "readinessProbe": http(5, 5, 3),
        "livenessProbe": http(10, 10, 6),
    }


def deployment_name(service: str, revision: str) -> str:
    """One Deployment per revision: `<service>-<revision>` (a Deployment named after the
    service is one made before revisions had their own, kept until its revision retires)."""
    return f"{service}-{revision}"


def has_quality_gate(obj: Mapping[str, Any]) -> bool:
    """Whether a Deployment's pod template (or a pod) carries the quality gate's readinessGate."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Deployment" or "template" in spec:
        spec = (spec.get("template") or {}).get("spec") or {}
    return any(
        g.get("conditionType") == QUALITY_GATE_CONDITION for g in spec.get("readinessGates") or []
    )


def build_deployment(
    isvc: InferenceService,
    plan: RenderPlan,
    *,
    name: str | None = None,
    annotations: dict[str, str] | None = None,
    quality_gate: bool = False,
) -> dict[str, Any]:
    """The Deployment running `plan.replicas` vLLM replicas of `plan.revision`.

    Its selector includes the revision, so the Deployments of two revisions never
    count each other's pods; `name` equal to the service's keeps the selector such a
    Deployment was created with (selectors are immutable), so it is taken over as is.
    `quality_gate` adds the readinessGate on QUALITY_GATE_CONDITION; it is not part of
    the revision hash, and the caller keeps it as the live Deployment has it (adding or
    removing it would restart the revision's pods).
    """
    rt = isvc.spec.runtime
    name = name or deployment_name(isvc.name, plan.revision)
    selector = (
        selector_labels(isvc.name)
        if name == isvc.name
        else {**selector_labels(isvc.name), REVISION: plan.revision}
    )
    meta = object_meta(isvc, {**common_labels(isvc.name), REVISION: plan.revision})
    meta["name"] = name
    if annotations:
        meta["annotations"] = dict(annotations)
    volumes, mounts = _volumes(isvc)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": rt.image,
        "command": list(COMMAND),
        "args": vllm_args(isvc, plan),
        "ports": [{"name": PORT_NAME, "containerPort": rt.port, "protocol": "TCP"}],
        "env": _env(rt),
        "resources": _resources(rt, plan.gpus_per_replica),
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        **_probes(rt),
    }
    if name != isvc.name:
        # A Deployment taken over keeps the template it was created with: any template
        # change would restart its pods.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": plan.replicas,
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "selector": {"matchLabels": selector},
            # Never below the ready count during a roll: a GPU replica takes minutes to load.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels(isvc.name, plan.revision),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(rt.port),
                        "prometheus.io/path": METRICS_PATH,
                    },
                },
                "spec": {
                    **({"schedulerName": plan.scheduler_name} if plan.scheduler_name else {}),
                    # vLLM never talks to the API server; a token would only be loot.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": POD_SECURITY_CONTEXT,
                    "containers": [container],
                    **(
                        {"readinessGates": [{"conditionType": QUALITY_GATE_CONDITION}]}
                        if quality_gate
                        else {}
                    ),
                    "volumes": volumes,
                    "tolerations": [
                        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                        # A node kvpilot frees for this service (see docs/placement.md, moves).
                        {
                            "key": RESERVED_TAINT,
                            "operator": "Equal",
                            "value": reservation_value(isvc.namespace, isvc.name),
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
                                                "key": GPU_PRODUCT_LABEL,
                                                "operator": "In",
                                                "values": [plan.gpu_product],
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
