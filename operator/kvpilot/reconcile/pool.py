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
) -> Pool:
    """Plan every valid service on the nodes; kvpilot's own pods pin where services run."""
    inventory = build_inventory(nodes, gpu_pods, exclude_pod=is_kvpilot_pod)
    products: dict[str, str] = {}
    for n in inventory.usable_nodes:
        if n.gpu_type is not None:
            products.setdefault(n.gpu_type, n.product)
    specs = sorted(
        (
            service_from_manifest(
                {"metadata": {"name": s.name, "namespace": s.namespace}, "spec": dump(s.spec)}
            )
            for s in services
        ),
        key=lambda s: s.name,
    )
    running = running_replicas([p for p in gpu_pods if is_kvpilot_pod(p)], inventory)
    plan = plan_services(specs, inventory, running=running, costs=costs)
    return Pool(inventory=inventory, plan=plan, products=products)
