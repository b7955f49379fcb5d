"""Canary analysis for the rollout reconcile: Prometheus windows -> pure analysis step.

The rollout reconcile calls `run_analysis` on every pass while a canary exists; it
reads Prometheus only when a window is due (``interval_s`` after the last one, or
for a new canary), so calling it more often costs nothing. It runs in the worker
thread that calls it (synchronous HTTP, short timeouts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kvpilot.api.spec import AnalysisSpec
from kvpilot.autoscaling.prometheus import PrometheusMetricsSource
from kvpilot.autoscaling.revisions import RevisionMetricsUnavailableError, fetch_windows
from kvpilot.rollout.analysis import (
    AnalysisConfig,
    AnalysisStep,
    RevisionWindow,
    Verdict,
    needs_window,
    step,
    unavailable_verdict,
)

log = logging.getLogger("kvpilot.analysis")


def run_analysis(  # noqa: PLR0917 (one flat call site in the rollout reconcile)
    prom: PrometheusMetricsSource | None,
    previous: Mapping[str, Any] | None,
    cfg: AnalysisConfig,
    namespace: str,
    name: str,
    stable_rev: str,
    canary_rev: str,
    *,
    canary_ready: bool,
    rollout_step: str | None = None,
    now: float | None = None,
) -> AnalysisStep:
    """The next analysis step; ``previous`` is ``status.revisions.analysis`` as stored."""
    at = time.time() if now is None else now
    observed: tuple[RevisionWindow, RevisionWindow] | Verdict | None = None
    if canary_ready and needs_window(previous, cfg, canary_rev, at):
        if prom is None:
            observed = unavailable_verdict("the operator has no metrics source (--prometheus-url)")
        else:
            try:
                observed = fetch_windows(
                    prom, namespace, name, stable_rev, canary_rev, cfg.window_s, now=at
                )
            except RevisionMetricsUnavailableError as exc:
                observed = unavailable_verdict(str(exc))
    result = step(
        previous, cfg, canary_rev, at,
        canary_ready=canary_ready, observed=observed, rollout_step=rollout_step,
    )  # fmt: skip
    if observed is not None:
        log.info(
            "Analysed inferenceservice=%s/%s canary=%s stable=%s observed=%s verdict=%s "
            "decision=%s failures=%d passes=%d",
            namespace, name, canary_rev, stable_rev, observed, result.state.last_verdict,
            result.decision, result.state.failures, result.state.consecutive_passes,
        )  # fmt: skip
    return result


def analysis_config(spec: AnalysisSpec) -> AnalysisConfig:
    """``spec.rollout.analysis`` as the pure analysis' configuration."""
    return AnalysisConfig(
        interval_s=spec.interval_seconds,
        window_s=spec.window_seconds,
        min_requests=spec.min_requests,
        max_error_rate_ratio=spec.max_error_rate_ratio,
        error_rate_floor=spec.error_rate_floor,
        max_ttft_p95_ratio=spec.max_ttft_p95_ratio,
        max_itl_ratio=spec.max_itl_ratio,
        failure_limit=spec.failure_limit,
        inconclusive_policy=spec.inconclusive_policy,
        inconclusive_timeout_s=spec.inconclusive_timeout_seconds,
        ready_timeout_s=spec.ready_timeout_seconds,
    )
