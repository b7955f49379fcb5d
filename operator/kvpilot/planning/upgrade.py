"""Upgrades: a running service returns to a better option of its own once it frees up.

The placer keeps a running service on its GPU type (a move restarts every replica), so a
service placed on a fallback option (its preferred type was full, or the cheaper option
had no room) would stay there after the better one frees up. `upgrade` takes a finished
plan and moves one such service to the best option earlier in its own option list (the
order the planner prefers: `placement.gpuTypes`, else replica cost) when:

- no service is short: nothing waits, so an upgrade never takes capacity anyone needs;
- that option's GPU type has free GPUs, node by node, for all the service's wanted
  replicas while its current ones keep theirs: the rollout that carries the change out
  surges onto them and removes the old replicas only once the new ones are Ready;
- no other change of GPU type, node move or reservation is under way;
- the option's revision has not failed a rollout before (`ServiceDemand.avoid`).

At most one service moves per plan, the highest priority first (then by name), so the
pool changes one step at a time; a service already on its best option never moves, so a
settled pool never churns. The old replicas' GPUs stay counted as used in the plan until
they go (`RunningReplicas.leaving`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from kvpilot.planning.inventory import Inventory
from kvpilot.planning.placement import (
    PlacementPlan,
    ServiceDemand,
    ServicePlacement,
    TypeMove,
)
from kvpilot.planning.tp import FitOption, ModelFits


def upgrades_allowed(plan: PlacementPlan, demands: Sequence[ServiceDemand]) -> bool:
    """One step at a time, and never while anyone waits."""
    if plan.moves or plan.type_moves or any(d.claimed for d in demands):
        return False
    if any(d.running is not None and d.running.leaving for d in demands):
        return False
    return not any(
        s.option is not None and s.replicas_placed < s.replicas_wanted for s in plan.services
    )


def upgrade(
    plan: PlacementPlan, demands: Sequence[ServiceDemand], inventory: Inventory
) -> PlacementPlan:
    """The plan with at most one running service moved to a better option of its own."""
    if not upgrades_allowed(plan, demands):
        return plan
    by_name = {d.name: d for d in demands}
    node_type = {n.name: n.gpu_type for n in inventory.usable_nodes}
    free = {n: c for n, c in plan.free if n in node_type}
    for s in sorted(plan.services, key=lambda s: (-s.priority, s.name)):
        d = by_name[s.name]
        better = _better_options(s, d)
        for option in better:
            nodes = _best_fit(free, node_type, option, s.replicas_wanted)
            if nodes is not None:
                return _apply(plan, s, option, nodes, free)
    return plan


def _better_options(s: ServicePlacement, d: ServiceDemand) -> list[FitOption]:
    """The options ranked before the one the service runs on (empty: none, or it is not
    simply running where it is planned)."""
    run = d.running
    if (
        run is None
        or run.replicas == 0
        or s.option is None
        or s.replicas_wanted == 0
        or not isinstance(d.fit, ModelFits)
        or (run.gpu_type, run.tensor_parallel) != (s.gpu_type, s.tensor_parallel)
        or s.option not in d.fit.options
    ):
        return []
    return [
        o
        for o in d.fit.options[: d.fit.options.index(s.option)]
        if (o.gpu_type, o.tensor_parallel) not in d.avoid
    ]


def _best_fit(
    free: Mapping[str, int], node_type: Mapping[str, str | None], option: FitOption, count: int
) -> dict[str, int] | None:
    """Nodes for `count` replicas of `option`, best fit each (fewest GPUs left, then name);
    None when they do not all fit."""
    room = {n: c for n, c in free.items() if node_type[n] == option.gpu_type}
    gpus = option.gpus_per_replica
    out: dict[str, int] = {}
    for _ in range(count):
        fits = [n for n, c in room.items() if c >= gpus]
        if not fits:
            return None
        node = min(fits, key=lambda n: (room[n], n))
        room[node] -= gpus
        out[node] = out.get(node, 0) + 1
    return out


def _apply(
    plan: PlacementPlan,
    s: ServicePlacement,
    option: FitOption,
    nodes: Mapping[str, int],
    free: Mapping[str, int],
) -> PlacementPlan:
    assert s.option is not None
    count = s.replicas_wanted
    old = (s.option.gpu_type, s.option.tensor_parallel)
    new = (option.gpu_type, option.tensor_parallel)
    why = (
        f"{option.gpu_type} ranks before {old[0]} in its options and now has room for all "
        f"{count} replica(s) with no service waiting; the new replicas start before the old "
        "ones go"
    )
    move = TypeMove(s.name, old, new, count, "BetterGPUType", why)
    message = (
        f"{count} of {count} replicas placed on {option.gpu_type} at TP{option.tensor_parallel}; "
        f"moves from {old[0]} at TP{old[1]}: {why}"
    )
    moved = replace(
        s,
        reason="Placed",
        message=message,
        replicas_placed=count,
        option=option,
        nodes=tuple(sorted(nodes.items())),
        type_move=move,
    )
    left = dict(plan.free)
    for node, replicas in nodes.items():
        left[node] = free[node] - replicas * option.gpus_per_replica
    # The old replicas keep their GPUs (still counted as used) until the new ones are Ready.
    return replace(
        plan,
        services=tuple(moved if x.name == s.name else x for x in plan.services),
        free=tuple(sorted(left.items())),
        type_moves=(move,),
    )
