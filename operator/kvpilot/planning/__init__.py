"""GPU placement planner (pure): model memory, TP choice, GPU inventory, multi-service placement.

Typical use by the controller, which keeps one PoolPlanner for the life of the process:

    planner = PoolPlanner()
    inventory = build_inventory(node_dicts, pod_dicts, exclude_pod=is_kvpilot_pod)
    running = running_replicas(kvpilot_pod_dicts, inventory)
    services = [service_spec(isvc) for isvc in parsed_inference_services]
    plan = planner.plan(services, inventory, running)
    placement = plan.service("namespace/name")   # gpu_type, tensor_parallel, replicas_placed,
                                                 # nodes, memory, reason, message
"""

from kvpilot.planning.gpus import GPU_TYPES, GPUType, gpu_type, gpu_type_for_product
from kvpilot.planning.inventory import (
    Inventory,
    NodeGPUs,
    build_inventory,
    is_kvpilot_pod,
    nodes_from_inventory_file,
    pod_gpu_request,
    pods_for_used_gpus,
)
from kvpilot.planning.memory import (
    DEFAULT_KV_TOKENS,
    MemoryBreakdown,
    ServingConfig,
    default_target_concurrency,
    estimate_memory,
    kv_bytes_per_token,
    weight_bytes,
)
from kvpilot.planning.models import (
    CATALOG,
    ModelShape,
    UnknownModelShapeError,
    catalog_shape,
    resolve_shape,
)
from kvpilot.planning.placement import (
    PlacementPlan,
    PlacementReason,
    RunningReplicas,
    ServiceDemand,
    ServicePlacement,
    moved_replicas,
    pin_running,
    plan_placement,
    running_from_plan,
    running_replicas,
)
from kvpilot.planning.pool import PoolPlanner
from kvpilot.planning.service import (
    ServiceSpec,
    fit_service,
    plan_services,
    service_from_manifest,
    service_spec,
    service_spec_of,
)
from kvpilot.planning.tp import (
    FitOption,
    FitResult,
    ModelFits,
    NoGPUTypeFits,
    TypeRejection,
    UnknownModelShape,
    fit_model,
)

__all__ = [
    "CATALOG",
    "DEFAULT_KV_TOKENS",
    "GPU_TYPES",
    "FitOption",
    "FitResult",
    "GPUType",
    "Inventory",
    "MemoryBreakdown",
    "ModelFits",
    "ModelShape",
    "NoGPUTypeFits",
    "NodeGPUs",
    "PlacementPlan",
    "PlacementReason",
    "PoolPlanner",
    "RunningReplicas",
    "ServiceDemand",
    "ServicePlacement",
    "ServiceSpec",
    "ServingConfig",
    "TypeRejection",
    "UnknownModelShape",
    "UnknownModelShapeError",
    "build_inventory",
    "catalog_shape",
    "default_target_concurrency",
    "estimate_memory",
    "fit_model",
    "fit_service",
    "gpu_type",
    "gpu_type_for_product",
    "is_kvpilot_pod",
    "kv_bytes_per_token",
    "moved_replicas",
    "nodes_from_inventory_file",
    "pin_running",
    "plan_placement",
    "plan_services",
    "pod_gpu_request",
    "pods_for_used_gpus",
    "resolve_shape",
    "running_from_plan",
    "running_replicas",
    "service_from_manifest",
    "service_spec",
    "service_spec_of",
    "weight_bytes",
]
