"""Make-before-break moves, derived from what is observed (pure).

When the pool plan has moves (planning.defrag), the controller reserves each node to free
for the waiting service with the `kvpilot.io/reserved=<namespace>.<name>:NoSchedule` taint:
only that service's pods tolerate it, so nothing else lands there meanwhile. From then on
every step follows from the cluster, so an operator restart mid-move converges:

1. A service with live pods on a node reserved for another service is *moving*: the pool
   plan leaves those pods out of where it runs, places the service's replicas elsewhere,
   and the reconcile keeps them on top (Deployment replicas = planned + leaving).
2. Once the replicas elsewhere are Ready (as many as planned), the leaving pods get
   `controller.kubernetes.io/pod-deletion-cost` below every other pod's, and only when
   every leaving pod carries it does the Deployment scale back to the planned count: the
   ReplicaSet removes exactly them. The ready count never drops below the plan's.
3. The waiting service's pod lands on the freed node; the reservation is removed as soon
   as the service has every planned replica bound there, or when the plan no longer puts
   it there (deleted, scaled down, outranked), so none is left behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvpilot.api.names import (
    INFERENCE_SERVICE,
    POD_DELETION_COST,
    RESERVED_TAINT,
    reservation_value,
)
from kvpilot.conditions import Condition, find
from kvpilot.planning.placement import PlacementPlan, ServicePlacement

#: pod-deletion-cost of a replica that leaves: below the default 0 of every other pod
LEAVING_COST = "-1000"


@dataclass(frozen=True)
class Reservation:
    """A node kvpilot frees for one service, as its taint and the pods on it say.

    `owner` is the service's plan key (None when the taint names no current service);
    `occupants`: other services' live pods still on the node; `owner_bound`: the owner's
    pods already bound there.
    """

    node: str
    value: str
    owner: str | None
    occupants: tuple[tuple[str, int], ...] = ()
    owner_bound: int = 0
    why: str = ""


@dataclass(frozen=True)
class TaintWrite:
    """Add (value set) or remove (value None) the reservation taint of one node."""

    node: str
    value: str | None
    message: str


def reservation_of(node: Mapping[str, Any]) -> str | None:
    """The reservation taint's value on a node, or None."""
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("key") == RESERVED_TAINT:
            return str(taint.get("value") or "")
    return None


def with_reservation(
    taints: Sequence[Mapping[str, Any]], value: str | None
) -> list[dict[str, Any]]:
    """A node's taints with the reservation set to `value` (None: removed), others kept."""
    out = [dict(t) for t in taints if t.get("key") != RESERVED_TAINT]
    if value is not None:
        out.append({"key": RESERVED_TAINT, "value": value, "effect": "NoSchedule"})
    return out


def affected(before: Sequence[Reservation], after: Sequence[Reservation]) -> set[str]:
    """Services whose step in a move may differ between two sets of reservations."""
    if tuple(before) == tuple(after):
        return set()
    out: set[str] = set()
    for r in (*before, *after):
        if r.owner:
            out.add(r.owner)
        out.update(s for s, _ in r.occupants)
    return out


def pod_service(pod: Mapping[str, Any]) -> str | None:
    """`namespace/name` of the InferenceService a kvpilot pod serves."""
    meta = pod.get("metadata") or {}
    name = (meta.get("labels") or {}).get(INFERENCE_SERVICE)
    return f"{meta.get('namespace') or 'default'}/{name}" if name else None


def _live(pod: Mapping[str, Any]) -> bool:
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and (
        pod.get("status") or {}
    ).get("phase") not in ("Succeeded", "Failed")


def find_reservations(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], keys: Iterable[str]
) -> tuple[Reservation, ...]:
    """Reserved nodes and what is on them; `keys` are the plan keys of known services."""
    owners = {reservation_value(*k.split("/", 1)): k for k in keys}
    found = {}
    for node in nodes:
        value = reservation_of(node)
        if value is not None:
            found[str((node.get("metadata") or {}).get("name"))] = value
    if not found:
        return ()
    on: dict[str, dict[str, int]] = {n: {} for n in found}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        service = pod_service(pod)
        if node_name in on and service and _live(pod):
            on[node_name][service] = on[node_name].get(service, 0) + 1
    out = []
    for node_name, value in sorted(found.items()):
        owner = owners.get(value)
        here = on[node_name]
        out.append(
            Reservation(
                node=node_name,
                value=value,
                owner=owner,
                occupants=tuple(sorted((s, c) for s, c in here.items() if s != owner)),
                owner_bound=here.get(owner, 0) if owner else 0,
            )
        )
    return tuple(out)


def leaving(pod: Mapping[str, Any], reserved: Mapping[str, str | None]) -> bool:
    """A pod on a node reserved for another service: it goes once its replacement is Ready."""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    return node in reserved and reserved[node] != pod_service(pod)


def claims(reservations: Sequence[Reservation]) -> dict[str, tuple[str, ...]]:
    """Service -> nodes being freed for it (what the planner places it on first)."""
    out: dict[str, list[str]] = {}
    for r in reservations:
        if r.owner is not None:
            out.setdefault(r.owner, []).append(r.node)
    return {k: tuple(v) for k, v in out.items()}


def with_why(reservations: Sequence[Reservation], plan: PlacementPlan) -> tuple[Reservation, ...]:
    """Reservations with the reason the owner needs the node, from the owner's placement."""
    by_name = {s.name: s for s in plan.services}
    out = []
    for r in reservations:
        owner = by_name.get(r.owner or "")
        if owner is not None and owner.option is not None:
            gpus = owner.option.gpus_per_replica
            why = (
                f"{owner.name} needs {gpus} GPU{'s' if gpus != 1 else ''} on one node "
                f"for a TP{owner.option.tensor_parallel} replica"
            )
            out.append(replace(r, why=why))
        else:
            out.append(r)
    return tuple(out)


def taint_writes(plan: PlacementPlan, reservations: Sequence[Reservation]) -> list[TaintWrite]:
    """Reservations to add for the plan's moves and to remove when done or stale."""
    by_name = {s.name: s for s in plan.services}
    reserved = {r.node for r in reservations}
    out: list[TaintWrite] = []
    for r in reservations:
        owner = by_name.get(r.owner or "")
        planned = dict(owner.nodes).get(r.node, 0) if owner is not None else 0
        if r.owner is None:
            out.append(TaintWrite(r.node, None, f"{r.value} is no current InferenceService"))
        elif planned == 0:
            out.append(TaintWrite(r.node, None, f"the plan no longer puts {r.owner} on {r.node}"))
        elif r.owner_bound >= planned:
            out.append(
                TaintWrite(r.node, None, f"{r.owner} runs its {planned} replica(s) on {r.node}")
            )
    for m in plan.moves:
        if m.from_node in reserved:
            continue
        reserved.add(m.from_node)
        ns, name = m.for_service.split("/", 1)
        out.append(
            TaintWrite(
                m.from_node,
                reservation_value(ns, name),
                f"freeing {m.from_node} for {m.for_service}: {m.describe()}",
            )
        )
    return out


@dataclass(frozen=True)
class MoveStep:
    """One reconcile's part in moves: replicas kept on top, pods to mark, status, Events."""

    extra: int = 0
    mark: tuple[str, ...] = ()  # pod names to give the leaving deletion cost
    condition: Condition | None = None
    placed: Condition | None = None
    events: tuple[tuple[str, str], ...] = ()  # (reason, message), type Normal

    def conditions(self, conds: list[Condition]) -> list[Condition]:
        replaced = {c.type for c in (self.condition, self.placed) if c is not None}
        out = [c for c in conds if c.type not in replaced]
        out.extend(c for c in (self.placed, self.condition) if c is not None)
        return out


def move_step(
    key: str,
    placement: ServicePlacement,
    pods: Sequence[Mapping[str, Any]],
    reservations: Sequence[Reservation],
    previous: Mapping[str, Any],
) -> MoveStep:
    """This service's step in moves (as the mover, or as the service a node is freed for)."""
    reserved = {r.node: r.owner for r in reservations}
    live = [p for p in pods if _live(p)]
    going = [p for p in live if leaving(p, reserved)]
    mine = [r for r in reservations if r.owner == key and r.occupants]
    if going:
        return _moving(placement, live, going, reservations, previous)
    if mine:
        return _waiting(mine, previous)
    return MoveStep()


def _moving(
    placement: ServicePlacement,
    live: Sequence[Mapping[str, Any]],
    going: Sequence[Mapping[str, Any]],
    reservations: Sequence[Reservation],
    previous: Mapping[str, Any],
) -> MoveStep:
    names = {_name(p) for p in going}
    ready_elsewhere = sum(1 for p in live if _name(p) not in names and _ready(p))
    from_nodes = sorted({(p.get("spec") or {}).get("nodeName") or "" for p in going})
    to_nodes = ", ".join(n for n, _ in placement.nodes) or "other nodes"
    by_node = {r.node: r for r in reservations}
    why = "; ".join(
        f"{n} is freed for {by_node[n].owner}" + (f" ({by_node[n].why})" if by_node[n].why else "")
        for n in from_nodes
    )
    what = f"{len(going)} replica(s) move from {', '.join(from_nodes)} to {to_nodes}"
    events: list[tuple[str, str]] = []
    if ready_elsewhere < placement.replicas_placed:
        message = (
            f"{what}: {why}; {ready_elsewhere}/{placement.replicas_placed} replicas Ready on "
            "their planned nodes, the old ones serve until the replacements are Ready"
        )
        if _reason(previous, "Progressing") != "Moving":
            events.append(("Moving", f"{what}: {why}; replacements start first"))
        return MoveStep(
            extra=len(going),
            condition=Condition("Progressing", "True", "Moving", message),
            events=tuple(events),
        )
    unmarked = tuple(
        sorted(
            _name(p)
            for p in going
            if ((p.get("metadata") or {}).get("annotations") or {}).get(POD_DELETION_COST)
            != LEAVING_COST
        )
    )
    message = (
        f"{what}: {why}; the {placement.replicas_placed} replacement(s) are Ready, "
        f"removing the {len(going)} old replica(s)"
    )
    if _reason(previous, "Progressing") != "RemovingMovedReplicas":
        events.append(("RemovingMovedReplicas", message))
    return MoveStep(
        # Scale down only once the ReplicaSet can tell which pods go.
        extra=len(going) if unmarked else 0,
        mark=unmarked,
        condition=Condition("Progressing", "True", "RemovingMovedReplicas", message),
        events=tuple(events),
    )


def _waiting(mine: Sequence[Reservation], previous: Mapping[str, Any]) -> MoveStep:
    parts = [
        f"{r.node} is being freed for this service: "
        + ", ".join(f"{s} moves {c} replica(s)" for s, c in r.occupants)
        + " off it first (make before break)"
        for r in mine
    ]
    message = "; ".join(parts)
    events = (
        (("WaitingForMove", message),)
        if _reason(previous, "Progressing") != "WaitingForMove"
        else ()
    )
    return MoveStep(
        condition=Condition("Progressing", "True", "WaitingForMove", message),
        placed=Condition("Placed", "False", "WaitingForMove", message),
        events=events,
    )


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "")


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _reason(status: Mapping[str, Any], ctype: str) -> str | None:
    c = find(status.get("conditions"), ctype)
    return None if c is None else str(c.get("reason"))
