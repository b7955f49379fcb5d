"""`PoolPlanner`: the pool plan held in memory, re-planned incrementally as inputs change.

The controller keeps one `PoolPlanner` and calls `plan()` whenever a service, a node or
the running replicas change. Fit results (model memory per GPU type and TP) are cached
per service spec, so only changed services are re-fitted. When a few services changed,
the greedy pass starts from the GPU types the previous plan's search settled on and the
search tries moves of the changed services only; when nothing changed, the previous plan
is returned as it is. A change of more than `full_replan_fraction` of the services, or
of the nodes, re-plans from scratch, and so does every change on a pool of at most
`incremental_above` services, where a full plan is as cheap as the incremental one
(about 25 ms at 100 services) and its wider search can only do better. A plan that
leaves a service waiting while repacking running replicas would fit it gets node moves
(planning.defrag); one that leaves nobody waiting may return one running service to a
better option of its own (planning.upgrade).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvpilot.planning.defrag import defragment, moves_allowed
from kvpilot.planning.inventory import Inventory
from kvpilot.planning.placement import (
    DEFAULT_SEARCH_WORK,
    PlacementPlan,
    RunningReplicas,
    ServiceDemand,
    plan_placement,
)
from kvpilot.planning.service import ServiceSpec, fit_service
from kvpilot.planning.tp import FitResult
from kvpilot.planning.upgrade import upgrade

# An incremental re-plan gets this share of a full plan's search work.
INCREMENTAL_SEARCH_WORK = DEFAULT_SEARCH_WORK // 16


@dataclass
class _Last:
    inventory: Inventory
    demands: dict[str, ServiceDemand]
    plan: PlacementPlan


@dataclass
class PoolPlanner:
    """Plans the whole pool and keeps what the next plan can reuse; not thread-safe."""

    costs: Mapping[str, float] | None = None
    keep_running: bool = True
    full_replan_fraction: float = 0.1
    incremental_above: int = 150
    _fits: dict[tuple[Any, ...], FitResult] = field(default_factory=dict, repr=False)
    _last: _Last | None = field(default=None, repr=False)

    def plan(
        self,
        services: Sequence[ServiceSpec],
        inventory: Inventory,
        running: Mapping[str, RunningReplicas] | None = None,
        claims: Mapping[str, tuple[str, ...]] | None = None,
    ) -> PlacementPlan:
        """The pool plan for these inputs; equal to `plan_services` when nothing is reused.

        ``claims``: service -> nodes being freed for it by earlier moves (reservations).
        """
        demands = self.demands(services, inventory, running or {}, claims or {})
        last = self._last
        if last is not None and last.inventory == inventory and last.demands == demands:
            return last.plan
        changed = self._changed(last, demands, inventory)
        if changed is None:
            plan = plan_placement(list(demands.values()), inventory, keep_running=self.keep_running)
        else:
            assert last is not None
            start = {n: (t, tp) for n, t, tp in last.plan.type_choices if n not in changed}
            plan = plan_placement(
                list(demands.values()),
                inventory,
                keep_running=self.keep_running,
                start=start,
                search_only=changed,
                search_work=INCREMENTAL_SEARCH_WORK,
            )
        if moves_allowed(list(demands.values())):
            plan = defragment(plan, list(demands.values()), inventory)
        if self.keep_running:
            plan = upgrade(plan, list(demands.values()), inventory)
        self._last = _Last(inventory, demands, plan)
        return plan

    def demands(
        self,
        services: Sequence[ServiceSpec],
        inventory: Inventory,
        running: Mapping[str, RunningReplicas],
        claims: Mapping[str, tuple[str, ...]] | None = None,
    ) -> dict[str, ServiceDemand]:
        """Placement inputs per service, fitting only specs not seen before."""
        node_max = inventory.max_gpus_per_node()
        node_key = tuple(sorted(node_max.items()))
        cost_key = tuple(sorted((self.costs or {}).items()))
        live = set()
        out: dict[str, ServiceDemand] = {}
        for s in services:
            key = (fit_key(s), node_key, cost_key)
            live.add(key)
            fit = self._fits.get(key)
            if fit is None:
                fit = self._fits[key] = fit_service(s, inventory, self.costs)
            out[s.name] = ServiceDemand(
                name=s.name,
                fit=fit,
                priority=s.priority,
                min_replicas=s.min_replicas,
                max_replicas=s.max_replicas,
                desired_replicas=s.desired_replicas,
                preemptible=s.preemptible,
                running=running.get(s.name),
                claimed=(claims or {}).get(s.name, ()),
                avoid=s.avoid,
            )
        if len(out) != len(services):
            raise ValueError("service names in one plan must be unique")
        for key in set(self._fits) - live:
            del self._fits[key]
        return out

    def _changed(
        self, last: _Last | None, demands: Mapping[str, ServiceDemand], inventory: Inventory
    ) -> set[str] | None:
        """Services whose inputs changed, or None when the plan should start afresh."""
        if last is None or last.inventory != inventory or len(demands) <= self.incremental_above:
            return None
        changed = {n for n, d in demands.items() if last.demands.get(n) != d}
        removed = set(last.demands) - set(demands)
        if len(changed) + len(removed) > self.full_replan_fraction * max(1, len(demands)):
            return None
        return changed


def fit_key(s: ServiceSpec) -> tuple[Any, ...]:
    """What a service's fit depends on: model, serving config, TP and GPU types."""
    shape = tuple(sorted((s.shape or {}).items()))
    return (s.source, s.serving, shape, str(s.tensor), s.gpu_types)
