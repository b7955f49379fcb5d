"""Defragmentation moves: a waiting replica fits once running replicas are repacked."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from tests.planning.test_planning_placement import opt, svc

from kvpilot.planning.defrag import defragment, plan_with_moves
from kvpilot.planning.inventory import Inventory, NodeGPUs
from kvpilot.planning.placement import (
    Move,
    RunningReplicas,
    ServiceDemand,
    moved_replicas,
    plan_placement,
)


def nodes(*spec: tuple[str, int], gpu: str = "A100-80GB") -> Inventory:
    return Inventory(tuple(NodeGPUs(n, gpu, "", None, c, 0) for n, c in spec))


TWO = nodes(("a-0", 8), ("a-1", 8))
THREE = nodes(("a-0", 8), ("a-1", 8), ("a-2", 8))


def running(*where: tuple[str, int], tp: int = 1, gpu: str = "A100-80GB") -> RunningReplicas:
    return RunningReplicas(gpu, tp, tuple(sorted(where)))


def tp1(name: str, n: int, *where: tuple[str, int], prio: int = 100, **kw: object) -> ServiceDemand:
    return svc(
        name, opt("A100-80GB", 1), prio=prio, min=n, max=n,
        running=running(*where) if where else None, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def tp8(name: str, n: int = 1, *, prio: int = 100, **kw: object) -> ServiceDemand:
    return svc(name, opt("A100-80GB", 8), prio=prio, min=n, max=n, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    id: str
    demands: tuple[ServiceDemand, ...]
    inventory: Inventory = TWO
    moves: tuple[tuple[str, str, int, tuple[tuple[str, int], ...], str], ...] = ()
    placed: dict[str, int] = field(default_factory=dict)


CASES = [
    Case(
        "tp1-spread-3-3-frees-a-node-for-tp8",
        (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3)), tp8("ns/large")),
        moves=(("ns/small", "a-0", 3, (("a-1", 3),), "ns/large"),),
        placed={"ns/small": 6, "ns/large": 1},
    ),
    Case(
        "the-node-with-fewer-replicas-moves",
        (tp1("ns/small", 6, ("a-0", 4), ("a-1", 2)), tp8("ns/large")),
        moves=(("ns/small", "a-1", 2, (("a-0", 2),), "ns/large"),),
        placed={"ns/small": 6, "ns/large": 1},
    ),
    Case(
        "no-repacking-makes-room-from-four-free-gpus",
        (
            tp1("ns/a", 2, ("a-0", 2)),
            tp1("ns/b", 5, ("a-1", 5)),
            tp1("ns/c", 5, ("a-0", 5)),
            tp8("ns/large", prio=100),
        ),
        # 4 GPUs free in all: moves cannot make 8 on one node.
        moves=(),
        placed={"ns/large": 0},
    ),
    Case(
        "three-nodes-moves-go-best-fit",
        (
            tp1("ns/a", 2, ("a-0", 2)),
            tp1("ns/b", 5, ("a-1", 5)),
            tp1("ns/c", 5, ("a-2", 5)),
            tp8("ns/large"),
        ),
        inventory=THREE,
        moves=(("ns/a", "a-0", 2, (("a-1", 2),), "ns/large"),),
        placed={"ns/large": 1, "ns/a": 2},
    ),
    Case(
        "never-moves-a-higher-priority-service",
        (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3), prio=200), tp8("ns/large", prio=100)),
        placed={"ns/large": 0, "ns/small": 6},
    ),
    Case(
        "a-lower-priority-service-moves-for-a-higher-one",
        (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3), prio=0), tp8("ns/large", prio=100)),
        moves=(("ns/small", "a-0", 3, (("a-1", 3),), "ns/large"),),
        placed={"ns/large": 1, "ns/small": 6},
    ),
    Case(
        "a-preemptible-service-causes-no-moves",
        (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3)), tp8("ns/large", preemptible=True)),
        placed={"ns/large": 0},
    ),
    Case(
        "no-room-elsewhere-no-move",
        (tp1("ns/small", 12, ("a-0", 6), ("a-1", 6)), tp8("ns/large")),
        placed={"ns/large": 0, "ns/small": 12},
    ),
    Case(
        "nothing-waits-nothing-moves",
        (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3)),),
        placed={"ns/small": 6},
    ),
    Case(
        "two-tp8-replicas-free-both-nodes-of-three",
        (
            tp1("ns/a", 2, ("a-0", 1), ("a-1", 1)),
            tp8("ns/large", 2),
        ),
        inventory=THREE,
        # a-2 is free: one TP8 lands there; a-0 is freed for the other.
        moves=(("ns/a", "a-0", 1, (("a-1", 1),), "ns/large"),),
        placed={"ns/large": 2, "ns/a": 2},
    ),
    Case(
        "other-gpu-types-are-not-used-as-destinations",
        (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3)), tp8("ns/large")),
        inventory=Inventory((*TWO.nodes, NodeGPUs("h-0", "H100-80GB", "", None, 8, 0))),
        moves=(("ns/small", "a-0", 3, (("a-1", 3),), "ns/large"),),
        placed={"ns/large": 1},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_defragment(case: Case) -> None:
    plan = defragment(plan_placement(case.demands, case.inventory), case.demands, case.inventory)
    got = tuple((m.service, m.from_node, m.replicas, m.to_nodes, m.for_service) for m in plan.moves)
    assert got == case.moves
    for name, placed in case.placed.items():
        assert plan.service(name).replicas_placed == placed, plan.service(name).message
    for node, free in plan.free:
        assert free >= 0, node
    # Every node holds no more than its GPUs.
    used: dict[str, int] = {}
    for s in plan.services:
        for node, count in s.nodes:
            used[node] = used.get(node, 0) + count * (s.gpus_per_replica or 0)
    capacity = {n.name: n.allocatable for n in case.inventory.nodes}
    assert all(used[n] <= capacity[n] for n in used), used


def test_the_plan_says_what_moves_and_why() -> None:
    demands = (tp1("ns/small", 6, ("a-0", 3), ("a-1", 3)), tp8("ns/large"))
    plan = plan_with_moves(demands, TWO)
    (move,) = plan.moves
    assert move == Move(
        service="ns/small",
        from_node="a-0",
        replicas=3,
        to_nodes=(("a-1", 3),),
        for_service="ns/large",
        why="ns/large (priority 100) needs 8 GPUs on one node for a TP8 replica; "
        "a-0 is the cheapest node to free",
    )
    assert plan.service("ns/small").nodes == (("a-1", 6),)
    assert plan.service("ns/large").nodes == (("a-0", 1),)
    assert plan.service("ns/large").reason == "Placed"
    assert "move from a-0 to a-1 to free a-0 for ns/large" in plan.service("ns/small").message
    assert "a-0 is freed for it" in plan.service("ns/large").message
    assert moved_replicas(plan_placement(demands, TWO), plan) == {"ns/small": 3}


def test_the_move_in_progress_converges_to_the_same_plan() -> None:
    """While a-0 is reserved (claimed) for the waiting service, replicas that still run
    there are left out of `running`; every step of the move plans the same end state and
    no second set of moves."""
    end = {"ns/small": (("a-1", 6),), "ns/large": (("a-0", 1),)}
    for small_on_a1 in (3, 4, 6):  # replacements start on a-1 one by one
        demands = (
            tp1("ns/small", 6, ("a-1", small_on_a1)),
            replace(tp8("ns/large"), claimed=("a-0",)),
        )
        plan = plan_with_moves(demands, TWO)
        assert plan.moves == ()
        assert {s.name: s.nodes for s in plan.services} == end


def test_kvpilot_plan_shows_the_moves() -> None:
    from kvpilot.planning.report import plan_dict, plan_table

    plan = plan_with_moves((tp1("ns/small", 6, ("a-0", 3), ("a-1", 3)), tp8("ns/large")), TWO)
    table = plan_table(plan, TWO)
    assert table.split("Moves (make before break):\n", 1)[1].splitlines()[0] == (
        "  ns/small: 3 replica(s) a-0 -> a-1 x3 (ns/large (priority 100) needs 8 GPUs on one "
        "node for a TP8 replica; a-0 is the cheapest node to free)"
    )
    assert plan_dict(plan, TWO)["moves"] == [
        {
            "service": "ns/small",
            "fromNode": "a-0",
            "replicas": 3,
            "toNodes": [{"name": "a-1", "replicas": 3}],
            "forService": "ns/large",
            "why": plan.moves[0].why,
        }
    ]
