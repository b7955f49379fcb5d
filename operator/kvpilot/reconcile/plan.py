"""One reconcile as a pure function: what was observed in, what to do out.

The controller reads (the spec, this service's slice of the pool plan, the live
children from its caches, the previous status, the time), calls `plan_reconcile`,
and executes the result: server-side applies, one status patch, Events. Nothing
here talks to the API server, so every decision has a table test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kvpilot.api.parse import InferenceService
from kvpilot.conditions import Condition, find
from kvpilot.objects import contains, object_ref
from kvpilot.planning.placement import ServicePlacement
from kvpilot.reconcile.status import (
    Observed,
    PodFacts,
    compute_status,
    serving_conditions,
    status_changed,
)
from kvpilot.resources import desired_objects
from kvpilot.resources.labels import REVISION
from kvpilot.resources.plan import RenderPlan, render_plan

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


@dataclass(frozen=True)
class ReconcilePlan:
    """What to do: objects to apply (in order), the status to write (None: unchanged)."""

    apply: tuple[dict[str, Any], ...] = ()
    status: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()
    target_replicas: int = 0
    revision: str | None = None

    @property
    def writes(self) -> int:
        return len(self.apply) + (self.status is not None) + len(self.events)


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
        target = placement.replicas_placed + draining
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
        for obj in desired_objects(isvc, render):
            live = obs.children.get(obj["kind"])
            if live is not None and contains(live, obj):
                continue
            apply.append(obj)
            verb = "Created" if live is None else "Updated"
            events.append(
                Event(
                    "Normal",
                    f"{verb}{obj['kind']}",
                    f"{verb.lower()} {object_ref(obj)} ({_why(obj, render, live)})",
                )
            )
        if (
            placement.replicas_placed < placement.replicas_wanted
            and _reason(obs.previous, "Placed") != placement.reason
        ):
            events.append(Event("Warning", placement.reason, placement.message))
    observed = Observed.from_deployment(live_dep)
    if placement is None:
        conds = [Condition("Placed", "False", "Planning", "waiting for the pool plan")]
    else:
        conds = serving_conditions(placement, observed, target, PodFacts.from_pods(obs.pods))
        draining = draining_replicas(obs)
        if draining and placement.option is not None:
            conds = _maintenance(conds, placement, draining)
    status = compute_status(
        previous=obs.previous, generation=obs.generation, name=obs.name, placement=placement,
        observed=observed, target=target, revision=revision, conditions=conds, now=obs.now,
        gpu_product=obs.gpu_product,
    )  # fmt: skip
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
    )


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
