"""The pool plan: every InferenceService placed on the GPU nodes together, purely.

The controller feeds it from its watch caches (nodes, GPU pods, services) and shares
the result between services; each reconcile reads its own slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.planning.inventory import Inventory, build_inventory, is_kvpilot_pod
from kvpilot.planning.placement import PlacementPlan, ServicePlacement, running_replicas
from kvpilot.planning.pool import PoolPlanner
from kvpilot.planning.service import ServiceSpec, service_spec
from kvpilot.planning.tp import TP_SIZES
from kvpilot.reconcile.moves import (
    Reservation,
    claims,
    find_reservations,
    leaving,
    pod_service,
    with_why,
)
from kvpilot.reconcile.tenancy import TenantPolicy
from kvpilot.resources.revision import compute_revision


def service_key(namespace: str, name: str) -> str:
    """Unique name of a service in a placement plan."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class Pool:
    """One plan of the whole pool, and what the services read from it."""

    inventory: Inventory
    plan: PlacementPlan
    products: Mapping[str, str] = field(default_factory=dict)  # GPU type -> node product label
    #: nodes being freed for a waiting service (reconcile.moves)
    reservations: tuple[Reservation, ...] = ()
    #: service key -> the metadata.generation its slice was planned from
    generations: Mapping[str, int] = field(default_factory=dict)

    def planned_from(self, namespace: str, name: str) -> int | None:
        """The generation of the spec this service's slice was planned from."""
        return self.generations.get(service_key(namespace, name))

    @cached_property
    def _by_name(self) -> dict[str, ServicePlacement]:
        return {s.name: s for s in self.plan.services}

    def slice(self, namespace: str, name: str) -> ServicePlacement | None:
        """This service's placement; None for a service the plan did not include."""
        return self._by_name.get(service_key(namespace, name))

    def product(self, gpu_type: str) -> str:
        return self.products.get(gpu_type, gpu_type)

    @cached_property
    def draining(self) -> frozenset[str]:
        """GPU nodes that take no new replicas (cordoned, NotReady, tainted): replicas still
        running there keep serving until replacements are Ready elsewhere."""
        return frozenset(n.name for n in self.inventory.nodes if n.excluded)


def plan_pool(
    services: Sequence[InferenceService],
    nodes: Iterable[Mapping[str, Any]],
    gpu_pods: Sequence[Mapping[str, Any]],
    *,
    costs: Mapping[str, float] | None = None,
    tenants: TenantPolicy | None = None,
    planner: PoolPlanner | None = None,
) -> Pool:
    """Plan every valid service on the nodes; kvpilot's own pods pin where services run.

    The tenant policy caps each namespace's priorities, and a namespace over its GPU
    quota has its lowest-priority services' replicas reduced until it fits, then the
    pool is planned again (a few rounds at most). ``planner`` (held by the controller
    for the life of the process) re-plans incrementally; without one, a fresh planner
    plans from scratch.
    """
    tenants = tenants or TenantPolicy()
    planner = planner or PoolPlanner(costs=costs)
    nodes = list(nodes)
    keys = {service_key(s.namespace, s.name) for s in services}

    def planned_here(pod: Mapping[str, Any]) -> bool:
        # Pods of a service no longer planned (deleted, its pods terminating) hold their
        # GPUs until they go, like any other workload's.
        return is_kvpilot_pod(pod) and pod_service(pod) in keys

    inventory = build_inventory(nodes, gpu_pods, exclude_pod=planned_here)
    products: dict[str, str] = {}
    for n in inventory.usable_nodes:
        if n.gpu_type is not None:
            products.setdefault(n.gpu_type, n.product)
    specs = {
        service_key(s.namespace, s.name): replace(
            _capped(service_spec(s), s.namespace, tenants), avoid=failed_options(s, products)
        )
        for s in services
    }
    reservations = find_reservations(nodes, gpu_pods, specs)
    reserved = {r.node: r.owner for r in reservations}
    # Replicas on a node freed for another service are leaving: the plan places them anew.
    running = running_replicas(
        [p for p in gpu_pods if is_kvpilot_pod(p) and not leaving(p, reserved)], inventory
    )
    claimed = claims(reservations)
    plan = planner.plan([specs[k] for k in sorted(specs)], inventory, running, claimed)
    for _ in range(3):
        cuts = _quota_cuts(plan, tenants)
        if not cuts:
            break
        for key, replicas in cuts.items():
            spec = specs[key]
            specs[key] = replace(
                spec,
                max_replicas=replicas,
                min_replicas=min(spec.min_replicas, replicas),
                desired_replicas=replicas,
            )
        plan = planner.plan([specs[k] for k in sorted(specs)], inventory, running, claimed)
    generations = {
        service_key(s.namespace, s.name): s.generation for s in services if s.generation is not None
    }
    return Pool(
        inventory=inventory,
        plan=plan,
        products=products,
        generations=generations,
        reservations=with_why(reservations, plan),
    )


def failed_options(
    isvc: InferenceService, products: Mapping[str, str]
) -> tuple[tuple[str, int], ...]:
    """The (GPU type, TP) options whose revision is the one the service's status records as
    failed: an upgrade to them would only roll out, and back, again."""
    revisions = isvc.status.revisions if isvc.status is not None else None
    failed = revisions.failed if revisions is not None else None
    if failed is None:
        return ()
    return tuple(
        (gpu_type, tp)
        for gpu_type, product in sorted(products.items())
        for tp in TP_SIZES
        if compute_revision(isvc.spec, tensor_parallel=tp, gpus_per_replica=tp, gpu_product=product)
        == failed.revision
    )


def _capped(spec: ServiceSpec, namespace: str, tenants: TenantPolicy) -> ServiceSpec:
    return replace(spec, priority=tenants.priority(namespace, spec.priority))


def _quota_cuts(plan: PlacementPlan, tenants: TenantPolicy) -> dict[str, int]:
    """Replica counts that bring each namespace within its GPU quota (lowest priority first)."""
    by_ns: dict[str, list[ServicePlacement]] = {}
    for p in plan.services:
        by_ns.setdefault(p.name.split("/", 1)[0], []).append(p)
    cuts: dict[str, int] = {}
    for ns, placements in by_ns.items():
        quota = tenants.limits(ns).max_gpus
        used = sum(p.gpus_used for p in placements)
        if quota is None or used <= quota:
            continue
        over = used - quota
        for p in sorted(placements, key=lambda p: (p.priority, p.name)):
            per = p.gpus_per_replica or 0
            if over <= 0 or per == 0 or p.replicas_placed == 0:
                continue
            drop = min(p.replicas_placed, -(-over // per))
            cuts[p.name] = p.replicas_placed - drop
            over -= drop * per
    return cuts
