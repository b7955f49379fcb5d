"""The planner's view of an InferenceService, and the one-call entry point `plan_services`.

`service_from_manifest` reads the spec fields the planner needs from a plain dict (a
parsed YAML manifest, the object the API returns, or an API model's
`model_dump(by_alias=True)`), applying the API's defaults, so the planner does not
depend on how the API package models them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvpilot.planning.inventory import Inventory
from kvpilot.planning.memory import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_MODEL_LEN,
    ServingConfig,
)
from kvpilot.planning.placement import PlacementPlan, RunningReplicas, ServiceDemand, plan_placement
from kvpilot.planning.tp import FitResult, fit_model


@dataclass(frozen=True)
class ServiceSpec:
    """What placement needs from one InferenceService; `name` is `namespace/name`."""

    name: str
    source: str
    serving: ServingConfig = field(default_factory=ServingConfig)
    shape: Mapping[str, Any] | None = None
    tensor: int | str = "auto"
    gpu_types: tuple[str, ...] = ()
    priority: int = 0
    preemptible: bool = False
    min_replicas: int = 1
    max_replicas: int = 1
    desired_replicas: int | None = None


def service_from_manifest(obj: Mapping[str, Any]) -> ServiceSpec:
    """ServiceSpec from an InferenceService object (camelCase keys, API defaults applied)."""
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    spec: Mapping[str, Any] = obj.get("spec") or {}
    model: Mapping[str, Any] = spec.get("model") or {}
    runtime: Mapping[str, Any] = spec.get("runtime") or {}
    placement: Mapping[str, Any] = spec.get("placement") or {}
    scaling: Mapping[str, Any] = spec.get("scaling") or {}
    parallelism: Mapping[str, Any] = spec.get("parallelism") or {}
    name = str(meta.get("name") or "")
    if not name:
        raise ValueError("InferenceService without metadata.name")
    source = model.get("source")
    if not source:
        raise ValueError(f"InferenceService {name}: spec.model.source is required")
    serving = ServingConfig(
        quantization=str(model.get("quantization") or "none"),
        dtype=str(model.get("dtype") or "auto"),
        kv_cache_dtype=str(model.get("kvCacheDtype") or "auto"),
        max_model_len=int(model.get("maxModelLen") or DEFAULT_MAX_MODEL_LEN),
        gpu_memory_utilization=float(
            runtime.get("gpuMemoryUtilization") or DEFAULT_GPU_MEMORY_UTILIZATION
        ),
        max_num_seqs=_opt_int(runtime.get("maxNumSeqs")),
        max_num_batched_tokens=_opt_int(runtime.get("maxNumBatchedTokens")),
        target_concurrency=_opt_int(placement.get("targetConcurrency")),
    )
    min_replicas = int(scaling.get("minReplicas", 1))
    max_replicas = max(min_replicas, int(scaling.get("maxReplicas", 1)))
    desired = _opt_int(spec.get("replicas"))
    if desired is not None:
        # spec.replicas (the scale subresource) is the one source of truth: a count set
        # by hand outside the autoscaling bounds (e.g. 0 to park a model) is honoured.
        min_replicas, max_replicas = min(min_replicas, desired), max(max_replicas, desired)
    return ServiceSpec(
        name=f"{meta.get('namespace') or 'default'}/{name}",
        source=str(source),
        serving=serving,
        shape=model.get("shape") or None,
        tensor=parallelism.get("tensor", "auto"),
        gpu_types=tuple(str(t) for t in placement.get("gpuTypes") or ()),
        priority=int(placement.get("priority") or 0),
        preemptible=bool(placement.get("preemptible") or False),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        desired_replicas=desired,
    )


def fit_service(
    service: ServiceSpec,
    inventory: Inventory | None = None,
    costs: Mapping[str, float] | None = None,
) -> FitResult:
    """Fit options of one service; with an inventory, TP is capped by its node sizes."""
    node_max = inventory.max_gpus_per_node() if inventory is not None else None
    return fit_model(
        service.source,
        service.serving,
        shape=service.shape,
        tensor=service.tensor,
        gpu_types=service.gpu_types,
        max_gpus_per_node=node_max or None,
        costs=costs,
    )


def plan_services(
    services: Sequence[ServiceSpec],
    inventory: Inventory,
    *,
    running: Mapping[str, RunningReplicas] | None = None,
    costs: Mapping[str, float] | None = None,
    keep_running: bool = True,
) -> PlacementPlan:
    """Fit and place all services on the pool together.

    `inventory` should count GPUs as free when only kvpilot's own pods hold them (see
    `build_inventory(..., exclude_pod=is_kvpilot_pod)`); `running` (from
    `running_replicas`) keeps running services on their GPU type and nodes.
    """
    current = running or {}
    demands = [
        ServiceDemand(
            name=s.name,
            fit=fit_service(s, inventory, costs),
            priority=s.priority,
            min_replicas=s.min_replicas,
            max_replicas=s.max_replicas,
            desired_replicas=s.desired_replicas,
            preemptible=s.preemptible,
            running=current.get(s.name),
        )
        for s in services
    ]
    return plan_placement(demands, inventory, keep_running=keep_running)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
