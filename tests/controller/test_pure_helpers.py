"""Pure helpers of the controller: object comparison, conditions, status."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.conditions import Condition, merge_conditions
from kvpilot.objects import contains, merge_patch, object_ref
from kvpilot.planning.placement import PlacementReason, ServicePlacement
from kvpilot.reconcile import Observed, compute_status, serving_conditions, status_changed


@pytest.mark.parametrize(
    ("live", "desired", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": [1, 2], "c": 3}}, {"a": {"b": [1, 2]}}, True),
        ({"a": [1, 2, 3]}, {"a": [1, 2]}, False),
        ({"a": [{"x": 1, "y": 2}]}, {"a": [{"x": 1}]}, True),
        ({"a": 1.0}, {"a": 1}, True),
        ({"a": True}, {"a": 1}, False),
        ({"a": "1"}, {"a": 1}, False),
        # The API server drops empty values (omitempty): absent equals empty.
        ({}, {"a": None}, True),
        ({"env": [{"name": "X"}]}, {"env": [{"name": "X", "value": ""}]}, True),
        ({}, {"a": False}, True),
        ({}, {"a": []}, True),
        ({}, {"a": 0}, False),
        ({"a": None}, {"a": None}, True),
        ("text", {"a": 1}, False),
        # Quantities compare by value, as the API server canonicalises them.
        ({"limits": {"cpu": "1"}}, {"limits": {"cpu": "1000m"}}, True),
        ({"requests": {"memory": "1Gi"}}, {"requests": {"memory": "1073741824"}}, True),
        ({"requests": {"cpu": "1k"}}, {"requests": {"cpu": "1e3"}}, True),
        ({"limits": {"nvidia.com/gpu": "1"}}, {"limits": {"nvidia.com/gpu": 1}}, True),
        ({"limits": {"cpu": "2"}}, {"limits": {"cpu": "1000m"}}, False),
        # ... but only quantities: other strings compare literally.
        ({"image": "v1"}, {"image": "v1.0"}, False),
        ({"labels": {"v": "1"}}, {"labels": {"v": "1.0"}}, False),
    ],
)
def test_contains(live: Any, desired: Any, expected: bool) -> None:
    assert contains(live, desired) is expected


def test_object_ref() -> None:
    assert object_ref({"kind": "Deployment", "metadata": {"namespace": "ns", "name": "x"}}) == (
        "Deployment/ns/x"
    )
    assert object_ref({"kind": "Node", "metadata": {"name": "n"}}) == "Node/n"


def test_merge_conditions_moves_transition_time_only_on_flip() -> None:
    first = merge_conditions(
        None, [Condition("Ready", "False", "Creating", "m")], generation=1, now="t1"
    )
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Creating",
            "message": "m",
            "observedGeneration": 1,
            "lastTransitionTime": "t1",
        }
    ]
    same = merge_conditions(
        first, [Condition("Ready", "False", "ModelLoading", "m2")], generation=2, now="t2"
    )
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["reason"] == "ModelLoading"
    assert same[0]["observedGeneration"] == 2
    flipped = merge_conditions(
        same, [Condition("Ready", "True", "ReplicasReady", "")], generation=2, now="t3"
    )
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_merge_conditions_keeps_undecided_and_orders() -> None:
    prev = [{"type": "ScalingActive", "status": "True", "reason": "ValidMetrics"}]
    out = merge_conditions(prev, [Condition("Ready", "True", "R", "")], generation=1, now="t")
    assert [c["type"] for c in out] == ["Ready", "ScalingActive"]
    assert out[1] == prev[0]


def _placed(wanted: int, placed: int) -> ServicePlacement:
    from kvpilot.planning.memory import ServingConfig
    from kvpilot.planning.tp import ModelFits, fit_model

    fit = fit_model("hf://meta-llama/Llama-3.1-8B-Instruct", ServingConfig(), tensor=1)
    assert isinstance(fit, ModelFits)
    reason: PlacementReason = "Placed" if placed >= wanted else "InsufficientCapacity"
    return ServicePlacement(
        name="ns/x",
        reason=reason,
        message=f"{placed} of {wanted} placed",
        priority=0,
        min_replicas=1,
        replicas_wanted=wanted,
        replicas_placed=placed,
        option=fit.options[0],
    )


def _unplaced() -> ServicePlacement:
    return ServicePlacement(
        name="ns/x",
        reason="NoGPUTypeFits",
        message="TP 8 needs 8 GPUs on one node; L4-24GB nodes have 1",
        priority=0,
        min_replicas=1,
        replicas_wanted=1,
        replicas_placed=0,
    )


def _dep(ready: int, replicas: int, updated: int, gen: int = 2, observed: int = 2) -> Observed:
    return Observed(
        generation=gen,
        observed_generation=observed,
        replicas=replicas,
        ready_replicas=ready,
        updated_replicas=updated,
        spec_replicas=replicas,
    )


def _summary(conds: list[Condition]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conds}


@pytest.mark.parametrize(
    ("placement", "observed", "target", "expected"),
    [
        (
            _unplaced(),
            None,
            0,
            {
                "Placed": ("False", "NoGPUTypeFits"),
                "Ready": ("False", "NoGPUTypeFits"),
                "Progressing": ("False", "NotStarted"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _placed(2, 2),
            _dep(ready=0, replicas=2, updated=2),
            2,
            {
                "Placed": ("True", "Placed"),
                "Ready": ("False", "ModelLoading"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _placed(2, 2),
            _dep(ready=1, replicas=2, updated=2),
            2,
            {
                "Placed": ("True", "Placed"),
                "Ready": ("True", "PartiallyReady"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _placed(2, 2),
            _dep(ready=2, replicas=2, updated=2),
            2,
            {
                "Placed": ("True", "Placed"),
                "Ready": ("True", "ReplicasReady"),
                "Progressing": ("False", "RolloutComplete"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _placed(3, 2),
            _dep(ready=2, replicas=2, updated=2),
            2,
            {
                "Placed": ("False", "InsufficientCapacity"),
                "Ready": ("True", "ReplicasReady"),
                "Progressing": ("False", "RolloutComplete"),
                "Degraded": ("True", "InsufficientCapacity"),
            },
        ),
        (
            _placed(1, 1),
            _dep(ready=1, replicas=1, updated=1, gen=3, observed=2),
            1,
            {
                "Placed": ("True", "Placed"),
                "Ready": ("True", "PartiallyReady"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
    ],
)
def test_serving_conditions(
    placement: ServicePlacement,
    observed: Observed | None,
    target: int,
    expected: dict[str, tuple[str, str]],
) -> None:
    assert _summary(serving_conditions(placement, observed, target)) == expected


def test_deployment_stuck_is_degraded() -> None:
    obs = Observed(
        generation=1,
        observed_generation=1,
        replicas=1,
        ready_replicas=0,
        updated_replicas=1,
        spec_replicas=1,
        conditions=(
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet x has timed out progressing."},
        ),
    )  # fmt: skip
    got = _summary(serving_conditions(_placed(1, 1), obs, 1))
    assert got["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_compute_status_whole_block_and_change_detection() -> None:
    placement = _placed(1, 1)
    obs = _dep(ready=1, replicas=1, updated=1, gen=1, observed=1)
    conds = serving_conditions(placement, obs, 1)
    status = compute_status(
        previous=None, generation=1, name="x", placement=placement, observed=obs, target=1,
        revision="abc", conditions=conds, now="t", gpu_product="NVIDIA-L4",
    )  # fmt: skip
    assert status["selector"] == "kvpilot.io/inference-service=x"
    assert status["replicas"] == 1 and status["readyReplicas"] == 1
    assert status["desiredReplicas"] == 1 and status["revision"] == "abc"
    assert status["observedGeneration"] == 1
    assert status["placement"]["gpuProduct"] == "NVIDIA-L4"
    assert status["placement"]["tensorParallel"] == 1
    assert set(status["placement"]["memory"]) == {
        "weightsGiB", "kvCacheGiB", "overheadGiB", "totalGiB", "capacityGiB",
    }  # fmt: skip
    assert not status_changed(status, status)
    again = compute_status(
        previous=status, generation=1, name="x", placement=placement, observed=obs, target=1,
        revision="abc", conditions=conds, now="t-later",
    )  # fmt: skip
    again["placement"] = status["placement"]
    assert not status_changed(status, again)


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({}, {"a": 1}, {"a": 1}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"x": 1, "y": None}}),
        ({"a": {"s": {"k": 1}}}, {"a": {"s": {}}}, {"a": {"s": {"k": None}}}),
        ({"a": 1, "b": 2}, {"a": 3}, {"a": 3}),  # top-level keys not in new are kept
        ({"a": [1, 2]}, {"a": [1]}, {"a": [1]}),  # lists are replaced whole
    ],
)
def test_merge_patch_removes_nested_keys(
    old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert merge_patch(old, new) == patch
