"""The quality gate in the reconcile: when it is due, and what status remembers of it (pure).

The gate runs once per canary revision: when the canary's first replica is
Ready (the rollout planner holds the canary at one replica until a result
exists) and a stable replica is Ready to compare it with. Its result is kept
in ``status.revisions.quality`` with the revision it is for, so a restarted
operator does not run it again and a new canary starts without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvpilot.api.spec import QualityGateSpec
from kvpilot.conditions import find
from kvpilot.reconcile.rollout import live_pods
from kvpilot.rollout.quality import DEFAULT_PROMPTS, QualityGateConfig, QualityResult


def quality_config(spec: QualityGateSpec) -> QualityGateConfig:
    """``spec.rollout.qualityGate`` as the comparison needs it (no prompts: the built-in set)."""
    return QualityGateConfig(
        prompts=tuple(spec.prompts) or DEFAULT_PROMPTS,
        max_tokens=spec.max_tokens,
        min_token_agreement=spec.min_token_agreement,
        max_logprob_divergence=spec.max_logprob_divergence,
    )


@dataclass(frozen=True)
class GateRun:
    """The gate is due: compare these two pods (one Ready replica of each revision)."""

    stable: str
    canary: str
    stable_pod: Mapping[str, Any]
    canary_pod: Mapping[str, Any]


def recorded(previous: Mapping[str, Any], canary: str) -> tuple[bool, str] | None:
    """(passed, message) that status holds for ``canary``; None when it holds none for it."""
    rec = (previous.get("revisions") or {}).get("quality") or {}
    if rec.get("revision") != canary or not isinstance(rec.get("passed"), bool):
        return None
    return bool(rec["passed"]), str(rec.get("message") or "")


def _ready(pod: Mapping[str, Any]) -> bool:
    cond = find((pod.get("status") or {}).get("conditions"), "Ready")
    return cond is not None and cond.get("status") == "True"


def gate_due(
    enabled: bool, previous: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> GateRun | None:
    """The gate to run now, or None (off, no canary, already decided, or no Ready pair yet).

    The revisions come from the previous status: the planner names the canary
    there on the reconcile that creates its Deployment, long before its first
    replica is Ready.
    """
    revisions = previous.get("revisions") or {}
    stable, canary = revisions.get("stable"), revisions.get("canary")
    if not enabled or not stable or not canary or stable == canary:
        return None
    if recorded(previous, canary) is not None:
        return None

    def first_ready(revision: str) -> Mapping[str, Any] | None:
        ready = [p for p in live_pods(pods, revision) if _ready(p)]
        return min(ready, key=lambda p: str(p["metadata"]["name"])) if ready else None

    s, c = first_ready(stable), first_ready(canary)
    if s is None or c is None:
        return None
    return GateRun(stable, canary, s, c)


def quality_record(result: QualityResult, run: GateRun, now: str) -> dict[str, Any]:
    """What ``status.revisions.quality`` keeps of one run."""
    return {
        "revision": run.canary,
        "stable": run.stable,
        "passed": result.passed,
        "reason": result.reason,
        "message": result.message,
        "tokenAgreement": round(result.token_agreement, 4),
        "logprobDivergence": (
            None if result.logprob_divergence is None else round(result.logprob_divergence, 4)
        ),
        "checkedAt": now,
    }
