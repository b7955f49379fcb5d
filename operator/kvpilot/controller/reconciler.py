"""One idempotent reconcile of an InferenceService: observe, plan, apply, report.

The only module (with kube.py) that talks to the API server about serving
objects; every decision is made by the pure cores it calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kvpilot.api.parse import (
    InferenceService,
    InvalidObjectError,
    dump,
    parse_inference_service,
)
from kvpilot.conditions import Condition
from kvpilot.controller.kube import GROUP, VERSION, Kube
from kvpilot.objects import contains, object_ref
from kvpilot.planning.inventory import Inventory, build_inventory, is_kvpilot_pod
from kvpilot.planning.placement import PlacementPlan, ServicePlacement, running_replicas
from kvpilot.planning.service import plan_services, service_from_manifest
from kvpilot.reconcile import (
    Observed,
    compute_status,
    service_key,
    serving_conditions,
    status_changed,
)
from kvpilot.resources import desired_objects
from kvpilot.resources.labels import REVISION
from kvpilot.resources.plan import RenderPlan, render_plan

log = logging.getLogger("kvpilot.reconcile")
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass
class Outcome:
    """What a reconcile did, for Events and logs."""

    applied: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    status_written: bool = False
    invalid: str | None = None


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def lock_for(key: str) -> threading.Lock:
    """One lock per InferenceService: reconcile and autoscaler never interleave."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Pool:
    """The cluster as the planner sees it, observed once per reconcile."""

    inventory: Inventory
    plan: PlacementPlan
    products: Mapping[str, str]  # GPU type -> product label value seen on nodes


def observe_pool(kube: Kube, current: InferenceService) -> Pool:
    """Plan every InferenceService on the pool together (the plan is deterministic)."""
    nodes = kube.list("v1", "Node")
    pods = kube.list("v1", "Pod")
    inventory = build_inventory(nodes, pods, exclude_pod=is_kvpilot_pod)
    products: dict[str, str] = {}
    for n in inventory.usable_nodes:
        if n.gpu_type is not None:
            products.setdefault(n.gpu_type, n.product)
    manifests: dict[str, dict[str, Any]] = {}
    for body in kube.list(API_VERSION, "InferenceService"):
        try:
            isvc = parse_inference_service(body)
        except InvalidObjectError:
            continue  # reported on its own reconcile; takes no GPUs meanwhile
        manifests[service_key(isvc.namespace, isvc.name)] = _manifest(isvc)
    manifests[service_key(current.namespace, current.name)] = _manifest(current)
    services = [service_from_manifest(m) for _, m in sorted(manifests.items())]
    running = running_replicas([p for p in pods if is_kvpilot_pod(p)], inventory)
    plan = plan_services(services, inventory, running=running)
    return Pool(inventory=inventory, plan=plan, products=products)


def _manifest(isvc: InferenceService) -> dict[str, Any]:
    return {
        "metadata": {"name": isvc.name, "namespace": isvc.namespace},
        "spec": dump(isvc.spec),
    }


def reconcile(kube: Kube, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    key = service_key(meta["namespace"], meta["name"])
    with lock_for(key):
        # Concurrent triggers (spec change, Deployment events, the timer) queue
        # here; read the latest object so status and Events build on what the
        # previous run wrote rather than on a stale copy.
        fresh = kube.get(API_VERSION, "InferenceService", meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return Outcome()
        return _reconcile(kube, fresh)


def _reconcile(kube: Kube, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation", 1))
    previous = body.get("status") or {}
    out = Outcome()
    now = now_iso()

    try:
        isvc = parse_inference_service(body)
    except InvalidObjectError as err:
        msg = str(err)
        conds = [
            Condition("Ready", "False", "InvalidSpec", msg),
            Condition("Placed", "False", "InvalidSpec", msg),
        ]
        status = compute_status(
            previous=previous, generation=generation, name=name, placement=None,
            observed=None, target=0, revision=previous.get("revision"), conditions=conds, now=now,
        )  # fmt: skip
        if status_changed(previous, status):
            kube.patch_status(ns, name, status)
            out.status_written = True
            out.events.append(("Warning", "InvalidSpec", msg))
        out.invalid = msg
        return out

    pool = observe_pool(kube, isvc)
    placement: ServicePlacement = pool.plan.service(service_key(ns, name))
    dep_live = kube.get("apps/v1", "Deployment", ns, name)
    revision = previous.get("revision")
    product: str | None = None
    target = 0
    if placement.option is None:
        # Nothing fits: create nothing new; what already serves keeps serving.
        if dep_live is not None:
            target = int(dep_live.get("spec", {}).get("replicas", 0) or 0)
        prev_placed = _condition_reason(previous, "Placed")
        if prev_placed != placement.reason:
            out.events.append(("Warning", placement.reason, placement.message))
    else:
        option = placement.option
        target = placement.replicas_placed
        product = pool.products.get(option.gpu_type, option.gpu_type)
        plan = render_plan(
            isvc,
            tensor_parallel=option.tensor_parallel,
            gpu_product=product,
            replicas=target,
            gpus_per_replica=option.gpus_per_replica,
        )
        revision = plan.revision
        desired = desired_objects(isvc, plan)
        for obj in desired:
            m = obj["metadata"]
            live = (
                dep_live
                if obj["kind"] == "Deployment"
                else kube.get(obj["apiVersion"], obj["kind"], ns, m["name"])
            )
            if live is not None and contains(live, obj):
                continue
            result = kube.apply(obj)
            if obj["kind"] == "Deployment":
                dep_live = result
            ref = object_ref(obj)
            out.applied.append(ref)
            verb = "Created" if live is None else "Updated"
            out.events.append(
                (
                    "Normal",
                    f"{verb}{obj['kind']}",
                    f"{verb.lower()} {ref} ({_why(obj, plan, live)})",
                )
            )
            log.info("Applied %s revision=%s replicas=%s", ref, plan.revision, target)
        if (
            placement.replicas_placed < placement.replicas_wanted
            and _condition_reason(previous, "Placed") != placement.reason
        ):
            out.events.append(("Warning", placement.reason, placement.message))

    observed = Observed.from_deployment(dep_live)
    conds = serving_conditions(placement, observed, target)
    status = compute_status(
        previous=previous, generation=generation, name=name, placement=placement,
        observed=observed, target=target, revision=revision, conditions=conds, now=now,
        gpu_product=product,
    )  # fmt: skip
    if status_changed(previous, status):
        kube.patch_status(ns, name, status)
        out.status_written = True
        old_ready = _condition_status(previous, "Ready")
        new_ready = next(c for c in conds if c.type == "Ready")
        if old_ready != new_ready.status:
            etype = "Normal" if new_ready.status == "True" else "Warning"
            if old_ready is None and new_ready.status == "False":
                etype = "Normal"
            out.events.append(
                (etype, new_ready.reason, f"Ready={new_ready.status}: {new_ready.message}")
            )
    return out


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


def _condition_status(status: Mapping[str, Any], ctype: str) -> str | None:
    for c in status.get("conditions", []) or []:
        if c.get("type") == ctype:
            return str(c.get("status"))
    return None


def _condition_reason(status: Mapping[str, Any], ctype: str) -> str | None:
    for c in status.get("conditions", []) or []:
        if c.get("type") == ctype:
            return str(c.get("reason"))
    return None
