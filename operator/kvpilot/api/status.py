"""InferenceService status: conditions, replica counts, placement and the autoscaler's view.

Only the operator writes status. Fields are optional so a partial status (for example
before the first placement) stays valid.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from kvpilot.api.base import KvModel
from kvpilot.api.names import ConditionStatus

CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(KvModel):
    """One aspect of the service's state (Kubernetes metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Ready, Progressing, Degraded, Placed or ScalingActive.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field("", max_length=32_768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class GPUMemory(KvModel):
    """Planned memory of one GPU of a replica, in GiB."""

    weights_gib: float = Field(
        alias="weightsGiB", ge=0, description="Model weights (this rank's share)."
    )
    kv_cache_gib: float = Field(alias="kvCacheGiB", ge=0, description="KV cache.")
    overhead_gib: float = Field(
        alias="overheadGiB", ge=0, description="Activations, CUDA graphs and runtime overhead."
    )
    total_gib: float = Field(alias="totalGiB", ge=0, description="Sum of the above.")
    capacity_gib: float = Field(
        alias="capacityGiB",
        ge=0,
        description="What vLLM may use: GPU memory x gpuMemoryUtilization.",
    )


class NodeReplicas(KvModel):
    """Replicas the plan puts on one node."""

    name: str = Field(max_length=253, description="Node name.")
    replicas: int = Field(ge=0, description="Replicas of this service planned on the node.")


class PlacementStatus(KvModel):
    """Where the planner put the replicas."""

    gpu_type: str = Field(max_length=64, description="kvpilot GPU type chosen (e.g. H100-80GB).")
    gpu_product: str | None = Field(
        None, max_length=128, description="Node label nvidia.com/gpu.product the pods require."
    )
    tensor_parallel: int = Field(ge=1, le=64, description="Tensor-parallel size of each replica.")
    gpus_per_replica: int = Field(ge=1, le=64, description="GPUs each replica requests.")
    replicas_placed: int = Field(0, ge=0, description="Replicas that fit on free GPUs now.")
    replicas_wanted: int = Field(0, ge=0, description="Replicas desired.")
    memory: GPUMemory | None = Field(None, description="Planned memory per GPU.")
    nodes: list[NodeReplicas] = Field(
        default_factory=list,
        max_length=1000,
        description="Nodes the plan assigns the replicas to (the scheduler's bin-packing "
        "profile puts them there).",
    )


class AutoscalerStatus(KvModel):
    """The autoscaler's last decision and the signals it saw."""

    last_decision_time: datetime | None = Field(None, description="When it last decided.")
    reason: str | None = Field(None, max_length=1024, description="Why it chose desiredReplicas.")
    desired_replicas: int | None = Field(None, ge=0, description="Replicas it asked for.")
    observed: dict[str, float] = Field(
        default_factory=dict,
        description="Signals behind the decision by name (queueDepth, kvCacheUtilization, ...).",
    )
    state: dict[str, Any] = Field(
        default_factory=dict,
        description="Window state the autoscaler keeps between decisions (free-form).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class FailedRevision(KvModel):
    """A revision that was rolled back; not tried again until the spec changes."""

    revision: str = Field(max_length=64, description="Revision hash.")
    reason: str = Field(max_length=1024, description="Why (CamelCase).")
    message: str = Field("", max_length=4096, description="Details.")
    time: datetime | None = Field(None, description="When it was rolled back.")


class RevisionsStatus(KvModel):
    """The revisions that serve, and how far the rollout between them has come."""

    stable: str | None = Field(None, max_length=64, description="Revision serving before the "
                               "rollout (the only one when none is under way).")  # fmt: skip
    canary: str | None = Field(None, max_length=64, description="Revision being rolled out.")
    canary_weight: int | None = Field(
        None, ge=0, le=100, description="Canary's share of ready serving capacity, in percent."
    )
    step: str | None = Field(
        None, max_length=64, description="Rollout progress: step reached / steps (derived)."
    )
    phase: str | None = Field(
        None,
        max_length=64,
        description="Stable, Surging, Replacing, Waiting, Paused, Promoting, RollingBack.",
    )
    baseline_capacity: float | None = Field(
        None,
        ge=0,
        description="Serving capacity (estimated tokens/s) of the stable revision when the "
        "rollout began: the bound keeps (1 - maxUnavailable) of it.",
    )
    ready_capacity: float | None = Field(
        None, ge=0, description="Estimated tokens/s of all ready replicas now."
    )
    surge_blocked: bool | None = Field(
        None,
        description="A surge pod of this canary waited too long for GPUs that looked free; "
        "the rollout replaces stable replicas from then on.",
    )
    failed: FailedRevision | None = Field(None, description="The last revision rolled back.")
    analysis: dict[str, Any] = Field(
        default_factory=dict,
        description="Canary analysis state (free-form: failures, passes, last verdict).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    quality: dict[str, Any] = Field(
        default_factory=dict,
        description="Quality gate result of the canary (free-form).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class InferenceServiceStatus(KvModel):
    """Observed state of an InferenceService."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation this status reflects."
    )
    conditions: tuple[Condition, ...] = Field(
        (),
        description="Current conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(None, ge=0, description="Replicas that exist (any state).")
    ready_replicas: int | None = Field(None, ge=0, description="Replicas ready to serve.")
    desired_replicas: int | None = Field(None, ge=0, description="Replicas the operator aims for.")
    selector: str | None = Field(
        None, max_length=4096, description="Label selector of the pods (for the scale subresource)."
    )
    placement: PlacementStatus | None = Field(None, description="GPU placement of the replicas.")
    revision: str | None = Field(
        None, max_length=64, description="Hash of the pod-relevant spec the replicas run."
    )
    autoscaler: AutoscalerStatus | None = Field(None, description="Autoscaler's last decision.")
    revisions: RevisionsStatus | None = Field(
        None, description="Stable and canary revisions and the rollout between them."
    )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
