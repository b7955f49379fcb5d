"""`plan_reconcile` is the whole decision of a reconcile: table tests on whole results.

Each case gives what the controller observed and checks what it must do: which objects
to apply (in order), whether the status is written, which Events are posted. The key
property: a second pass over what the first produced writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from kvpilot.api.parse import parse_inference_service
from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.placement import PlacementReason, ServicePlacement
from kvpilot.planning.tp import ModelFits, fit_model
from kvpilot.reconcile import Observation, ReconcilePlan, plan_reconcile

UID = "0b9f3c1e-0000-4000-8000-000000000001"
BODY: dict[str, Any] = {
    "apiVersion": "kvpilot.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "x", "namespace": "ns", "uid": UID, "generation": 1},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
        "scaling": {"minReplicas": 1, "maxReplicas": 1},
    },
}


def placement(wanted: int = 1, placed: int = 1, *, fits: bool = True) -> ServicePlacement:
    fit = fit_model("hf://meta-llama/Llama-3.1-8B-Instruct", ServingConfig(), tensor=1)
    assert isinstance(fit, ModelFits)
    reason: PlacementReason = "Placed" if placed >= wanted else "InsufficientCapacity"
    if not fits:
        reason = "NoGPUTypeFits"
    return ServicePlacement(
        name="ns/x",
        reason=reason,
        message=f"{placed} of {wanted} replicas placed" if fits else "no GPU type fits",
        priority=0,
        min_replicas=1,
        replicas_wanted=wanted,
        replicas_placed=placed if fits else 0,
        option=fit.options[0] if fits else None,
    )


def observe(
    *,
    previous: Mapping[str, Any] | None = None,
    children: Mapping[str, Any] | None = None,
    foreign: Mapping[str, str] | None = None,
    place: ServicePlacement | None = None,
    spec: Mapping[str, Any] | None = None,
) -> Observation:
    body = copy.deepcopy(BODY)
    if spec is not None:
        body["spec"] = spec
    return Observation(
        namespace="ns",
        name="x",
        generation=1,
        previous=previous or {},
        now="2026-11-30T00:00:00Z",
        isvc=parse_inference_service(body),
        placement=place if place is not None else placement(),
        gpu_product="NVIDIA-L4",
        children=children or {},
        foreign=foreign or {},
    )


def served(plan: ReconcilePlan, ready: int) -> dict[str, Any]:
    """What the cluster holds after executing ``plan`` and the pods becoming ready."""
    out: dict[str, Any] = {}
    for obj in plan.apply:
        live = copy.deepcopy(obj)
        live["metadata"].update(generation=1, resourceVersion="7")
        if obj["kind"] == "Deployment":
            live["status"] = {
                "observedGeneration": 1,
                "replicas": ready,
                "readyReplicas": ready,
                "updatedReplicas": ready,
            }
        out[obj["kind"]] = live
    return out


def kinds(plan: ReconcilePlan) -> list[str]:
    return [o["kind"] for o in plan.apply]


def reasons(plan: ReconcilePlan) -> list[str]:
    return [e.reason for e in plan.events]


def cond(status: Mapping[str, Any] | None, ctype: str) -> tuple[str, str]:
    for c in (status or {}).get("conditions", []):
        if c["type"] == ctype:
            return c["status"], c["reason"]
    raise KeyError(ctype)


def test_new_service_applies_everything_in_order_then_settles() -> None:
    first = plan_reconcile(observe())
    assert kinds(first) == ["Service", "PodDisruptionBudget", "Deployment"]
    assert reasons(first) == [
        "CreatedService",
        "CreatedPodDisruptionBudget",
        "CreatedDeployment",
        "Creating",  # Ready=False, as a Normal Event: the service has just appeared
    ]
    assert cond(first.status, "Ready") == ("False", "Creating")
    children = served(first, ready=1)
    second = plan_reconcile(observe(previous=first.status, children=children))
    assert second.apply == ()
    assert cond(second.status, "Ready") == ("True", "ReplicasReady")
    assert reasons(second) == ["ReplicasReady"]
    third = plan_reconcile(observe(previous=second.status, children=children))
    assert third.writes == 0, "settled: nothing to apply, no status, no Event"


def test_canonicalised_quantities_and_dropped_empty_values_are_not_drift() -> None:
    first = plan_reconcile(observe())
    children = served(first, ready=1)
    container = children["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for section in ("requests", "limits"):
        for res, value in list((container.get("resources") or {}).get(section, {}).items()):
            if res == "memory" and isinstance(value, str) and value.endswith("Gi"):
                container["resources"][section][res] = str(int(value[:-2]) * 1024**3)
            if res == "nvidia.com/gpu":
                container["resources"][section][res] = str(value)
    for env in container.get("env", []):
        if env.get("value") == "":
            del env["value"]
    settled = plan_reconcile(observe(previous=first.status, children=children))
    assert settled.apply == ()


def test_changed_placement_updates_only_the_deployment() -> None:
    first = plan_reconcile(observe())
    children = served(first, ready=1)
    grown = plan_reconcile(
        observe(previous=first.status, children=children, place=placement(wanted=2, placed=2))
    )
    assert kinds(grown) == ["Deployment"]
    assert grown.apply[0]["spec"]["replicas"] == 2
    assert grown.events[0].message.endswith("(replicas 1 -> 2)")


def test_edited_deployment_is_repaired() -> None:
    first = plan_reconcile(observe())
    children = served(first, ready=1)
    children["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    plan = plan_reconcile(observe(previous=first.status, children=children))
    assert kinds(plan) == ["Deployment"]
    assert "repaired drift" in plan.events[0].message


def test_nothing_fits_creates_nothing_and_keeps_what_serves() -> None:
    fresh = plan_reconcile(observe(place=placement(fits=False)))
    assert fresh.apply == ()
    assert cond(fresh.status, "Ready")[0] == "False"
    assert cond(fresh.status, "Placed") == ("False", "NoGPUTypeFits")
    assert reasons(fresh)[0] == "NoGPUTypeFits"
    # A service already serving keeps its Deployment and replicas while nothing fits.
    first = plan_reconcile(observe())
    children = served(first, ready=1)
    kept = plan_reconcile(
        observe(previous=first.status, children=children, place=placement(fits=False))
    )
    assert kept.apply == ()
    assert kept.target_replicas == 1


def test_a_name_taken_by_someone_else_is_never_adopted() -> None:
    plan = plan_reconcile(observe(foreign={"Service": "x"}))
    assert plan.apply == ()
    assert cond(plan.status, "Ready") == ("False", "NameConflict")
    assert "Service ns/x already exists" in plan.events[0].message
    again = plan_reconcile(observe(previous=plan.status, foreign={"Service": "x"}))
    assert again.writes == 0, "one Warning per change, not per reconcile"


def test_invalid_spec_is_reported_once() -> None:
    obs = replace(observe(), isvc=None, invalid="spec.model.source: must start with hf://")
    plan = plan_reconcile(obs)
    assert plan.apply == ()
    assert cond(plan.status, "Ready") == ("False", "InvalidSpec")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSpec")]
    again = plan_reconcile(replace(obs, previous=plan.status))
    assert again.writes == 0


@pytest.mark.parametrize(
    ("wanted", "placed", "ready", "expect"),
    [
        (2, 2, 2, {"Ready": ("True", "ReplicasReady"), "Degraded": ("False", "AsExpected")}),
        (2, 2, 1, {"Ready": ("True", "PartiallyReady"), "Progressing": ("True", "RollingOut")}),
        (
            3,
            2,
            2,
            {
                "Placed": ("False", "InsufficientCapacity"),
                "Degraded": ("True", "InsufficientCapacity"),
            },
        ),
    ],
)
def test_status_follows_what_is_observed(
    wanted: int, placed: int, ready: int, expect: dict[str, tuple[str, str]]
) -> None:
    place = placement(wanted=wanted, placed=placed)
    first = plan_reconcile(observe(place=place))
    children = served(first, ready=ready)
    children["Deployment"]["status"]["replicas"] = placed
    plan = plan_reconcile(observe(previous=first.status, children=children, place=place))
    for ctype, value in expect.items():
        assert cond(plan.status, ctype) == value


def pod(node: str, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"x-{node}", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": "Running"}}


@pytest.mark.parametrize(
    ("placed", "pods", "target", "degraded"),
    [
        # 4 wanted; node a cordoned holds 2; 4 fit elsewhere: surge to 6, then drain.
        (4, [pod("a"), pod("a"), pod("b"), pod("b")], 6, ("False", "AsExpected")),
        # Only 2 fit elsewhere: the 2 on the cordoned node keep serving; Degraded says why.
        (2, [pod("a"), pod("a"), pod("b"), pod("b")], 4, ("True", "NoCapacityForReplacements")),
        # A pod already being evicted is not counted.
        (4, [pod("a", deleting=True), pod("a"), pod("b"), pod("b")], 5, ("False", "AsExpected")),
    ],
)
def test_node_maintenance_never_lowers_replicas(
    placed: int, pods: list[dict[str, Any]], target: int, degraded: tuple[str, str]
) -> None:
    place = placement(wanted=4, placed=placed)
    first = plan_reconcile(observe(place=placement(wanted=4, placed=4)))
    children = served(first, ready=4)
    obs = replace(
        observe(previous=first.status, children=children, place=place),
        pods=tuple(pods),
        draining_nodes=frozenset({"a"}),
    )
    plan = plan_reconcile(obs)
    assert plan.target_replicas == target
    if target != 4:
        assert plan.apply and plan.apply[-1]["spec"]["replicas"] == target
    assert cond(plan.status, "Progressing") == ("True", "NodeMaintenance")
    assert cond(plan.status, "Degraded") == degraded
    assert "NodeMaintenance" in reasons(plan)


def test_a_replica_that_cannot_start_is_reported_with_the_pods_reason() -> None:
    first = plan_reconcile(observe())
    children = served(first, ready=0)
    children["Deployment"]["status"]["replicas"] = 1
    waiting = {
        "metadata": {"name": "x-1", "namespace": "ns"},
        "spec": {"nodeName": "a"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": 'secret "hf-token" not found',
                        }
                    }
                }
            ],
        },
    }
    plan = plan_reconcile(
        replace(observe(previous=first.status, children=children), pods=(waiting,))
    )
    assert cond(plan.status, "Ready") == ("False", "CreateContainerConfigError")
    assert cond(plan.status, "Degraded") == ("True", "CreateContainerConfigError")
