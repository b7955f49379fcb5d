"""Upgrades: a running service returns to a better option of its own, one at a time,
only when nothing waits and the better type holds all its replicas beside the old ones."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from tests.planning.test_planning_placement import A, H, opt, pool, rev_pod, summary, svc

from kvpilot.planning.defrag import plan_with_moves
from kvpilot.planning.placement import (
    PlacementPlan,
    RunningReplicas,
    ServiceDemand,
    running_replicas,
)
from kvpilot.planning.pool import PoolPlanner
from kvpilot.planning.report import plan_dict, plan_table
from kvpilot.planning.service import ServiceSpec

L4 = "L4-24GB"
POOL = pool(("a-0", A, 8, 0), ("h-0", H, 8, 0), ("h-1", H, 8, 0))


def on_a100(*nodes: tuple[str, int]) -> RunningReplicas:
    return RunningReplicas(A, 1, tuple(nodes))


def moves(plan: PlacementPlan) -> list[tuple[str, str, tuple[str, int], tuple[str, int], int]]:
    return [(m.service, m.reason, m.from_option, m.to_option, m.replicas) for m in plan.type_moves]


@pytest.mark.parametrize(
    ("demands", "inventory", "expected_moves", "expected"),
    [
        pytest.param(
            [svc("a", opt(H, 1), opt(A, 1), want=2, running=on_a100(("a-0", 2)))],
            POOL,
            [("a", "BetterGPUType", (A, 1), (H, 1), 2)],
            [("a", "Placed", H, 1, 2, 2, (("h-0", 2),))],
            id="fallback-to-preferred",
        ),
        pytest.param(
            [svc("a", opt(H, 1), opt(A, 1), want=2, running=on_a100(("a-0", 2)))],
            pool(("a-0", A, 8, 0), ("h-0", H, 8, 7)),
            [],
            [("a", "Placed", A, 1, 2, 2, (("a-0", 2),))],
            id="room-for-one-of-two-stays",
        ),
        pytest.param(
            [svc("a", opt(H, 4), opt(A, 4), want=1, running=RunningReplicas(A, 4, (("a-0", 1),)))],
            pool(("a-0", A, 8, 0), ("h-0", H, 8, 5), ("h-1", H, 8, 5)),
            [],
            [("a", "Placed", A, 4, 1, 1, (("a-0", 1),))],
            id="room-counted-per-node",
        ),
        pytest.param(
            [
                svc("a", opt(H, 1), opt(A, 1), want=2, running=on_a100(("a-0", 2))),
                svc("b", opt(L4, 1), want=3),
            ],
            pool(("a-0", A, 8, 0), ("h-0", H, 8, 0), ("l-0", L4, 1, 0)),
            [],
            [
                ("a", "Placed", A, 1, 2, 2, (("a-0", 2),)),
                ("b", "InsufficientCapacity", L4, 1, 1, 3, (("l-0", 1),)),
            ],
            id="a-waiting-service-wins",
        ),
        pytest.param(
            [
                svc("a", opt(H, 1), opt(A, 1), prio=10, want=2, running=on_a100(("a-0", 2))),
                svc("b", opt(L4, 1), min=0, want=3, preemptible=True),
            ],
            pool(("a-0", A, 8, 0), ("h-0", H, 8, 0), ("l-0", L4, 1, 0)),
            [],
            [
                ("a", "Placed", A, 1, 2, 2, (("a-0", 2),)),
                ("b", "InsufficientCapacity", L4, 1, 1, 3, (("l-0", 1),)),
            ],
            id="even-a-preemptible-one",
        ),
        pytest.param(
            [
                svc("a", opt(H, 1), opt(A, 1), prio=1, want=2, running=on_a100(("a-0", 2))),
                svc("b", opt(H, 1), opt(A, 1), prio=5, want=3, running=on_a100(("a-0", 3))),
                svc("c", opt(H, 1), opt(A, 1), prio=5, want=1, running=on_a100(("a-0", 1))),
            ],
            POOL,
            [("b", "BetterGPUType", (A, 1), (H, 1), 3)],
            [
                ("a", "Placed", A, 1, 2, 2, (("a-0", 2),)),
                ("b", "Placed", H, 1, 3, 3, (("h-0", 3),)),
                ("c", "Placed", A, 1, 1, 1, (("a-0", 1),)),
            ],
            id="one-per-plan-highest-priority-then-name",
        ),
        pytest.param(
            [svc("a", opt(A, 1), opt(H, 1), want=2, running=on_a100(("a-0", 2)))],
            POOL,
            [],
            [("a", "Placed", A, 1, 2, 2, (("a-0", 2),))],
            id="on-its-best-option-nothing-moves",
        ),
        pytest.param(
            [
                svc("a", opt(H, 1), opt(L4, 1), opt(A, 1), want=1, running=on_a100(("a-0", 1))),
            ],
            pool(("a-0", A, 8, 0), ("h-0", H, 8, 8), ("l-0", L4, 1, 0)),
            [("a", "BetterGPUType", (A, 1), (L4, 1), 1)],
            [("a", "Placed", L4, 1, 1, 1, (("l-0", 1),))],
            id="best-option-with-room",
        ),
        pytest.param(
            [
                replace(
                    svc("a", opt(H, 1), opt(L4, 1), opt(A, 1), want=1, running=on_a100(("a-0", 1))),
                    avoid=((H, 1),),
                ),
            ],
            pool(("a-0", A, 8, 0), ("h-0", H, 8, 0), ("l-0", L4, 1, 0)),
            [("a", "BetterGPUType", (A, 1), (L4, 1), 1)],
            [("a", "Placed", L4, 1, 1, 1, (("l-0", 1),))],
            id="never-to-a-failed-revision",
        ),
        pytest.param(
            [
                svc(
                    "a",
                    opt(H, 1),
                    opt(A, 1),
                    want=2,
                    running=RunningReplicas(H, 1, (("h-0", 1),), (("a-0", 2),), (A, 1)),
                ),
                svc("b", opt(H, 1), opt(A, 1), want=1, running=on_a100(("a-0", 1))),
                svc("c", opt(A, 1), want=5),
            ],
            POOL,
            # a's move is under way: the plan follows its new type, keeps the GPUs its
            # old replicas hold on a-0 from c (5 of a-0's 8 are left), and starts no
            # second move although H100 has room for b.
            [("a", "Moving", (A, 1), (H, 1), 2)],
            [
                ("a", "Placed", H, 1, 2, 2, (("h-0", 2),)),
                ("b", "Placed", A, 1, 1, 1, (("a-0", 1),)),
                ("c", "Placed", A, 1, 5, 5, (("a-0", 5),)),
            ],
            id="under-way-holds-old-gpus-one-at-a-time",
        ),
    ],
)
def test_upgrade(
    demands: list[ServiceDemand],
    inventory: Any,
    expected_moves: list[Any],
    expected: list[Any],
) -> None:
    plan = plan_with_moves(demands, inventory)
    assert moves(plan) == expected_moves
    assert summary(plan) == expected
    for s in plan.services:
        assert (s.type_move is not None) == (s.name in {m[0] for m in expected_moves})


def test_upgrade_keeps_the_old_gpus_used_and_says_why() -> None:
    demand = svc("a", opt(H, 1), opt(A, 1), want=2, running=on_a100(("a-0", 2)))
    plan = plan_with_moves([demand], POOL)
    # Make before break: the old replicas' GPUs on a-0 stay used until they go.
    assert dict(plan.free) == {"a-0": 6, "h-0": 6, "h-1": 8}
    assert plan.service("a").message == (
        "2 of 2 replicas placed on H100-80GB at TP1; moves from A100-80GB at TP1: H100-80GB "
        "ranks before A100-80GB in its options and now has room for all 2 replica(s) with no "
        "service waiting; the new replicas start before the old ones go"
    )


def test_no_upgrade_while_a_node_is_freed() -> None:
    demand = svc("a", opt(H, 1), opt(A, 1), want=2, running=on_a100(("a-0", 2)))
    other = replace(svc("b", opt(A, 8)), claimed=("a-0",))
    assert moves(plan_with_moves([demand, other], POOL)) == []


def test_rollout_to_the_better_type_never_flips_back() -> None:
    """The whole life of an upgrade through the pool planner, fed from pods as the
    controller feeds it: starts, follows the new revision, ends settled."""
    specs = [
        ServiceSpec("ml/chat", "hf://meta-llama/Llama-3.1-8B-Instruct", tensor=1,
                    gpu_types=(H, A), min_replicas=2, max_replicas=2, desired_replicas=2),
    ]  # fmt: skip
    inventory = pool(("a-0", A, 8, 0), ("a-1", A, 8, 0), ("h-0", H, 8, 0))
    planner = PoolPlanner()

    def plan(pods: list[dict[str, Any]]) -> PlacementPlan:
        return planner.plan(specs, inventory, running_replicas(pods, inventory))

    old = [rev_pod("a-0", "r1", f"2026-01-01T00:00:0{i}Z") for i in range(2)]
    new = [rev_pod("h-0", "r2", f"2026-01-02T00:00:0{i}Z") for i in range(2)]
    stages = [
        ("started", old, "BetterGPUType", {"a-0": 6}),
        ("one new replica", [*old, new[0]], "Moving", {"a-0": 6}),
        ("both new, one old left", [old[0], *new], "Moving", {"a-0": 7}),
        ("done", new, None, {"a-0": 8}),
    ]
    for what, pods, reason, a_free in stages:
        p = plan(pods)
        chat = p.service("ml/chat")
        assert (chat.gpu_type, chat.nodes) == (H, (("h-0", 2),)), what
        assert (chat.type_move.reason if chat.type_move else None) == reason, what
        assert {n: c for n, c in p.free if n == "a-0"} == a_free, what
    # Settled: planning again changes nothing.
    assert plan(new) == plan(new)


def test_kvpilot_plan_shows_the_change() -> None:
    demand = svc("ns/a", opt(H, 1), opt(A, 1), want=2, running=on_a100(("a-0", 2)))
    plan = plan_with_moves([demand], POOL)
    table = plan_table(plan, POOL)
    assert (
        "GPU type changes (a rollout, make before break):\n"
        "  ns/a: 2 replica(s) A100-80GB TP1 -> H100-80GB TP1 (H100-80GB ranks before "
        "A100-80GB in its options and now has room for all 2 replica(s) with no service "
        "waiting; the new replicas start before the old ones go)"
    ) in table
    (move,) = plan_dict(plan, POOL)["typeMoves"]
    assert move["reason"] == "BetterGPUType"
    assert (move["from"], move["to"], move["replicas"]) == (
        {"gpuType": A, "tensorParallel": 1},
        {"gpuType": H, "tensorParallel": 1},
        2,
    )
