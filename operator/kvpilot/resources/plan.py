"""The render plan: the decisions the builders need beyond the spec itself."""

from __future__ import annotations

from dataclasses import dataclass

from kvpilot.api.parse import InferenceService
from kvpilot.resources.revision import compute_revision


@dataclass(frozen=True)
class RenderPlan:
    """What the planner (or, before it, the spec) decided for the current revision."""

    tensor_parallel: int
    gpus_per_replica: int
    gpu_product: str
    replicas: int
    revision: str
    #: kube-scheduler profile (or other scheduler) for the pods; None: the cluster default.
    scheduler_name: str | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel < 1:
            raise ValueError(f"tensor_parallel must be >= 1, got {self.tensor_parallel}")
        if self.gpus_per_replica < self.tensor_parallel:
            raise ValueError("gpus_per_replica must cover tensor_parallel")
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")
        if not self.gpu_product:
            raise ValueError("gpu_product must be set")


def render_plan(
    isvc: InferenceService,
    *,
    tensor_parallel: int,
    gpu_product: str,
    replicas: int | None = None,
    gpus_per_replica: int | None = None,
    scheduler_name: str | None = None,
) -> RenderPlan:
    """A plan with the revision computed from the spec; replicas default to the spec's."""
    gpus = tensor_parallel if gpus_per_replica is None else gpus_per_replica
    return RenderPlan(
        tensor_parallel=tensor_parallel,
        gpus_per_replica=gpus,
        gpu_product=gpu_product,
        scheduler_name=scheduler_name,
        replicas=isvc.spec.desired_replicas if replicas is None else replicas,
        revision=compute_revision(
            isvc.spec,
            tensor_parallel=tensor_parallel,
            gpus_per_replica=gpus,
            gpu_product=gpu_product,
        ),
    )
