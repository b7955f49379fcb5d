"""The quality gate in the reconcile: when it is due, what status remembers of it, and
which pods may take traffic (pure).

The gate runs once per canary revision: when the container of the canary's first
replica is ready (the rollout planner holds the canary at one replica until a
result exists) and a stable replica is Ready to compare it with. A canary rolled
out with the gate on carries a readinessGate (resources.deployment
QUALITY_GATE_CONDITION), so its pods are not Ready, and not in the Service, until
the operator sets that condition True after a pass. The result is kept in
``status.revisions.quality`` with the revision it is for, so a restarted
operator does not run it again and a new canary starts without one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvpilot.api.spec import QualityGateSpec
from kvpilot.conditions import find
from kvpilot.reconcile.rollout import live_pods
from kvpilot.resources.deployment import QUALITY_GATE_CONDITION, has_quality_gate
from kvpilot.resources.labels import REVISION
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


def container_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's containers pass their readiness probes (``containerStatuses[].ready``),
    whatever its readinessGates say: a gated canary answers the probe before it is Ready."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


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

    def first(
        revision: str, ready: Callable[[Mapping[str, Any]], bool]
    ) -> Mapping[str, Any] | None:
        found = [p for p in live_pods(pods, revision) if ready(p)]
        return min(found, key=lambda p: str(p["metadata"]["name"])) if found else None

    s, c = first(stable, _ready), first(canary, container_ready)
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


@dataclass(frozen=True)
class Admission:
    """Set QUALITY_GATE_CONDITION True on ``pod``: its revision may take traffic."""

    pod: str
    reason: str
    message: str


def admissions(
    enabled: bool, revisions: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> tuple[Admission, ...]:
    """The gated pods whose condition to set True now, derived from status alone.

    Every pod with the readinessGate is admitted unless its revision is the canary
    still waiting for (or failed by) its gate, or the revision rolled back (and not
    rolled out again, as after an abort is cleared): the stable
    revision (the first one, or a canary promoted after its gate passed), a canary whose
    gate passed (pods it scales to later included) and any revision rolled out while the
    gate was on but no longer under it. Nothing is counted or stored, so a restarted
    operator admits exactly the same pods.
    """
    canary = revisions.get("canary")
    stable = revisions.get("stable")
    failed = (revisions.get("failed") or {}).get("revision")
    rec = revisions.get("quality") or {}
    out: list[Admission] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") or not has_quality_gate(pod):
            continue
        cond = find((pod.get("status") or {}).get("conditions"), QUALITY_GATE_CONDITION)
        if cond is not None and cond.get("status") == "True":
            continue
        rev = (meta.get("labels") or {}).get(REVISION)
        name = str(meta.get("name"))
        passed = rec.get("revision") == rev and rec.get("passed") is True
        if not rev or (rev == canary and enabled and not passed):
            continue
        if rev != canary and rev == failed:
            continue  # rolled back; a canary again (abort cleared) follows the canary rule
        if passed:
            out.append(Admission(name, "QualityGatePassed", str(rec.get("message") or "")))
        elif rev == stable:
            out.append(Admission(name, "StableRevision", f"{rev} is the stable revision"))
        else:
            out.append(
                Admission(name, "QualityGateNotRequired", f"{rev} is not under the quality gate")
            )
    return tuple(sorted(out, key=lambda a: a.pod))
