"""Make-before-break moves from observations: reservations, each service's step, taints."""

from __future__ import annotations

from typing import Any

import pytest
from tests.planning.test_planning_placement import opt

from kvpilot.api.names import INFERENCE_SERVICE as SERVICE
from kvpilot.api.names import POD_DELETION_COST, RESERVED_TAINT, reservation_value
from kvpilot.api.parse import parse_inference_service
from kvpilot.planning.placement import Move, PlacementPlan, ServicePlacement
from kvpilot.reconcile import plan_pool
from kvpilot.reconcile.moves import (
    LEAVING_COST,
    Reservation,
    TaintWrite,
    find_reservations,
    move_step,
    taint_writes,
    with_reservation,
)

GPU = "nvidia.com/gpu"


def node(name: str, reserved: str | None = None) -> dict[str, Any]:
    taints = [{"key": GPU, "effect": "NoSchedule"}]
    if reserved:
        taints.append({"key": RESERVED_TAINT, "value": reserved, "effect": "NoSchedule"})
    return {"metadata": {"name": name}, "spec": {"taints": taints}}


def pod(
    name: str,
    service: str,
    node_name: str | None,
    *,
    ready: bool = True,
    ns: str = "ns",
    leaving: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "labels": {SERVICE: service},
    }
    if leaving:
        meta["annotations"] = {POD_DELETION_COST: LEAVING_COST}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node_name} if node_name else {},
        "status": {
            "phase": "Running" if node_name else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def placement(
    name: str, placed: int, nodes: tuple[tuple[str, int], ...], tp: int = 1
) -> ServicePlacement:
    return ServicePlacement(
        name=name, reason="Placed", message="", priority=100, min_replicas=placed,
        replicas_wanted=placed, replicas_placed=placed, option=opt("A100-80GB", tp), nodes=nodes,
    )  # fmt: skip


SMALL = placement("ns/small", 6, (("a-1", 6),))
LARGE = placement("ns/large", 1, (("a-0", 1),), tp=8)
RESERVED = Reservation("a-0", "ns.large", "ns/large", (("ns/small", 3),), 0, "why")


def test_reservations_read_from_taints_and_pods() -> None:
    pods = [
        pod("s1", "small", "a-0"),
        pod("s2", "small", "a-0"),
        pod("s3", "small", "a-1"),
        pod("gone", "small", "a-0", deleting=True),
        pod("l1", "large", None, ready=False),
    ]
    got = find_reservations(
        [node("a-0", "ns.large"), node("a-1"), node("a-2", "old.gone")],
        pods,
        ["ns/small", "ns/large"],
    )
    assert got == (
        Reservation("a-0", "ns.large", "ns/large", (("ns/small", 2),), 0),
        Reservation("a-2", "old.gone", None),
    )


def test_reservation_values_fit_a_taint() -> None:
    assert reservation_value("ns", "large") == "ns.large"
    long = reservation_value("n" * 40, "s" * 40)
    assert len(long) <= 63 and long != reservation_value("n" * 40, "s" * 41)


def test_taints_keep_what_others_set() -> None:
    others = [{"key": GPU, "effect": "NoSchedule"}, {"key": "x", "effect": "NoExecute"}]
    added = with_reservation(others, "ns.large")
    assert added == [*others, {"key": RESERVED_TAINT, "value": "ns.large", "effect": "NoSchedule"}]
    assert with_reservation(added, None) == others


MOVE = Move("ns/small", "a-0", 3, (("a-1", 3),), "ns/large", "why")


@pytest.mark.parametrize(
    ("plan", "reservations", "writes"),
    [
        pytest.param(
            PlacementPlan((SMALL, LARGE), (), moves=(MOVE,)), (),
            [TaintWrite("a-0", "ns.large", "")], id="a-move-reserves-its-node",
        ),
        pytest.param(
            PlacementPlan((SMALL, LARGE), (), moves=(MOVE,)), (RESERVED,), [],
            id="already-reserved",
        ),
        pytest.param(
            PlacementPlan((SMALL, LARGE), ()), (RESERVED,), [], id="in-progress-keeps-it",
        ),
        pytest.param(
            PlacementPlan((SMALL, LARGE), ()),
            (Reservation("a-0", "ns.large", "ns/large", (), 1),),
            [TaintWrite("a-0", None, "")], id="owner-bound-releases",
        ),
        pytest.param(
            PlacementPlan((SMALL,), ()), (RESERVED,),
            [TaintWrite("a-0", None, "")], id="owner-gone-releases",
        ),
        pytest.param(
            PlacementPlan((SMALL, placement("ns/large", 1, (("a-2", 1),), tp=8)), ()),
            (RESERVED,), [TaintWrite("a-0", None, "")], id="owner-planned-elsewhere-releases",
        ),
        pytest.param(
            PlacementPlan((SMALL,), ()), (Reservation("a-0", "x.y", None),),
            [TaintWrite("a-0", None, "")], id="unknown-owner-releases",
        ),
    ],
)  # fmt: skip
def test_taint_writes(
    plan: PlacementPlan, reservations: tuple[Reservation, ...], writes: list[TaintWrite]
) -> None:
    got = [(w.node, w.value) for w in taint_writes(plan, reservations)]
    assert got == [(w.node, w.value) for w in writes]


MOVING = [pod(f"old{i}", "small", "a-0") for i in range(3)]
STAYING = [pod(f"s{i}", "small", "a-1") for i in range(3)]
NEW_READY = [pod(f"new{i}", "small", "a-1") for i in range(3)]
NEW_LOADING = [pod(f"new{i}", "small", "a-1", ready=i == 0) for i in range(3)]
MARKED = [pod(f"old{i}", "small", "a-0", leaving=True) for i in range(3)]


@pytest.mark.parametrize(
    ("pods", "extra", "mark", "reason"),
    [
        pytest.param(MOVING + STAYING, 3, (), "Moving", id="replacements-start-on-top"),
        pytest.param(MOVING + STAYING + NEW_LOADING, 3, (), "Moving", id="wait-until-ready"),
        pytest.param(
            MOVING + STAYING + NEW_READY, 3, ("old0", "old1", "old2"), "RemovingMovedReplicas",
            id="ready-then-mark-the-old-pods",
        ),
        pytest.param(
            [*MARKED[:2], MOVING[2], *STAYING, *NEW_READY], 3, ("old2",),
            "RemovingMovedReplicas", id="scale-down-only-when-all-are-marked",
        ),
        pytest.param(
            MARKED + STAYING + NEW_READY, 0, (), "RemovingMovedReplicas",
            id="all-marked-scale-down",
        ),
        pytest.param(
            [pod(f"old{i}", "small", "a-0", deleting=True) for i in range(3)]
            + STAYING + NEW_READY, 0, (), None, id="done",
        ),
    ],
)  # fmt: skip
def test_the_moving_service(
    pods: list[dict[str, Any]], extra: int, mark: tuple[str, ...], reason: str | None
) -> None:
    step = move_step("ns/small", SMALL, pods, (RESERVED,), {})
    assert (step.extra, step.mark) == (extra, mark)
    assert (step.condition.reason if step.condition else None) == reason
    if reason == "Moving":
        assert step.condition is not None
        assert "3 replica(s) move from a-0 to a-1: a-0 is freed for ns/large" in (
            step.condition.message
        )
        assert [r for r, _ in step.events] == ["Moving"]


def test_the_events_are_posted_once() -> None:
    previous = {"conditions": [{"type": "Progressing", "status": "True", "reason": "Moving"}]}
    step = move_step("ns/small", SMALL, MOVING + STAYING, (RESERVED,), previous)
    assert step.events == ()


def test_the_waiting_service() -> None:
    step = move_step("ns/large", LARGE, [pod("l1", "large", None, ready=False)], (RESERVED,), {})
    assert step.extra == 0
    assert step.condition is not None and step.condition.reason == "WaitingForMove"
    assert step.placed is not None and step.placed.status == "False"
    assert step.condition.message == (
        "a-0 is being freed for this service: ns/small moves 3 replica(s) off it first "
        "(make before break)"
    )
    assert [r for r, _ in step.events] == ["WaitingForMove"]


def test_services_not_involved_have_no_step() -> None:
    other = placement("ns/other", 1, (("a-1", 1),))
    assert move_step("ns/other", other, [pod("o", "other", "a-1")], (RESERVED,), {}) == (
        move_step("ns/other", other, [], (), {})
    )


# ---------------------------------------------------------------- a whole move, step by step


def a100(name: str, reserved: str | None = None) -> dict[str, Any]:
    out = node(name, reserved)
    out["metadata"]["labels"] = {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "nvidia.com/gpu.memory": "81920",
    }
    out["status"] = {"allocatable": {GPU: "8"}}
    return out


def gpu_pod(name: str, service: str, node_name: str | None, gpus: int, **kw: Any) -> dict[str, Any]:
    p = pod(name, service, node_name, **kw)
    p["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kvpilot"
    p["spec"]["containers"] = [{"resources": {"requests": {GPU: str(gpus)}}}]
    return p


def service_obj(name: str, source: str, replicas: int, tensor: int, **model: Any) -> Any:
    return parse_inference_service(
        {
            "apiVersion": "kvpilot.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "ns", "uid": name},
            "spec": {
                "model": {"source": source, "maxModelLen": 8192, **model},
                "parallelism": {"tensor": tensor},
                "placement": {"gpuTypes": ["A100-80GB"], "priority": 100},
                "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
            },
        }
    )


SERVICES = [
    service_obj("small", "hf://meta-llama/Llama-3.1-8B-Instruct", 6, 1),
    service_obj("large", "hf://meta-llama/Llama-3.1-405B-Instruct-FP8", 1, 8, quantization="fp8"),
]


def test_every_stage_of_a_move_plans_the_same_end_and_converges() -> None:
    """Each stage is what an operator (re)starting then observes: the decisions follow
    from the taint and the pods alone, so a restart anywhere continues the move."""
    old = [gpu_pod(f"old{i}", "small", "a-0", 1) for i in range(3)]
    stay = [gpu_pod(f"s{i}", "small", "a-1", 1) for i in range(3)]
    new = [gpu_pod(f"new{i}", "small", "a-1", 1) for i in range(3)]
    waiting = [gpu_pod("l", "large", None, 8, ready=False)]
    free, reserved = [a100("a-0"), a100("a-1")], [a100("a-0", "ns.large"), a100("a-1")]

    # 1. Spread 3 + 3 and a TP8 waits: the plan moves the three on a-0 and reserves a-0.
    pool = plan_pool(SERVICES, free, old + stay + waiting)
    assert [(m.service, m.from_node, m.replicas) for m in pool.plan.moves] == [
        ("ns/small", "a-0", 3)
    ]
    assert [(w.node, w.value) for w in taint_writes(pool.plan, pool.reservations)] == [
        ("a-0", "ns.large")
    ]
    stages = [
        (old + stay + waiting, 3, (), "Moving"),  # replacements start on top
        (old + stay + new + waiting, 3, ("old0", "old1", "old2"), "RemovingMovedReplicas"),
        (
            [gpu_pod(f"old{i}", "small", "a-0", 1, leaving=True) for i in range(3)]
            + stay + new + waiting,
            0, (), "RemovingMovedReplicas",
        ),  # every old pod marked: scale down
        (stay + new + waiting, 0, (), None),  # the old pods are gone
    ]  # fmt: skip
    for pods, extra, mark, reason in stages:
        pool = plan_pool(SERVICES, reserved, pods)
        assert pool.plan.moves == ()
        assert pool.slice("ns", "small").nodes == (("a-1", 6),)  # type: ignore[union-attr]
        assert pool.slice("ns", "large").nodes == (("a-0", 1),)  # type: ignore[union-attr]
        assert taint_writes(pool.plan, pool.reservations) == []  # the reservation stays
        small = pool.slice("ns", "small")
        assert small is not None
        mine = [p for p in pods if p["metadata"]["labels"][SERVICE] == "small"]
        step = move_step("ns/small", small, mine, pool.reservations, {})
        assert (step.extra, step.mark) == (extra, mark)
        assert (step.condition.reason if step.condition else None) == reason
    # 2. The TP8 replica is bound on a-0: the reservation goes, nothing is left behind.
    bound = [gpu_pod("l", "large", "a-0", 8)]
    pool = plan_pool(SERVICES, reserved, stay + new + bound)
    assert [(w.node, w.value) for w in taint_writes(pool.plan, pool.reservations)] == [
        ("a-0", None)
    ]
    pool = plan_pool(SERVICES, free, stay + new + bound)
    assert pool.plan.moves == () and pool.reservations == ()
    assert pool.slice("ns", "large").replicas_placed == 1  # type: ignore[union-attr]
