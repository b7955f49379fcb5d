"""What the rollout planner reads, taken from the observed Deployments and pods (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kvpilot.api.spec import RolloutSpec
from kvpilot.planning.inventory import pod_gpu_request
from kvpilot.resources.labels import REVISION
from kvpilot.rollout.capacity import (
    CAPACITY_ANNOTATION,
    KV_ANNOTATION,
    ReplicaCapacity,
    per_gpu_equivalent,
)
from kvpilot.rollout.plan import RevisionState, RolloutConfig


@dataclass(frozen=True)
class LiveRevision:
    """A revision with a Deployment: its name, the object, and what its pods say."""

    revision: str
    name: str
    deployment: Mapping[str, Any]


def deployment_revision(dep: Mapping[str, Any]) -> str | None:
    labels = (((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "labels"
    ) or {}
    rev = labels.get(REVISION)
    return str(rev) if rev else None


def live_revisions(deployments: Sequence[Mapping[str, Any]]) -> dict[str, LiveRevision]:
    """revision -> its Deployment (the newest, should two carry one revision)."""
    out: dict[str, LiveRevision] = {}
    for dep in sorted(
        deployments, key=lambda d: str((d.get("metadata") or {}).get("creationTimestamp") or "")
    ):
        meta = dep.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        rev = deployment_revision(dep)
        if rev is not None:
            out[rev] = LiveRevision(rev, str(meta.get("name")), dep)
    return out


def recorded_capacity(dep: Mapping[str, Any]) -> ReplicaCapacity | None:
    """The estimate the Deployment was created with (annotation), if any."""
    ann = (dep.get("metadata") or {}).get("annotations") or {}
    try:
        tps = float(ann[CAPACITY_ANNOTATION])
        kv = int(ann.get(KV_ANNOTATION, "0"))
    except (KeyError, ValueError):
        return None
    return ReplicaCapacity(tps, kv) if tps > 0 else None


def capacity_annotations(cap: ReplicaCapacity) -> dict[str, str]:
    return {CAPACITY_ANNOTATION: f"{cap.tokens_per_s:.1f}", KV_ANNOTATION: str(cap.kv_tokens)}


def _time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _unschedulable_since(pod: Mapping[str, Any]) -> datetime | None:
    if (pod.get("spec") or {}).get("nodeName"):
        return None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return _time(c.get("lastTransitionTime")) or _time(
                (pod.get("metadata") or {}).get("creationTimestamp")
            )
    return None


def live_pods(pods: Sequence[Mapping[str, Any]], revision: str) -> list[Mapping[str, Any]]:
    return [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get(REVISION) == revision
        and not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def revision_state(
    live: LiveRevision | None,
    revision: str,
    *,
    pods: Sequence[Mapping[str, Any]],
    capacity: ReplicaCapacity,
    gpus_per_replica: int,
    now: str,
) -> RevisionState:
    """The planner's view of one revision from its Deployment and its pods."""
    mine = live_pods(pods, revision)
    ready = sum(1 for p in mine if _ready(p))
    now_t = _time(now)
    waits = [w for p in mine if (w := _unschedulable_since(p)) is not None]
    pending_s = max(((now_t - w).total_seconds() for w in waits), default=0.0) if now_t else 0.0
    desired = int(((live.deployment.get("spec") or {}).get("replicas") or 0) if live else 0)
    # Pods beyond the Deployment's replicas are about to go: a scale-down the cache has
    # not seen carried out yet must not count as ready capacity twice.
    ready = min(ready, desired)
    return RevisionState(
        revision=revision,
        desired=desired,
        ready=ready,
        gpus_per_replica=gpus_per_replica,
        capacity=capacity,
        starting=len(mine) - ready,
        existing=len(mine),
        pending_s=max(0.0, pending_s),
    )


def deployment_gpus(dep: Mapping[str, Any]) -> int:
    """GPUs each replica of a Deployment requests."""
    template = (dep.get("spec") or {}).get("template") or {}
    return max(1, pod_gpu_request(template))


def old_revision_state(
    live: LiveRevision,
    pods: Sequence[Mapping[str, Any]],
    target_capacity: ReplicaCapacity,
    target_gpus: int,
    now: str,
) -> RevisionState:
    gpus = deployment_gpus(live.deployment)
    cap = recorded_capacity(live.deployment) or per_gpu_equivalent(
        target_capacity, target_gpus, gpus
    )
    return revision_state(
        live, live.revision, pods=pods, capacity=cap, gpus_per_replica=gpus, now=now
    )


def service_port(dep: Mapping[str, Any]) -> int | None:
    """The port the Deployment's vLLM container listens on."""
    for c in ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []:
        for port in c.get("ports") or []:
            if port.get("containerPort"):
                return int(port["containerPort"])
    return None


def rollout_config(spec: RolloutSpec) -> RolloutConfig:
    return RolloutConfig(
        max_unavailable=spec.max_unavailable,
        max_surge_gpus=spec.max_surge_gpus,
        steps=spec.steps,
        paused=spec.paused,
        abort=spec.abort,
        analysis=spec.analysis.enabled,
        quality=spec.quality_gate.enabled,
    )


def unscheduled_gpus(
    pods: Sequence[Mapping[str, Any]], deployments: Sequence[Mapping[str, Any]]
) -> int:
    """GPUs the service will take beyond what its bound pods hold: each Deployment's
    replicas without a bound pod (not created yet, or waiting for the scheduler). Free
    GPUs minus these are what a surge may still claim."""
    total = 0
    for lr in live_revisions(deployments).values():
        want = int((lr.deployment.get("spec") or {}).get("replicas") or 0)
        bound = sum(
            1 for p in live_pods(pods, lr.revision) if (p.get("spec") or {}).get("nodeName")
        )
        total += max(0, want - bound) * deployment_gpus(lr.deployment)
    return total


def equivalent_ready(
    deployments: Sequence[Mapping[str, Any]], target: str | None
) -> tuple[int, int]:
    """(ready, existing) replicas of all revisions counted in replicas of `target`, by
    their recorded capacity: what the autoscaler compares its targets with mid-rollout."""
    live = live_revisions(deployments)
    if not live:
        return 0, 0
    tgt = live.get(target or "")
    base = recorded_capacity(tgt.deployment) if tgt else None
    ready = existing = 0.0
    for lr in live.values():
        st = lr.deployment.get("status") or {}
        r, e = int(st.get("readyReplicas") or 0), int(st.get("replicas") or 0)
        cap = recorded_capacity(lr.deployment)
        factor = cap.tokens_per_s / base.tokens_per_s if cap and base else 1.0
        ready += r * factor
        existing += e * factor
    return math.floor(ready + 1e-9), math.ceil(existing - 1e-9)
