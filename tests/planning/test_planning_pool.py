"""PoolPlanner: a re-plan after a few changes reuses the last plan and moves no more replicas."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from kvpilot.planning.inventory import Inventory, NodeGPUs
from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.placement import PlacementPlan, moved_replicas, running_from_plan
from kvpilot.planning.pool import PoolPlanner
from kvpilot.planning.service import ServiceSpec, plan_services

MODELS = (
    ("hf://meta-llama/Llama-3.1-8B-Instruct", ("none", "fp8")),
    ("hf://Qwen/Qwen2.5-7B-Instruct", ("none", "fp8")),
    ("hf://Qwen/Qwen2.5-32B-Instruct-AWQ", ("awq",)),
    ("hf://meta-llama/Llama-3.1-70B-Instruct", ("none", "fp8")),
    ("hf://Qwen/Qwen2.5-1.5B-Instruct", ("none",)),
)
TYPES = {"H100-80GB": 6, "A100-80GB": 6, "L4-24GB": 6}


def inventory() -> Inventory:
    return Inventory(
        tuple(
            NodeGPUs(f"{t.lower()}-{i}", t, "", None, 8 if t != "L4-24GB" else 4, 0)
            for t, n in TYPES.items()
            for i in range(n)
        )
    )


def services(count: int, seed: int) -> list[ServiceSpec]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        source, quants = rng.choice(MODELS)
        low = rng.choice((0, 1, 1, 2))
        high = max(low, rng.randint(1, 6))
        out.append(
            ServiceSpec(
                name=f"ns/s{i:03d}",
                source=source,
                serving=ServingConfig(quantization=rng.choice(quants)),
                gpu_types=tuple(rng.sample(list(TYPES), rng.randint(1, 2)))
                if rng.random() < 0.6
                else (),
                priority=rng.choice((0, 10, 100)),
                preemptible=rng.random() < 0.2,
                min_replicas=low,
                max_replicas=high,
                desired_replicas=rng.randint(low, high),
            )
        )
    return out


def valid(plan: PlacementPlan, inv: Inventory) -> bool:
    load: dict[str, int] = {}
    for s in plan.services:
        for node, count in s.nodes:
            load[node] = load.get(node, 0) + count * (s.gpus_per_replica or 0)
    free = {n.name: n.free for n in inv.nodes}
    return all(used <= free[node] for node, used in load.items())


def test_first_plan_equals_a_full_plan() -> None:
    inv, svcs = inventory(), services(60, 1)
    assert PoolPlanner().plan(svcs, inv) == plan_services(svcs, inv)


def test_unchanged_inputs_return_the_previous_plan() -> None:
    inv, svcs = inventory(), services(60, 2)
    planner = PoolPlanner()
    first = planner.plan(svcs, inv)
    assert planner.plan(list(svcs), inv) is first


def test_fits_are_cached_per_spec() -> None:
    inv, svcs = inventory(), services(60, 3)
    planner = PoolPlanner()
    planner.plan(svcs, inv)
    cached = dict(planner._fits)
    changed = [replace(svcs[0], desired_replicas=svcs[0].max_replicas), *svcs[1:]]
    planner.plan(changed, inv)
    assert planner._fits == cached  # a replica count is not part of the fit


@pytest.mark.parametrize("incremental_above", [0, 150])
@pytest.mark.parametrize("seed", range(6))
def test_one_change_replans_validly_with_no_more_churn(seed: int, incremental_above: int) -> None:
    """A settled pool (running = the plan), one service scaled. On a small pool the re-plan
    is a full plan. Forced incremental, it is valid and moves no more replicas than a full
    re-plan (how often it places as much is a figure of `make bench-placement`)."""
    inv, svcs = inventory(), services(40, seed)
    planner = PoolPlanner(incremental_above=incremental_above)
    first = planner.plan(svcs, inv)
    running = running_from_plan(first)
    settled = planner.plan(svcs, inv, running)
    rng = random.Random(seed)
    i = rng.randrange(len(svcs))
    wanted = max(0, (svcs[i].desired_replicas or 0) + rng.choice((-2, -1, 1, 2, 3)))
    svcs[i] = replace(
        svcs[i],
        desired_replicas=wanted,
        min_replicas=min(svcs[i].min_replicas, wanted),
        max_replicas=max(svcs[i].max_replicas, wanted),
    )
    incremental = planner.plan(svcs, inv, running)
    full = plan_services(svcs, inv, running=running)
    assert valid(incremental, inv)
    if incremental_above:
        assert incremental == full
    churn = sum(moved_replicas(settled, incremental).values())
    assert churn <= sum(moved_replicas(settled, full).values())


def test_node_change_replans_in_full() -> None:
    inv, svcs = inventory(), services(60, 4)
    planner = PoolPlanner()
    planner.plan(svcs, inv)
    smaller = Inventory(inv.nodes[1:])
    assert planner.plan(svcs, smaller) == plan_services(svcs, smaller)


def test_moved_replicas_counts_relocations_not_scaling() -> None:
    inv, svcs = inventory(), services(10, 5)
    plan = plan_services(svcs, inv)
    assert moved_replicas(plan, plan) == {}
