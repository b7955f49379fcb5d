"""One reconcile as a pure function: what was observed in, what to do out.

The controller reads (the spec, this service's slice of the pool plan, the live
children from its caches, the previous status, the time), calls `plan_reconcile`,
and executes the result: server-side applies, one status patch, Events. Nothing
here talks to the API server, so every decision has a table test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kvpilot.api.parse import InferenceService
from kvpilot.conditions import Condition, find
from kvpilot.objects import contains, object_ref
from kvpilot.planning.placement import ServicePlacement
from kvpilot.reconcile.moves import MoveStep, Reservation, move_step
from kvpilot.reconcile.quality import Admission, admissions
from kvpilot.reconcile.rollout import (
    LiveRevision,
    capacity_annotations,
    live_revisions,
    old_revision_state,
    revision_state,
    rollout_config,
    service_port,
    unscheduled_gpus,
)
from kvpilot.reconcile.status import (
    Observed,
    PodFacts,
    compute_status,
    serving_conditions,
    status_changed,
)
from kvpilot.resources import compute_revision, deployment_name, desired_objects
from kvpilot.resources.deployment import has_quality_gate
from kvpilot.resources.labels import REVISION
from kvpilot.resources.plan import RenderPlan, render_plan
from kvpilot.rollout.capacity import replica_capacity
from kvpilot.rollout.plan import Decision, RolloutInput, RolloutPlan, plan_rollout

EventType = Literal["Normal", "Warning"]

#: The kinds kvpilot renders for a service, in apply order.
CHILD_KINDS = ("Service", "PodDisruptionBudget", "Deployment")


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile looks at, read by the controller from its caches.

    ``isvc`` is None when the spec did not parse; ``invalid`` then says why.
    ``children``: kind -> the live object kvpilot owns under the child's name (None:
    absent). ``foreign``: kind -> a same-named object kvpilot does not own (it is
    never touched). ``placement``: this service's slice of the pool plan (None while
    the service is not in it). ``gpu_product``: the node label value of its GPU type.
    """

    namespace: str
    name: str
    generation: int
    previous: Mapping[str, Any]
    now: str
    isvc: InferenceService | None = None
    invalid: str | None = None
    placement: ServicePlacement | None = None
    gpu_product: str | None = None
    children: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    foreign: Mapping[str, str] = field(default_factory=dict)
    scheduler_name: str | None = None
    pods: tuple[Mapping[str, Any], ...] = ()
    draining_nodes: frozenset[str] = frozenset()
    #: every Deployment of the service (one per live revision); empty: children's only
    deployments: tuple[Mapping[str, Any], ...] = ()
    #: free GPUs per GPU type now, counting every pod (what a surge can use)
    free_gpus: Mapping[str, int] = field(default_factory=dict)
    #: the canary analysis decision and the quality gate result (None: none yet)
    analysis: Decision | None = None
    analysis_message: str = ""
    #: the canary analysis state to store in status.revisions.analysis, and its Events
    analysis_state: Mapping[str, Any] | None = None
    analysis_events: tuple[Event, ...] = ()
    quality: bool | None = None
    quality_message: str = ""
    reservations: tuple[Reservation, ...] = ()
    #: a quality gate run this reconcile made (status.revisions.quality), None: none
    quality_record: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ReconcilePlan:
    """What to do: objects to apply (in order), the status to write (None: unchanged)."""

    apply: tuple[dict[str, Any], ...] = ()
    status: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()
    target_replicas: int = 0
    revision: str | None = None
    #: (Deployment name, replicas) of older revisions the rollout resizes
    scale: tuple[tuple[str, int], ...] = ()
    #: Deployments of retired revisions, to delete
    delete: tuple[str, ...] = ()
    rollout: RolloutPlan | None = None
    #: pods to annotate with the leaving pod-deletion-cost before a move scales down
    mark_leaving: tuple[str, ...] = ()
    #: gated pods whose quality-gate condition to set True (they may take traffic)
    admit: tuple[Admission, ...] = ()

    @property
    def writes(self) -> int:
        return (
            len(self.apply) + (self.status is not None) + len(self.events) + len(self.scale)
            + len(self.delete) + len(self.mark_leaving) + len(self.admit)
        )  # fmt: skip


def plan_reconcile(obs: Observation) -> ReconcilePlan:
    """The one decision of a reconcile (pure; see the module docstring)."""
    if obs.isvc is None:
        return _refused(obs, "InvalidSpec", obs.invalid or "the spec is not valid")
    if obs.foreign:
        names = ", ".join(
            f"{kind} {obs.namespace}/{ref}" for kind, ref in sorted(obs.foreign.items())
        )
        return _refused(
            obs,
            "NameConflict",
            f"{names} already exists and is not owned by this InferenceService; kvpilot "
            "leaves it untouched: delete or rename it, or give the InferenceService another name",
            placed=False,
        )
    isvc, placement = obs.isvc, obs.placement
    events: list[Event] = []
    live_dep = obs.children.get("Deployment")
    revision = obs.previous.get("revision")
    apply: list[dict[str, Any]] = []
    scale: list[tuple[str, int]] = []
    delete: list[str] = []
    rollout: RolloutPlan | None = None
    step = MoveStep()
    # None during a rollout (which replaces pods itself).
    if placement is not None and placement.option is not None and len(obs.deployments) <= 1:
        # Pods on draining nodes are counted once, as maintenance (below).
        pods = [
            p for p in obs.pods if (p.get("spec") or {}).get("nodeName") not in obs.draining_nodes
        ]
        step = move_step(
            f"{obs.namespace}/{obs.name}", placement, pods, obs.reservations, obs.previous
        )
        events.extend(Event("Normal", reason, message) for reason, message in step.events)
    if placement is None or placement.option is None:
        # Nothing fits (or not planned yet): create nothing; what already serves keeps serving.
        target = int((live_dep or {}).get("spec", {}).get("replicas", 0) or 0)
        if placement is not None and _reason(obs.previous, "Placed") != placement.reason:
            events.append(Event("Warning", placement.reason, placement.message))
    else:
        option = placement.option
        # Replicas on nodes under maintenance keep serving: the plan places replacements
        # elsewhere and they are added on top (make before break), never subtracted.
        draining = draining_replicas(obs)
        # Replicas leaving a node freed for another service likewise (reconcile.moves).
        target = placement.replicas_placed + draining + step.extra
        if draining and _reason(obs.previous, "Progressing") != "NodeMaintenance":
            events.append(
                Event(
                    "Normal",
                    "NodeMaintenance",
                    f"{draining} replica(s) on cordoned or unready nodes keep serving; "
                    f"{placement.replicas_placed} planned on schedulable nodes",
                )
            )
        product = obs.gpu_product or option.gpu_type
        render = render_plan(
            isvc,
            tensor_parallel=option.tensor_parallel,
            gpu_product=product,
            replicas=target,
            gpus_per_replica=option.gpus_per_replica,
            scheduler_name=obs.scheduler_name,
        )
        revision = render.revision
        deps = obs.deployments or tuple(d for d in (live_dep,) if d is not None)
        live = live_revisions(deps)
        cap = replica_capacity(option.memory)
        t_live = live.get(revision)
        t_state = revision_state(
            t_live, revision, pods=obs.pods, capacity=cap,
            gpus_per_replica=option.gpus_per_replica, now=obs.now,
        )  # fmt: skip
        olds = tuple(
            old_revision_state(lr, obs.pods, cap, option.gpus_per_replica, obs.now)
            for rev, lr in live.items()
            if rev != revision
        )
        prev_rev: Mapping[str, Any] = obs.previous.get("revisions") or {}
        failed: Mapping[str, Any] = prev_rev.get("failed") or {}
        rollout = plan_rollout(
            RolloutInput(
                target=t_state,
                wanted=target,
                live=olds,
                stable=prev_rev.get("stable"),
                baseline=prev_rev.get("baselineCapacity") if prev_rev.get("canary") else None,
                failed=failed.get("revision"),
                failed_reason=failed.get("reason"),
                free_gpus=max(
                    0, obs.free_gpus.get(option.gpu_type, 0) - unscheduled_gpus(obs.pods, deps)
                ),
                config=rollout_config(isvc.spec.rollout),
                analysis=obs.analysis,
                analysis_message=obs.analysis_message,
                quality=obs.quality,
                quality_message=obs.quality_message,
                previous_phase=prev_rev.get("phase"),
                surge_blocked=bool(prev_rev.get("surgeBlocked"))
                and prev_rev.get("canary") == revision,
            )
        )
        target = rollout.replicas.get(revision, 0)
        render = replace(render, replicas=target)
        stable_live = live.get(rollout.stable)
        port = None
        if rollout.stable != revision and stable_live is not None:
            port = service_port(stable_live.deployment)
        dep_name = t_live.name if t_live is not None else deployment_name(isvc.name, revision)
        objects = desired_objects(
            isvc, render, deployment=dep_name, port=port, annotations=capacity_annotations(cap),
            quality_gate=quality_gated(isvc, t_live, live, revision),
        )  # fmt: skip
        if t_live is None and rollout.failed is not None and rollout.failed[0] == revision:
            objects = objects[:-1]  # a failed revision gets no Deployment again
        for obj in objects:
            live_obj = (
                t_live.deployment if obj["kind"] == "Deployment" and t_live is not None
                else obs.children.get(obj["kind"]) if obj["kind"] != "Deployment" else None
            )  # fmt: skip
            if live_obj is not None and contains(live_obj, obj):
                continue
            apply.append(obj)
            verb = "Created" if live_obj is None else "Updated"
            events.append(
                Event(
                    "Normal",
                    f"{verb}{obj['kind']}",
                    f"{verb.lower()} {object_ref(obj)} ({_why(obj, render, live_obj)})",
                )
            )
        for rev, lr in live.items():
            if rev == revision or rev in rollout.retire:
                continue
            want = rollout.replicas.get(rev, 0)
            if int((lr.deployment.get("spec") or {}).get("replicas") or 0) != want:
                scale.append((lr.name, want))
        # The spec's own revision keeps its Deployment, unless it was rolled back.
        rolled_back = rollout.failed[0] if rollout.failed is not None else None
        delete = [
            live[r].name
            for r in rollout.retire
            if r in live and (r != revision or r == rolled_back)
        ]
        events.extend(obs.analysis_events)
        rec = obs.quality_record
        if rec is not None and rec.get("passed"):
            # A failed gate is told by the rollback's Warning Event.
            events.append(
                Event("Normal", str(rec["reason"]), f"{rec['revision']}: {rec['message']}")
            )
        move = placement.type_move
        if (
            move is not None
            and move.reason == "BetterGPUType"
            and obs.previous.get("revision") != revision
        ):
            events.append(Event("Normal", "BetterGPUType", move.sentence()))
        events.extend(Event(e.type, e.reason, e.message) for e in rollout.events)
        if (
            placement.replicas_placed < placement.replicas_wanted
            and _reason(obs.previous, "Placed") != placement.reason
        ):
            events.append(Event("Warning", placement.reason, placement.message))
    observed = combined_observed(obs.deployments) if obs.deployments else None
    observed = observed or Observed.from_deployment(live_dep)
    total = target if rollout is None else sum(rollout.replicas.values())
    if placement is None:
        conds = [Condition("Placed", "False", "Planning", "waiting for the pool plan")]
    else:
        conds = serving_conditions(placement, observed, total, PodFacts.from_pods(obs.pods))
        draining = draining_replicas(obs)
        if draining and placement.option is not None:
            conds = _maintenance(conds, placement, draining)
        conds = step.conditions(conds)
        if rollout is not None and rollout.phase != "Stable":
            conds = [c for c in conds if c.type != "Progressing"]
            done = rollout.phase == "RolledBack"
            message = rollout.message
            if placement.type_move is not None and not done:
                # A change of GPU type: say from where to where and why, then the step.
                message = f"{placement.type_move.sentence()}; {message}"
            conds.append(
                Condition("Progressing", "False" if done else "True", rollout.reason, message)
            )
    status = compute_status(
        previous=obs.previous, generation=obs.generation, name=obs.name, placement=placement,
        observed=observed, target=total, revision=revision, conditions=conds, now=obs.now,
        gpu_product=obs.gpu_product,
    )  # fmt: skip
    if rollout is not None:
        status["revisions"] = revisions_status(
            obs.previous, rollout, obs.now, quality=obs.quality_record
        )
        if obs.analysis_state and status["revisions"].get("canary") == obs.analysis_state.get(
            "revision"
        ):
            status["revisions"]["analysis"] = dict(obs.analysis_state)
    elif "revisions" in obs.previous:
        status["revisions"] = dict(obs.previous["revisions"])
    admit = admissions(
        isvc.spec.rollout.quality_gate.enabled, status.get("revisions") or {}, obs.pods
    )
    new_status: dict[str, Any] | None = None
    if status_changed(obs.previous, status):
        new_status = status
        events.extend(_ready_event(obs.previous, conds))
    return ReconcilePlan(
        apply=tuple(apply),
        status=new_status,
        events=tuple(events),
        target_replicas=target,
        revision=revision,
        scale=tuple(scale),
        delete=tuple(delete),
        rollout=rollout,
        mark_leaving=step.mark,
        admit=admit,
    )


def target_revision(
    isvc: InferenceService, placement: ServicePlacement | None, gpu_product: str | None
) -> str | None:
    """The revision the spec asks for, once the pool plan placed it: its Deployment
    (`<service>-<revision>`) is what the reconcile creates, so the controller checks that
    nobody else holds that name."""
    if placement is None or placement.option is None:
        return None
    option = placement.option
    return compute_revision(
        isvc.spec,
        tensor_parallel=option.tensor_parallel,
        gpus_per_replica=option.gpus_per_replica,
        gpu_product=gpu_product or option.gpu_type,
    )


def quality_gated(
    isvc: InferenceService,
    t_live: LiveRevision | None,
    live: Mapping[str, LiveRevision],
    revision: str,
) -> bool:
    """Whether the Deployment of `revision` carries the quality gate's readinessGate.

    A live Deployment keeps what it was created with: adding or removing the gate
    changes the pod template and would restart every replica, the stable ones after a
    promotion included. A new one gets it when the gate is on and another revision is
    live to compare with (the first revision of a service has nothing to wait for).
    """
    if t_live is not None:
        return has_quality_gate(t_live.deployment)
    return isvc.spec.rollout.quality_gate.enabled and any(r != revision for r in live)


def combined_observed(deployments: Sequence[Mapping[str, Any]]) -> Observed | None:
    """One Observed over every revision's Deployment (counts summed)."""
    parts = [o for d in deployments if (o := Observed.from_deployment(d)) is not None]
    if not parts:
        return None
    rolled = all(
        o.observed_generation is not None
        and o.generation is not None
        and o.observed_generation >= o.generation
        for o in parts
    )
    return Observed(
        generation=1,
        observed_generation=1 if rolled else 0,
        replicas=sum(o.replicas for o in parts),
        ready_replicas=sum(o.ready_replicas for o in parts),
        updated_replicas=sum(o.updated_replicas for o in parts),
        spec_replicas=sum(o.spec_replicas for o in parts),
        conditions=(),
    )


def revisions_status(
    previous: Mapping[str, Any],
    rollout: RolloutPlan,
    now: str,
    *,
    quality: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """status.revisions: stable, canary and progress; the gates' state carried over while
    the same canary rolls out. The quality gate's record (``quality``: this reconcile's
    run) stays while its revision is the canary, the stable revision it was promoted to,
    or the revision it rolled back."""
    prev: Mapping[str, Any] = previous.get("revisions") or {}
    out: dict[str, Any] = {"stable": rollout.stable, "phase": rollout.phase}
    if rollout.canary is not None:
        out["canary"] = rollout.canary
        out["canaryWeight"] = rollout.canary_weight or 0
        if rollout.step:
            out["step"] = rollout.step
        if rollout.baseline is not None:
            out["baselineCapacity"] = round(rollout.baseline, 1)
        if rollout.surge_blocked:
            out["surgeBlocked"] = True
        if prev.get("canary") == rollout.canary:
            for key in ("analysis", "quality"):
                if prev.get(key):
                    out[key] = prev[key]
    out["readyCapacity"] = round(rollout.ready_capacity, 1)
    if rollout.failed is not None:
        rev, reason, message = rollout.failed
        old = prev.get("failed") or {}
        stamp = old.get("time") if old.get("revision") == rev else now
        out["failed"] = {"revision": rev, "reason": reason, "message": message[:4096],
                         "time": stamp}  # fmt: skip
    elif prev.get("failed"):
        out["failed"] = prev["failed"]
    record = quality or prev.get("quality") or {}
    if record and record.get("revision") in (
        rollout.canary,
        rollout.stable,
        (out.get("failed") or {}).get("revision"),
    ):
        out["quality"] = dict(record)
    return out


def draining_replicas(obs: Observation) -> int:
    """The service's live pods on nodes that take no new replicas."""
    return sum(
        1
        for p in obs.pods
        if (p.get("spec") or {}).get("nodeName") in obs.draining_nodes
        and not (p.get("metadata") or {}).get("deletionTimestamp")
    )


def _maintenance(
    conds: list[Condition], placement: ServicePlacement, draining: int
) -> list[Condition]:
    """Progressing (and Degraded when replacements do not fit) while nodes drain."""
    short = placement.replicas_wanted - placement.replicas_placed
    out = [c for c in conds if c.type not in ("Progressing", "Degraded")]
    out.append(
        Condition(
            "Progressing",
            "True",
            "NodeMaintenance",
            f"{draining} replica(s) on cordoned or unready nodes; replacements start on "
            "schedulable nodes before they go",
        )
    )
    if short > 0:
        out.append(
            Condition(
                "Degraded",
                "True",
                "NoCapacityForReplacements",
                f"{short} replacement(s) fit nowhere else; the {draining} replica(s) on "
                "cordoned or unready nodes keep serving until drained",
            )
        )
    else:
        degraded = next((c for c in conds if c.type == "Degraded"), None)
        out.append(degraded or Condition("Degraded", "False", "AsExpected", ""))
    return out


def _refused(obs: Observation, reason: str, message: str, *, placed: bool = False) -> ReconcilePlan:
    """Nothing is applied; Ready (and Placed) False with the reason, one Warning on change."""
    conds = [Condition("Ready", "False", reason, message)]
    if not placed:
        conds.append(Condition("Placed", "False", reason, message))
    live_dep = obs.children.get("Deployment")
    observed = Observed.from_deployment(live_dep)
    status = compute_status(
        previous=obs.previous, generation=obs.generation, name=obs.name, placement=None,
        observed=observed, target=observed.spec_replicas if observed else 0,
        revision=obs.previous.get("revision"), conditions=conds, now=obs.now,
    )  # fmt: skip
    if not status_changed(obs.previous, status):
        return ReconcilePlan(target_replicas=observed.spec_replicas if observed else 0)
    return ReconcilePlan(
        status=status,
        events=(Event("Warning", reason, message),),
        target_replicas=observed.spec_replicas if observed else 0,
    )


def _ready_event(previous: Mapping[str, Any], conds: list[Condition]) -> list[Event]:
    old = find(previous.get("conditions"), "Ready")
    new = (
        next(c for c in conds if c.type == "Ready")
        if any(c.type == "Ready" for c in conds)
        else None
    )
    if new is None or (old is not None and old.get("status") == new.status):
        return []
    etype: EventType = "Normal" if new.status == "True" or old is None else "Warning"
    return [Event(etype, new.reason, f"Ready={new.status}: {new.message}")]


def _why(obj: Mapping[str, Any], plan: RenderPlan, live: Mapping[str, Any] | None) -> str:
    if obj["kind"] != "Deployment":
        return "owned object"
    if live is None:
        return (
            f"revision {plan.revision}, {plan.replicas} replica(s), "
            f"TP {plan.tensor_parallel} on {plan.gpu_product}"
        )
    old_rev = (
        live.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).get(REVISION)
    )
    if old_rev != plan.revision:
        return f"revision {old_rev} -> {plan.revision}"
    old_replicas = live.get("spec", {}).get("replicas")
    if old_replicas != plan.replicas:
        return f"replicas {old_replicas} -> {plan.replicas}"
    return "repaired drift"


def _reason(status: Mapping[str, Any], ctype: str) -> str | None:
    c = find(status.get("conditions"), ctype)
    return None if c is None else str(c.get("reason"))
