"""Status from observations: conditions, status.placement, status.autoscaler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kvpilot.api.parse import InferenceService
from kvpilot.autoscaling.policy import DEFAULT_POLICY, Decision, PolicyConfig
from kvpilot.conditions import Condition, merge_conditions
from kvpilot.planning.placement import ServicePlacement
from kvpilot.planning.report import gpu_memory
from kvpilot.resources.labels import selector_string


def placement_status(p: ServicePlacement, product: str | None = None) -> dict[str, Any] | None:
    """status.placement for a planner decision (None when nothing could be chosen)."""
    if p.option is None:
        return None
    mem = p.memory
    out: dict[str, Any] = {
        "gpuType": p.option.gpu_type,
        **({"gpuProduct": product} if product else {}),
        "tensorParallel": p.option.tensor_parallel,
        "gpusPerReplica": p.option.gpus_per_replica,
        "replicasPlaced": p.replicas_placed,
        "replicasWanted": p.replicas_wanted,
    }
    if p.nodes:
        out["nodes"] = [{"name": n, "replicas": c} for n, c in p.nodes]
    if mem is not None:
        out["memory"] = gpu_memory(mem)  # one meaning of kvCacheGiB everywhere
    return out


def now_iso() -> str:
    """The time as status conditions and Events write it (seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Observed:
    """What the controller saw of the Deployment it owns (None: it does not exist)."""

    generation: int | None = None
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    spec_replicas: int = 0
    conditions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_deployment(cls, dep: Mapping[str, Any] | None) -> Observed | None:
        if dep is None:
            return None
        st = dep.get("status", {}) or {}
        return cls(
            generation=dep.get("metadata", {}).get("generation"),
            observed_generation=st.get("observedGeneration"),
            replicas=int(st.get("replicas", 0) or 0),
            ready_replicas=int(st.get("readyReplicas", 0) or 0),
            updated_replicas=int(st.get("updatedReplicas", 0) or 0),
            spec_replicas=int(dep.get("spec", {}).get("replicas", 0) or 0),
            conditions=tuple(st.get("conditions", []) or []),
        )

    def condition(self, ctype: str) -> Mapping[str, Any] | None:
        for c in self.conditions:
            if c.get("type") == ctype:
                return c
        return None


#: Container waiting reasons that mean a replica will not start without a change.
CONTAINER_FAILURES = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CrashLoopBackOff",
    }
)


@dataclass(frozen=True)
class PodFacts:
    """What the service's pods say about scheduling (from the pod cache)."""

    total: int = 0
    bound: int = 0
    unschedulable: int = 0
    scheduler_message: str = ""
    nodes: tuple[tuple[str, int], ...] = ()  # node -> pods bound there
    failing: int = 0  # pods whose container cannot start (missing Secret, bad image, crash loop)
    failure_reason: str = ""
    failure_message: str = ""

    @classmethod
    def from_pods(cls, pods: Sequence[Mapping[str, Any]]) -> PodFacts:
        live = [
            p for p in pods
            if not (p.get("metadata") or {}).get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]  # fmt: skip
        nodes: dict[str, int] = {}
        unschedulable, message = 0, ""
        failing, f_reason, f_message = 0, "", ""
        for p in live:
            for cs in (p.get("status") or {}).get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in CONTAINER_FAILURES:
                    failing += 1
                    f_reason = f_reason or str(waiting["reason"])
                    f_message = f_message or str(waiting.get("message") or "")
                    break
            node = (p.get("spec") or {}).get("nodeName")
            if node:
                nodes[node] = nodes.get(node, 0) + 1
                continue
            for c in (p.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                    unschedulable += 1
                    message = message or str(c.get("message") or "")
        return cls(
            total=len(live),
            bound=sum(nodes.values()),
            unschedulable=unschedulable,
            scheduler_message=message,
            nodes=tuple(sorted(nodes.items())),
            failing=failing,
            failure_reason=f_reason,
            failure_message=f_message,
        )


def serving_conditions(
    placement: ServicePlacement,
    observed: Observed | None,
    target: int,
    pods: PodFacts | None = None,
) -> list[Condition]:
    """Ready / Placed / Progressing / Degraded from the plan, the Deployment and its pods.

    Honest by construction: Placed only when the plan placed every wanted replica and
    no pod waits for the scheduler; Ready never True while the service wants replicas
    and none is ready; Degraded while pods cannot be scheduled or replicas are short.
    """
    pods = pods or PodFacts()
    conds: list[Condition] = []
    unschedulable = (
        f"{pods.unschedulable} pod(s) cannot be scheduled: {pods.scheduler_message}"
        if pods.unschedulable
        else ""
    )
    failing = (
        f"{pods.failing} pod(s) cannot start ({pods.failure_reason}): {pods.failure_message}"
        if pods.failing
        else ""
    )
    if placement.option is None or placement.replicas_placed < placement.replicas_wanted:
        conds.append(Condition("Placed", "False", placement.reason, placement.message))
    elif pods.unschedulable:
        conds.append(Condition("Placed", "False", "Unschedulable", unschedulable))
    else:
        conds.append(Condition("Placed", "True", "Placed", placement.message))

    if observed is None:
        if placement.option is None:
            conds.append(Condition("Ready", "False", placement.reason, placement.message))
        else:
            conds.append(Condition("Ready", "False", "Creating", "the Deployment is being created"))
        conds.append(Condition("Progressing", "False", "NotStarted", "nothing to roll out"))
        conds.append(Condition("Degraded", "False", "AsExpected", ""))
        return conds

    rolled = (
        observed.observed_generation is not None
        and observed.generation is not None
        and observed.observed_generation >= observed.generation
    )
    settled = (
        rolled
        and observed.updated_replicas >= target
        and observed.ready_replicas >= target
        and observed.replicas == target
    )
    wanted = placement.replicas_wanted
    if target == 0 and wanted == 0:
        conds.append(Condition("Ready", "True", "ScaledToZero", "no replicas requested"))
    elif target == 0:
        # Wanted but nothing could be placed: never Ready.
        conds.append(Condition("Ready", "False", placement.reason, placement.message))
    elif observed.ready_replicas >= target and rolled:
        conds.append(
            Condition(
                "Ready",
                "True",
                "ReplicasReady",
                f"{observed.ready_replicas}/{target} replicas ready",
            )
        )
    elif observed.ready_replicas > 0:
        conds.append(
            Condition(
                "Ready",
                "True",
                "PartiallyReady",
                f"{observed.ready_replicas}/{target} replicas ready; serving while the rest start",
            )
        )
    elif pods.unschedulable and pods.bound == 0:
        conds.append(Condition("Ready", "False", "Unschedulable", unschedulable))
    elif pods.failing:
        conds.append(Condition("Ready", "False", pods.failure_reason, failing))
    else:
        reason = "ModelLoading" if observed.replicas > 0 else "WaitingForReplicas"
        conds.append(Condition("Ready", "False", reason, f"0/{target} replicas ready"))

    if settled:
        conds.append(
            Condition("Progressing", "False", "RolloutComplete", f"{target} replicas up to date")
        )
    else:
        conds.append(
            Condition(
                "Progressing",
                "True",
                "RollingOut",
                f"{observed.updated_replicas} updated, {observed.ready_replicas} ready of {target}",
            )
        )
    stalled = observed.condition("Progressing")
    failure = observed.condition("ReplicaFailure")
    if pods.unschedulable:
        conds.append(Condition("Degraded", "True", "Unschedulable", unschedulable))
    elif pods.failing:
        conds.append(Condition("Degraded", "True", pods.failure_reason, failing))
    elif stalled is not None and stalled.get("reason") == "ProgressDeadlineExceeded":
        conds.append(
            Condition(
                "Degraded", "True", "ProgressDeadlineExceeded", str(stalled.get("message", ""))
            )
        )
    elif failure is not None and failure.get("status") == "True":
        conds.append(
            Condition("Degraded", "True", "ReplicaFailure", str(failure.get("message", "")))
        )
    elif (
        placement.option is not None and placement.replicas_placed < placement.replicas_wanted
    ) or (placement.option is None and wanted > 0):
        conds.append(Condition("Degraded", "True", placement.reason, placement.message))
    else:
        conds.append(Condition("Degraded", "False", "AsExpected", ""))
    return conds


def compute_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int,
    name: str,
    placement: ServicePlacement | None,
    observed: Observed | None,
    target: int,
    revision: str | None,
    conditions: Sequence[Condition],
    now: str,
    gpu_product: str | None = None,
) -> dict[str, Any]:
    """The whole status block (fields the controller owns), conditions merged."""
    prev = dict(previous or {})
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": observed.replicas if observed else 0,
        "readyReplicas": observed.ready_replicas if observed else 0,
        "desiredReplicas": target,
        "selector": selector_string(name),
        "conditions": merge_conditions(
            prev.get("conditions"), conditions, generation=generation, now=now
        ),
    }
    if placement is not None:
        ps = placement_status(placement, gpu_product)
        if ps is not None:
            status["placement"] = ps
    if revision is not None:
        status["revision"] = revision
    return status


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing ``new`` would change what ``old`` says (fields of ``new`` only)."""
    return bool(changed_fields(old, new))


def changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """The top-level status fields that ``new`` would change, for logs."""
    old = old or {}
    return [k for k, v in new.items() if old.get(k) != v]


# --------------------------------------------------------------------------- autoscaling


def policy_config(isvc: InferenceService, base: PolicyConfig = DEFAULT_POLICY) -> PolicyConfig:
    """The autoscaling policy of one service: the knobs set in spec.scaling over ``base``
    (the operator-wide policy, ``kvpilot run --scaling-defaults``).

    A stable window set below the base's panic window, with the panic window unset,
    shortens the panic window to it (the panic window lies within the stable one).
    Raises ValueError naming the knobs when the merged policy is not valid.
    """
    overrides = isvc.spec.scaling.model_dump(by_alias=True, exclude_none=True)
    stable = overrides.get("stableWindowSeconds")
    if (
        stable is not None
        and "panicWindowSeconds" not in overrides
        and base.panic_window_seconds > stable
    ):
        overrides["panicWindowSeconds"] = stable
    try:
        config = base.with_overrides(overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
        raise ValueError(f"spec.scaling over the operator-wide policy: {problems}") from None
    batch = isvc.spec.runtime.max_num_seqs
    targets = config.targets
    if targets.concurrency_per_replica is None and batch is not None:
        # Size in-flight requests against the engine's batch limit the operator renders.
        derived = targets.model_copy(
            update={"concurrency_per_replica": batch * targets.batch_utilization}
        )
        config = config.model_copy(update={"targets": derived})
    return config


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    """One pydantic error as `knob: what is wrong`; a rule across knobs names them itself."""
    msg = msg.removeprefix("Value error, ")
    return f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg


def autoscaler_status(decision: Decision, now: str) -> dict[str, Any]:
    """status.autoscaler: the last decision, what it saw, and the state it keeps."""
    out: dict[str, Any] = {
        "lastDecisionTime": now,
        "reason": decision.reason[:1024],
        "desiredReplicas": decision.desired_replicas,
        "state": decision.state.to_dict(),
    }
    if decision.observed is not None:
        out["observed"] = decision.observed.to_status()
    return out


def scaling_condition(decision: Decision) -> Condition:
    """ScalingActive: True while the autoscaler acts on valid metrics."""
    return Condition(
        "ScalingActive",
        "True" if decision.scaling_active else "False",
        decision.condition_reason,
        decision.reason,
    )
