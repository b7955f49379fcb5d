"""The pool plan: every InferenceService placed on the GPU nodes together, purely.

The controller feeds it from its watch caches (nodes, GPU pods, services) and shares
the result between services; each reconcile reads its own slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kvpilot.api.parse import InferenceService, dump
from kvpilot.planning.inventory import Inventory, build_inventory, is_kvpilot_pod
from kvpilot.planning.placement import PlacementPlan, ServicePlacement, running_replicas
from kvpilot.planning.service import plan_services, service_from_manifest
from kvpilot.reconcile.tenancy import TenantPolicy


def service_key(namespace: str, name: str) -> str:
    """Unique name of a service in a placement plan."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class Pool:
    """One plan of the whole pool, and what the services read from it."""

    inventory: Inventory
    plan: PlacementPlan
    products: Mapping[str, str] = field(default_factory=dict)  # GPU type -> node product label

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
    services: Iterable[InferenceService],
    nodes: Iterable[Mapping[str, Any]],
    gpu_pods: Sequence[Mapping[str, Any]],
    *,
    costs: Mapping[str, float] | None = None,
    tenants: TenantPolicy | None = None,
) -> Pool:
    """Plan every valid service on the nodes; kvpilot's own pods pin where services run.

    The tenant policy caps each namespace's priorities, and a namespace over its GPU
    quota has its lowest-priority services' replicas reduced until it fits, then the
    pool is planned again (a few rounds at most).
    """
    tenants = tenants or TenantPolicy()
    inventory = build_inventory(nodes, gpu_pods, exclude_pod=is_kvpilot_pod)
    products: dict[str, str] = {}
    for n in inventory.usable_nodes:
        if n.gpu_type is not None:
            products.setdefault(n.gpu_type, n.product)
    manifests = {service_key(s.namespace, s.name): _manifest(s, tenants) for s in services}
    running = running_replicas([p for p in gpu_pods if is_kvpilot_pod(p)], inventory)
    plan = _plan(manifests, inventory, running, costs)
    for _ in range(3):
        cuts = _quota_cuts(plan, manifests, tenants)
        if not cuts:
            break
        for key, replicas in cuts.items():
            scaling = manifests[key]["spec"].setdefault("scaling", {})
            scaling["maxReplicas"] = replicas
            scaling["minReplicas"] = min(int(scaling.get("minReplicas", 1)), replicas)
            manifests[key]["spec"]["replicas"] = replicas
        plan = _plan(manifests, inventory, running, costs)
    return Pool(inventory=inventory, plan=plan, products=products)


def _manifest(s: InferenceService, tenants: TenantPolicy) -> dict[str, Any]:
    spec = dump(s.spec)
    placement = spec.setdefault("placement", {})
    placement["priority"] = tenants.priority(s.namespace, int(placement.get("priority") or 0))
    return {"metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec}


def _plan(
    manifests: Mapping[str, dict[str, Any]],
    inventory: Inventory,
    running: Mapping[str, Any],
    costs: Mapping[str, float] | None,
) -> PlacementPlan:
    specs = [service_from_manifest(m) for _, m in sorted(manifests.items())]
    return plan_services(specs, inventory, running=running, costs=costs)


def _quota_cuts(
    plan: PlacementPlan, manifests: Mapping[str, dict[str, Any]], tenants: TenantPolicy
) -> dict[str, int]:
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
