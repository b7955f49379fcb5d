"""Canary analysis: is the new revision worse than the stable one? (pure)

Every ``interval_s`` the controller reads one window of Prometheus per revision
(:class:`RevisionWindow`), :func:`evaluate` compares canary with stable, and
:func:`advance` folds the verdict into an :class:`AnalysisState` kept in status, so
an operator restart resumes the analysis where it was. ``state.decision(cfg, now)``
turns the state into what the rollout planner does next.

The rules, and why:

* Ratios, not absolutes: the canary runs the same traffic mix as stable, so stable
  is the baseline (a model that is slow everywhere is not the canary's fault).
* The error rate has an absolute floor (``error_rate_floor``): with 0 errors on
  stable any canary error would be an infinite ratio; up to the floor it passes.
* Too few canary requests in a window (``min_requests``) is Inconclusive, never
  Pass: a canary that got no traffic has proven nothing. Ratios over zero requests
  (or a zero baseline latency) are no data, so that check is Inconclusive too.
* Failures are counted over the whole analysis (``failure_limit``); passes must be
  consecutive (``passes_to_promote``): a Fail breaks the run, an Inconclusive
  window carries no evidence and neither counts nor breaks it.
* Inconclusive for ``inconclusive_timeout_s`` in a row either holds the rollout
  (``Hold``, the default: a quiet service stays on the canary step until traffic
  comes back) or rolls back (``Rollback``).
* A canary not Ready within ``ready_timeout_s`` of the analysis start rolls back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

VerdictKind = Literal["Pass", "Fail", "Inconclusive"]
Decision = Literal["Promote", "Rollback", "Continue"]
InconclusivePolicy = Literal["Hold", "Rollback"]


@dataclass(frozen=True)
class RevisionWindow:
    """What Prometheus said about one revision over one window (None = no data)."""

    requests: float
    errors: float
    ttft_p95_s: float | None
    itl_p95_s: float | None

    @property
    def error_rate(self) -> float | None:
        """Failed over finished requests; None over zero requests."""
        if self.requests <= 0:
            return None
        return min(1.0, max(0.0, self.errors) / self.requests)


@dataclass(frozen=True)
class AnalysisConfig:
    """``spec.rollout.analysis`` in snake_case."""

    interval_s: float = 30.0
    window_s: float = 60.0
    min_requests: int = 20
    max_error_rate_ratio: float = 2.0
    error_rate_floor: float = 0.01
    max_ttft_p95_ratio: float = 1.5
    max_itl_ratio: float = 1.5
    failure_limit: int = 2
    passes_to_promote: int = 3
    inconclusive_policy: InconclusivePolicy = "Hold"
    inconclusive_timeout_s: float = 600.0
    ready_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.window_s <= 0:
            raise ValueError("interval_s and window_s must be positive")
        if self.min_requests < 1:
            raise ValueError("min_requests must be at least 1 (zero requests prove nothing)")
        if min(self.max_error_rate_ratio, self.max_ttft_p95_ratio, self.max_itl_ratio) < 1:
            raise ValueError("ratio thresholds must be at least 1")
        if not 0 <= self.error_rate_floor <= 1:
            raise ValueError("error_rate_floor must be within [0, 1]")
        if self.failure_limit < 1 or self.passes_to_promote < 1:
            raise ValueError("failure_limit and passes_to_promote must be at least 1")


@dataclass(frozen=True)
class Check:
    """One comparison of canary with stable; ``limit`` is what the canary may reach."""

    name: Literal["errorRate", "ttftP95", "interTokenLatencyP95"]
    kind: VerdictKind
    canary: float | None
    stable: float | None
    limit: float | None
    message: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of one window: ``reason`` is CamelCase for conditions and Events."""

    kind: VerdictKind
    reason: str
    message: str
    checks: tuple[Check, ...] = ()


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def _error_check(stable: RevisionWindow, canary: RevisionWindow, cfg: AnalysisConfig) -> Check:
    c, s = canary.error_rate, stable.error_rate
    if c is None or s is None:
        return Check("errorRate", "Inconclusive", c, s, None, "error rate: no requests")
    limit = max(s * cfg.max_error_rate_ratio, cfg.error_rate_floor)
    kind: VerdictKind = "Fail" if c > limit else "Pass"
    message = (
        f"error rate {_pct(c)} vs stable {_pct(s)} (limit {_pct(limit)}: "
        f"{cfg.max_error_rate_ratio:g}x stable, at least {_pct(cfg.error_rate_floor)})"
    )
    return Check("errorRate", kind, c, s, limit, message)


def _latency_check(
    name: Literal["ttftP95", "interTokenLatencyP95"],
    label: str,
    canary: float | None,
    stable: float | None,
    ratio: float,
) -> Check:
    if canary is None or stable is None or not (math.isfinite(canary) and math.isfinite(stable)):
        return Check(name, "Inconclusive", canary, stable, None, f"{label}: no data")
    if stable <= 0:
        return Check(name, "Inconclusive", canary, stable, None, f"{label}: no data")
    limit = stable * ratio
    kind: VerdictKind = "Fail" if canary > limit else "Pass"
    message = f"{label} {_ms(canary)} vs stable {_ms(stable)} (limit {ratio:g}x)"
    return Check(name, kind, canary, stable, limit, message)


_FAIL_REASONS = {
    "errorRate": "ErrorRateTooHigh",
    "ttftP95": "TimeToFirstTokenTooHigh",
    "interTokenLatencyP95": "InterTokenLatencyTooHigh",
}


def evaluate(stable: RevisionWindow, canary: RevisionWindow, cfg: AnalysisConfig) -> Verdict:
    """Canary against stable over one window: Fail if any check with data fails,
    else Inconclusive if any lacks data or the canary served too few requests, else Pass."""
    if canary.requests < cfg.min_requests:
        return Verdict(
            "Inconclusive",
            "TooFewRequests",
            f"canary served {canary.requests:.0f} requests in the last {cfg.window_s:g} s, "
            f"fewer than the {cfg.min_requests} needed",
        )
    if stable.requests < cfg.min_requests:
        return Verdict(
            "Inconclusive",
            "TooFewStableRequests",
            f"stable served {stable.requests:.0f} requests in the last {cfg.window_s:g} s, "
            f"fewer than the {cfg.min_requests} a baseline needs",
        )
    checks = (
        _error_check(stable, canary, cfg),
        _latency_check(
            "ttftP95", "TTFT p95", canary.ttft_p95_s, stable.ttft_p95_s, cfg.max_ttft_p95_ratio
        ),
        _latency_check(
            "interTokenLatencyP95",
            "inter-token latency p95",
            canary.itl_p95_s,
            stable.itl_p95_s,
            cfg.max_itl_ratio,
        ),
    )
    failed = [c for c in checks if c.kind == "Fail"]
    if failed:
        return Verdict(
            "Fail", _FAIL_REASONS[failed[0].name], "; ".join(c.message for c in failed), checks
        )
    missing = [c for c in checks if c.kind == "Inconclusive"]
    if missing:
        return Verdict("Inconclusive", "NoData", "; ".join(c.message for c in missing), checks)
    return Verdict("Pass", "WithinThresholds", "; ".join(c.message for c in checks), checks)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class AnalysisState:
    """The analysis of one canary revision so far; round-trips through status."""

    revision: str = ""
    step: str = ""
    started: float | None = None
    failures: int = 0
    consecutive_passes: int = 0
    inconclusive_since: float | None = None
    last_verdict: VerdictKind | None = None
    last_reason: str = ""
    last_message: str = ""
    last_checked: float | None = None
    checks: tuple[Check, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def start(cls, revision: str, now: float) -> AnalysisState:
        return cls(revision=revision, started=now)

    def due(self, cfg: AnalysisConfig, now: float) -> bool:
        """Whether the next window should be read (once per ``interval_s``)."""
        return self.last_checked is None or now - self.last_checked >= cfg.interval_s

    def decision(self, cfg: AnalysisConfig, now: float, *, canary_ready: bool = True) -> Decision:
        """What the rollout does next; a breach wins over everything else."""
        if self.failures >= cfg.failure_limit:
            return "Rollback"
        if not canary_ready:
            started = self.started if self.started is not None else now
            return "Rollback" if now - started >= cfg.ready_timeout_s else "Continue"
        if self.consecutive_passes >= cfg.passes_to_promote:
            return "Promote"
        if (
            cfg.inconclusive_policy == "Rollback"
            and self.inconclusive_since is not None
            and now - self.inconclusive_since >= cfg.inconclusive_timeout_s
        ):
            return "Rollback"
        return "Continue"

    def explain(self, cfg: AnalysisConfig, now: float, *, canary_ready: bool = True) -> str:
        """One sentence for a condition message or an Event: the decision and why."""
        decision = self.decision(cfg, now, canary_ready=canary_ready)
        rev = f"revision {self.revision}" if self.revision else "the canary"
        if decision == "Rollback":
            if self.failures >= cfg.failure_limit:
                return (
                    f"{rev} failed {self.failures} of {cfg.failure_limit} allowed analyses; "
                    f"last: {self.last_message}"
                )
            if not canary_ready:
                return f"{rev} was not Ready within {cfg.ready_timeout_s:g} s"
            return (
                f"{rev} analysis inconclusive for {cfg.inconclusive_timeout_s:g} s "
                f"(policy Rollback); last: {self.last_message}"
            )
        if decision == "Promote":
            return (
                f"{rev} passed {self.consecutive_passes} analyses in a row; "
                f"last: {self.last_message}"
            )
        if self.last_verdict is None:
            return f"analysing {rev}: no window read yet"
        return (
            f"analysing {rev}: {self.last_verdict} ({self.last_reason}), "
            f"{self.consecutive_passes}/{cfg.passes_to_promote} passes, "
            f"{self.failures}/{cfg.failure_limit} failures; {self.last_message}"
        )

    @property
    def reason(self) -> str:
        """The last verdict's reason (CamelCase), or AnalysisPending."""
        return self.last_reason or "AnalysisPending"

    def to_dict(self) -> dict[str, Any]:
        """The status form (camelCase keys, RFC 3339 times, no empty values)."""
        out: dict[str, Any] = {
            "revision": self.revision,
            "step": self.step,
            "startedAt": _iso(self.started),
            "failures": self.failures,
            "consecutivePasses": self.consecutive_passes,
            "inconclusiveSince": _iso(self.inconclusive_since),
            "lastVerdict": self.last_verdict,
            "lastReason": self.last_reason,
            "lastMessage": self.last_message,
            "lastChecked": _iso(self.last_checked),
        }
        return {k: v for k, v in out.items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AnalysisState:
        """Reads ``to_dict``'s form back; missing or empty status is a fresh state."""
        if not data:
            return cls()
        verdict = data.get("lastVerdict")
        return cls(
            revision=str(data.get("revision", "")),
            step=str(data.get("step", "")),
            started=_epoch(data.get("startedAt")),
            failures=int(data.get("failures", 0)),
            consecutive_passes=int(data.get("consecutivePasses", 0)),
            inconclusive_since=_epoch(data.get("inconclusiveSince")),
            last_verdict=verdict if verdict in ("Pass", "Fail", "Inconclusive") else None,
            last_reason=str(data.get("lastReason", "")),
            last_message=str(data.get("lastMessage", "")),
            last_checked=_epoch(data.get("lastChecked")),
        )


def advance(state: AnalysisState, verdict: Verdict, now: float) -> AnalysisState:
    """The state after one more window."""
    passes, failures, since = state.consecutive_passes, state.failures, state.inconclusive_since
    if verdict.kind == "Pass":
        passes, since = passes + 1, None
    elif verdict.kind == "Fail":
        passes, failures, since = 0, failures + 1, None
    elif since is None:
        since = now
    return replace(
        state,
        started=state.started if state.started is not None else now,
        failures=failures,
        consecutive_passes=passes,
        inconclusive_since=since,
        last_verdict=verdict.kind,
        last_reason=verdict.reason,
        last_message=verdict.message,
        last_checked=now,
        checks=verdict.checks,
    )


@dataclass(frozen=True)
class AnalysisEvent:
    """An Event the analysis asks for (the controller posts it on the InferenceService)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class AnalysisStep:
    """One call of the analysis: the state to store, what to do, and what to tell."""

    state: AnalysisState
    decision: Decision
    message: str
    events: tuple[AnalysisEvent, ...] = ()


def needs_window(
    previous: Mapping[str, Any] | None, cfg: AnalysisConfig, canary_rev: str, now: float
) -> bool:
    """Whether this call should read Prometheus (a new canary, or ``interval_s`` passed)."""
    state = AnalysisState.from_dict(previous)
    return state.revision != canary_rev or state.due(cfg, now)


def unavailable_verdict(reason: str) -> Verdict:
    """Prometheus could not answer: no evidence either way (counts towards a stall)."""
    return Verdict("Inconclusive", "MetricsUnavailable", reason)


def _step_key(rollout_step: str | None) -> str:
    """The step reached ("1/2" of "1/2 promoting"): what fresh evidence is needed for."""
    return (rollout_step or "").split(" ", 1)[0]


def step(
    previous: Mapping[str, Any] | None,
    cfg: AnalysisConfig,
    canary_rev: str,
    now: float,
    *,
    canary_ready: bool,
    observed: tuple[RevisionWindow, RevisionWindow] | Verdict | None,
    rollout_step: str | None = None,
) -> AnalysisStep:
    """Folds one observation into the stored state (``status.revisions.analysis``).

    ``observed``: (stable, canary) windows, a ready-made verdict (e.g.
    `unavailable_verdict`), or None when no window was due. A stored state of
    another revision is stale and starts over; when the rollout reaches another step
    (``rollout_step``, e.g. "1/2"), the passes start over (each step needs fresh
    evidence) while the failures count on. A failed window asks for a Warning Event;
    the rollout planner tells of the rollback or promotion itself.
    """
    state = AnalysisState.from_dict(previous)
    if state.revision != canary_rev:
        state = AnalysisState.start(canary_rev, now)
    key = _step_key(rollout_step)
    if state.step != key:
        state = replace(state, step=key, consecutive_passes=0)
    events: list[AnalysisEvent] = []
    if canary_ready and observed is not None:
        verdict = observed if isinstance(observed, Verdict) else evaluate(*observed, cfg)
        state = advance(state, verdict, now)
        if verdict.kind == "Fail":
            events.append(
                AnalysisEvent(
                    "Warning",
                    "CanaryAnalysisFailed",
                    f"revision {canary_rev}: {verdict.message} "
                    f"({state.failures}/{cfg.failure_limit} failures)",
                )
            )
    decision = state.decision(cfg, now, canary_ready=canary_ready)
    message = state.explain(cfg, now, canary_ready=canary_ready)
    return AnalysisStep(state, decision, message, tuple(events))
