"""Names of the InferenceService API (group, version, kind) and its vocabularies."""

from __future__ import annotations

from typing import Final, Literal, get_args

GROUP: Final = "kvpilot.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "InferenceService"
LIST_KIND: Final = "InferenceServiceList"
PLURAL: Final = "inferenceservices"
SINGULAR: Final = "inferenceservice"
SHORT_NAMES: Final = ("infsvc", "kvis")
CATEGORIES: Final = ("kvpilot",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Labels and resources kvpilot reads and writes: declared once, here, in the lowest layer.
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
APP_NAME: Final = "app.kubernetes.io/name"
INFERENCE_SERVICE: Final = f"{GROUP}/inference-service"
REVISION: Final = f"{GROUP}/revision"
MANAGER: Final = "kvpilot"
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL: Final = "nvidia.com/gpu.memory"
#: Taint kvpilot puts on a node it frees for one waiting service (make-before-break moves):
#: value `reservation_value(namespace, name)`, effect NoSchedule; only that service's pods
#: tolerate it, so the replicas that leave cannot be replaced by others meanwhile.
RESERVED_TAINT: Final = f"{GROUP}/reserved"
#: The ReplicaSet controller removes the pods with the lowest cost first on a scale-down.
POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"


def reservation_value(namespace: str, name: str) -> str:
    """The reservation taint's value for one service: `<namespace>.<name>`, or, beyond the
    63 characters a taint value may have, a prefix and a hash of it."""
    import hashlib

    full = f"{namespace}.{name}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[:52].rstrip('.-_')}-{digest}"


Quantization = Literal["none", "awq", "gptq", "fp8", "int8"]
DType = Literal["auto", "bfloat16", "float16"]
KVCacheDType = Literal["auto", "fp8"]
TensorParallel = Literal["auto", 1, 2, 4, 8]
TENSOR_PARALLEL_SIZES: Final = (1, 2, 4, 8)

# kvpilot GPU type names, plus the family names that identify one size unambiguously
# (`A100` alone does not: it comes in 40 and 80 GB).
GPUTypeName = Literal[
    "H200-141GB",
    "H100-80GB",
    "A100-80GB",
    "A100-40GB",
    "L40S-48GB",
    "L4-24GB",
    "A10G-24GB",
    "H200",
    "H100",
    "L40S",
    "L4",
    "A10G",
]
GPU_TYPE_NAMES: Final[tuple[str, ...]] = get_args(GPUTypeName)

# Condition types the operator sets on status.conditions.
ConditionType = Literal["Ready", "Progressing", "Degraded", "Placed", "ScalingActive"]
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
PLACED: Final = "Placed"
SCALING_ACTIVE: Final = "ScalingActive"
CONDITION_TYPES: Final[tuple[str, ...]] = get_args(ConditionType)
ConditionStatus = Literal["True", "False", "Unknown"]
