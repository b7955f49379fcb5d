"""The planner's view of an InferenceService, and the one-call entry point `plan_services`.

`service_spec` builds it from the typed API model (`kvpilot.api.parse.InferenceService`),
so every default comes from the API's own models; `service_from_manifest` parses a plain
dict (a YAML manifest, an object from the API server) with the API's parser first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvpilot.api.parse import InferenceService, parse_spec
from kvpilot.api.spec import InferenceServiceSpec
from kvpilot.planning.defrag import plan_with_moves
from kvpilot.planning.inventory import Inventory
from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.placement import PlacementPlan, RunningReplicas, ServiceDemand
from kvpilot.planning.tp import FitResult, fit_model

DEFAULT_NAMESPACE = "default"


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
    #: (GPU type, TP) options planning.upgrade must not move it to (their revision failed)
    avoid: tuple[tuple[str, int], ...] = ()


def service_spec(isvc: InferenceService) -> ServiceSpec:
    """The planner's view of a parsed InferenceService."""
    return service_spec_of(isvc.namespace, isvc.name, isvc.spec)


def service_spec_of(namespace: str, name: str, spec: InferenceServiceSpec) -> ServiceSpec:
    """The planner's view of a parsed spec; `namespace/name` names it in the plan."""
    model, runtime, placement, scaling = spec.model, spec.runtime, spec.placement, spec.scaling
    serving = ServingConfig(
        quantization=model.quantization,
        dtype=model.dtype,
        kv_cache_dtype=model.kv_cache_dtype,
        max_model_len=model.max_model_len,
        gpu_memory_utilization=runtime.gpu_memory_utilization,
        max_num_seqs=runtime.max_num_seqs,
        max_num_batched_tokens=runtime.max_num_batched_tokens,
        target_concurrency=placement.target_concurrency,
    )
    min_replicas, max_replicas = scaling.min_replicas, scaling.max_replicas
    desired = spec.replicas
    if desired is not None:
        # spec.replicas (the scale subresource) is the one source of truth: a count set
        # by hand outside the autoscaling bounds (e.g. 0 to park a model) is honoured.
        min_replicas, max_replicas = min(min_replicas, desired), max(max_replicas, desired)
    shape = model.shape.model_dump(by_alias=True, exclude_none=True) if model.shape else None
    return ServiceSpec(
        name=f"{namespace}/{name}",
        source=model.source,
        serving=serving,
        shape=shape or None,
        tensor=spec.parallelism.tensor,
        gpu_types=tuple(placement.gpu_types),
        priority=placement.priority,
        preemptible=placement.preemptible,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        desired_replicas=desired,
    )


def service_from_manifest(obj: Mapping[str, Any]) -> ServiceSpec:
    """ServiceSpec from an InferenceService dict, validated by the API's parser.

    Raises `kvpilot.api.InvalidObjectError` (a ValueError) naming every bad field.
    """
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    if not name:
        raise ValueError("InferenceService without metadata.name")
    spec = parse_spec(obj.get("spec") or {})
    return service_spec_of(str(meta.get("namespace") or DEFAULT_NAMESPACE), name, spec)


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
            avoid=s.avoid,
        )
        for s in services
    ]
    return plan_with_moves(demands, inventory, keep_running=keep_running)
