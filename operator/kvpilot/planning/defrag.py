"""Defragmentation: move running replicas so a waiting replica fits (make-before-break moves).

The placer keeps running replicas where they run, so a pool can hold enough free GPUs of a
type for a waiting replica while no single node has them (two 8-GPU nodes each running
three TP1 replicas leave no room for a TP8 one). `defragment` takes a finished plan and,
for each service left short, in priority order, looks for the node that is cheapest to
free: the fewest running replicas to move (then the fewest replicas, then GPUs, then the
node name), each of which must fit on another node of its GPU type. The moved replicas
keep their service's GPU type and TP; only their nodes change.

Rules: a preemptible service never causes moves (it takes only free capacity); moves
touch only services of the waiting service's priority or lower; nothing moves while no
service waits, so a settled pool never churns; and the search stops for a GPU type as
soon as its free GPUs cannot hold the replica or a replica as large already failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvpilot.planning.inventory import Inventory
from kvpilot.planning.placement import (
    Move,
    PlacementPlan,
    PlacementReason,
    ServiceDemand,
    ServicePlacement,
    plan_placement,
)
from kvpilot.planning.upgrade import upgrade


@dataclass(frozen=True)
class _Unit:
    """One replica on a candidate node: its service, GPUs, and whether it runs there."""

    service: str
    gpus: int
    running: bool


@dataclass(frozen=True)
class _Freeing:
    node: str
    cost: tuple[int, int, int, str]
    dests: tuple[tuple[_Unit, str], ...]


def plan_with_moves(
    demands: Sequence[ServiceDemand], inventory: Inventory, **kwargs: Any
) -> PlacementPlan:
    """`plan_placement`, then moves for what it left waiting (when moves are allowed), then
    the return of one running service to a better option (planning.upgrade)."""
    plan = plan_placement(demands, inventory, **kwargs)
    if kwargs.get("keep_running", True):
        if moves_allowed(demands):
            plan = defragment(plan, demands, inventory)
        plan = upgrade(plan, demands, inventory)
    return plan


def moves_allowed(demands: Sequence[ServiceDemand]) -> bool:
    """One set of moves at a time: none while a node is still being freed (claimed)."""
    return not any(d.claimed for d in demands)


def defragment(
    plan: PlacementPlan, demands: Sequence[ServiceDemand], inventory: Inventory
) -> PlacementPlan:
    """The plan with moves that place replicas it left short, when repacking frees a node."""
    by_name = {d.name: d for d in demands}
    short = sorted(
        (
            s
            for s in plan.services
            if s.option is not None
            and s.replicas_placed < s.replicas_wanted
            and not by_name[s.name].preemptible
        ),
        key=lambda s: (-s.priority, s.name),
    )
    if not short:
        return plan
    node_type = {n.name: n.gpu_type for n in inventory.usable_nodes}
    free = {n: c for n, c in plan.free if n in node_type}
    total: dict[str, int] = {}
    for n, c in free.items():
        t = node_type[n]
        assert t is not None
        total[t] = total.get(t, 0) + c
    if not any(total.get(s.gpu_type or "", 0) >= (s.gpus_per_replica or 0) for s in short):
        return plan
    state = _Layout(plan, by_name, node_type, free, total)
    for s in short:
        state.fill(s)
    if not state.moves:
        return plan
    return state.result()


class _Layout:
    """The plan's node layout, changed move by move."""

    def __init__(
        self,
        plan: PlacementPlan,
        demands: Mapping[str, ServiceDemand],
        node_type: Mapping[str, str | None],
        free: dict[str, int],
        total: dict[str, int],
    ) -> None:
        self.plan = plan
        self.demands = demands
        self.placements = {s.name: s for s in plan.services}
        self.node_type = node_type
        self.free = free
        self.total = total
        self.layout = {s.name: dict(s.nodes) for s in plan.services}
        self.running: dict[str, dict[str, int]] = {}
        for s in plan.services:
            run = demands[s.name].running
            if run is not None and (run.gpu_type, run.tensor_parallel) == (
                s.gpu_type,
                s.tensor_parallel,
            ):
                self.running[s.name] = dict(run.nodes)
        self.by_type: dict[str, list[str]] = {}
        for n in sorted(free):
            t = node_type[n]
            assert t is not None
            self.by_type.setdefault(t, []).append(n)
        self.occupants: dict[str, dict[str, int]] = {}
        for name, nodes in self.layout.items():
            for n, c in nodes.items():
                if n in free:
                    self.occupants.setdefault(n, {})[name] = c
        self.freed: dict[str, str] = {}  # node -> service it was freed for
        self.failed: dict[str, int] = {}  # GPU type -> smallest replica no node could be freed for
        self.moves: dict[tuple[str, str, str], dict[str, int]] = {}
        self.added: dict[str, int] = {}

    def fill(self, s: ServicePlacement) -> None:
        assert s.option is not None
        gpu_type, gpus = s.option.gpu_type, s.option.gpus_per_replica
        while s.replicas_placed + self.added.get(s.name, 0) < s.replicas_wanted:
            failed = self.failed.get(gpu_type)
            if self.total.get(gpu_type, 0) < gpus or (failed is not None and gpus >= failed):
                return
            best: _Freeing | None = None
            for node in self.by_type.get(gpu_type, []):
                found = self._freeing(node, s, gpus, best)
                if found is not None and (best is None or found.cost < best.cost):
                    best = found
            if best is None:
                self.failed[gpu_type] = gpus if failed is None else min(failed, gpus)
                return
            self._apply(best, s, gpus)

    def _freeing(
        self, node: str, s: ServicePlacement, gpus: int, best: _Freeing | None
    ) -> _Freeing | None:
        """The cheapest set of replicas to move off `node` so one replica of `s` fits."""
        if self.freed.get(node, s.name) != s.name:
            return None
        need = gpus - self.free[node]
        if need <= 0:
            return _Freeing(node, (0, 0, 0, node), ())
        units: list[_Unit] = []
        for name, count in self.occupants.get(node, {}).items():
            other = self.placements[name]
            if name == s.name or other.priority > s.priority or other.option is None:
                continue
            running = self.running.get(name, {}).get(node, 0)
            per = other.option.gpus_per_replica
            # Replicas the plan only adds here move for free; running ones cost a restart.
            units += [_Unit(name, per, False)] * max(0, count - running)
            units += [_Unit(name, per, True)] * min(count, running)
        if sum(u.gpus for u in units) < need:
            return None
        units.sort(key=lambda u: (u.running, -u.gpus, u.service))
        taken: list[_Unit] = []
        freed = 0
        for u in units:
            if freed >= need:
                break
            taken.append(u)
            freed += u.gpus
        cost_so_far = (sum(u.running for u in taken), len(taken), freed, node)
        if best is not None and cost_so_far >= best.cost:
            return None
        room = {
            n: c
            for n, c in self.free.items()
            if n != node and self.node_type[n] == self.node_type[node] and n not in self.freed
        }
        dests: list[tuple[_Unit, str]] = []
        for u in sorted(taken, key=lambda u: (-u.gpus, u.service)):
            fits = [n for n, c in room.items() if c >= u.gpus]
            if not fits:
                return None
            dest = min(fits, key=lambda n: (room[n], n))  # best fit
            room[dest] -= u.gpus
            dests.append((u, dest))
        return _Freeing(node, cost_so_far, tuple(dests))

    def _apply(self, f: _Freeing, s: ServicePlacement, gpus: int) -> None:
        node = f.node
        t = self.node_type[node]
        assert t is not None
        for u, dest in f.dests:
            self._shift(u.service, node, -1)
            self._shift(u.service, dest, +1)
            self.free[dest] -= u.gpus
            self.free[node] += u.gpus
            if u.running:
                key = (u.service, node, s.name)
                to = self.moves.setdefault(key, {})
                to[dest] = to.get(dest, 0) + 1
        self._shift(s.name, node, +1)
        self.free[node] -= gpus
        self.total[t] -= gpus
        self.freed[node] = s.name
        self.added[s.name] = self.added.get(s.name, 0) + 1

    def _shift(self, name: str, node: str, delta: int) -> None:
        nodes = self.layout[name]
        nodes[node] = nodes.get(node, 0) + delta
        if not nodes[node]:
            del nodes[node]
        occ = self.occupants.setdefault(node, {})
        occ[name] = occ.get(name, 0) + delta
        if not occ[name]:
            del occ[name]

    def result(self) -> PlacementPlan:
        moves = tuple(
            Move(
                service=service,
                from_node=node,
                replicas=sum(to.values()),
                to_nodes=tuple(sorted(to.items())),
                for_service=waiting,
                why=_why(self.placements[waiting], node),
            )
            for (service, node, waiting), to in sorted(self.moves.items())
        )
        notes: dict[str, list[str]] = {}
        for m in moves:
            to = ", ".join(n for n, _ in m.to_nodes)
            notes.setdefault(m.service, []).append(
                f"{m.replicas} replica(s) move from {m.from_node} to {to} "
                f"to free {m.from_node} for {m.for_service}"
            )
            notes.setdefault(m.for_service, []).append(
                f"{m.from_node} is freed for it: {m.service} moves {m.replicas} replica(s) first"
            )
        services = []
        for s in self.plan.services:
            nodes = tuple(sorted(self.layout[s.name].items()))
            if nodes == s.nodes and s.name not in notes:
                services.append(s)
                continue
            placed = sum(c for _, c in nodes)
            services.append(_placement(s, nodes, placed, notes.get(s.name, [])))
        return replace(
            self.plan,
            services=tuple(services),
            free=tuple(sorted({**dict(self.plan.free), **self.free}.items())),
            moves=moves,
        )


def _placement(
    s: ServicePlacement, nodes: tuple[tuple[str, int], ...], placed: int, notes: Sequence[str]
) -> ServicePlacement:
    assert s.option is not None
    reason: PlacementReason
    if placed > s.replicas_placed and placed >= s.replicas_wanted:
        reason = "Placed"
        message = (
            f"{placed} of {s.replicas_wanted} replicas placed on {s.option.gpu_type} "
            f"at TP{s.option.tensor_parallel}"
        )
    elif placed > s.replicas_placed:
        reason = s.reason
        message = (
            f"{placed} of {s.replicas_wanted} replicas placed on {s.option.gpu_type} "
            f"at TP{s.option.tensor_parallel} after moves; no node can be freed for more"
        )
    else:
        reason, message = s.reason, s.message
    if notes:
        message += "; " + "; ".join(notes)
    return replace(s, reason=reason, message=message, replicas_placed=placed, nodes=nodes)


def _why(waiting: ServicePlacement, node: str) -> str:
    gpus = waiting.gpus_per_replica or 0
    return (
        f"{waiting.name} (priority {waiting.priority}) needs {gpus} GPU"
        f"{'s' if gpus != 1 else ''} on one node for a TP{waiting.tensor_parallel} replica; "
        f"{node} is the cheapest node to free"
    )
