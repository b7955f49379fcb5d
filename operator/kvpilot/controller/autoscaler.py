"""The autoscaler tick for one InferenceService: metrics -> pure plan -> /scale -> status.

The decision is made by the pure `kvpilot.reconcile.autoscale.plan_tick` (which runs
the policy); this module reads the metrics, writes spec.replicas through the scale
subresource (one source of truth shared with `kubectl scale`) and the status, and
only when the plan says something changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvpilot.api.parse import InvalidObjectError, parse_inference_service
from kvpilot.autoscaling.metrics import AutoscalerMetrics
from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyConfig, query_window_seconds
from kvpilot.autoscaling.source import MetricsResult, MetricsSource, MetricsUnavailable, ServiceRef
from kvpilot.controller.kube import Kube
from kvpilot.objects import merge_patch
from kvpilot.reconcile import Event
from kvpilot.reconcile.autoscale import PAUSE_ANNOTATION, TickInput, plan_tick, tick_policy
from kvpilot.reconcile.status import changed_fields, now_iso

log = logging.getLogger("kvpilot.autoscaler")

__all__ = ["PAUSE_ANNOTATION", "Autoscaler", "TickOutcome"]


@dataclass
class TickOutcome:
    """What one tick wrote, for Events, metrics and the cache."""

    events: list[Event] = field(default_factory=list)
    status_result: dict[str, Any] | None = None
    scaled: str | None = None  # "up" / "down" when spec.replicas was written

    @property
    def status_written(self) -> bool:
        return self.status_result is not None


class Autoscaler:
    """One decision per call; the controller's autoscale loop calls it on its interval."""

    def __init__(
        self,
        kube: Kube,
        source: MetricsSource | None,
        metrics: AutoscalerMetrics,
        clock: Callable[[], float] = time.time,
        base: PolicyConfig = DEFAULT_POLICY,
    ) -> None:
        self.kube = kube
        self.source = source
        self.metrics = metrics
        self.clock = clock
        self.base = base

    def tick(self, body: Mapping[str, Any], dep: Mapping[str, Any] | None) -> TickOutcome:
        """Read metrics, plan, write what changed. ``body``/``dep`` come from the caches."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        out = TickOutcome()
        try:
            isvc = parse_inference_service(body)
        except InvalidObjectError:
            return out  # the reconcile reports it
        now = self.clock()
        policy = tick_policy(isvc, self.base)
        metrics: MetricsResult | None = None
        if isinstance(policy, PolicyConfig):
            if self.source is None:
                metrics = MetricsUnavailable(
                    "the operator has no metrics source (--prometheus-url)"
                )
            else:
                metrics = self.source.query(
                    ServiceRef(ns, name), now=now, window_seconds=query_window_seconds(policy)
                )
        plan = plan_tick(
            TickInput(
                isvc=isvc,
                generation=int(meta.get("generation", 1)),
                previous=body.get("status") or {},
                annotations=meta.get("annotations") or {},
                deployment=dep,
                policy=policy,
                metrics=metrics,
                now=now,
                stamp=now_iso(),
            )
        )
        if plan.decision is not None:
            self.metrics.record(ns, name, plan.decision)
        if plan.scale_to is not None:
            spec_replicas = isvc.spec.desired_replicas
            self.kube.scale(ns, name, plan.scale_to)
            out.scaled = "up" if plan.scale_to > spec_replicas else "down"
            assert plan.decision is not None
            log.info(
                "Scaled inferenceservice=%s/%s from=%d to=%d signal=%s reason=%r",
                ns, name, spec_replicas, plan.scale_to, plan.decision.signal.value,
                plan.decision.reason,
            )  # fmt: skip
        if plan.status is not None:
            previous = body.get("status") or {}
            log.info(
                "Patched status inferenceservice=%s/%s by=autoscaler changed=%s",
                ns, name, ",".join(changed_fields(previous, plan.status)),
            )  # fmt: skip
            if log.isEnabledFor(logging.DEBUG):
                log.debug("status before=%s after=%s", previous, plan.status)
            out.status_result = self.kube.patch_status(ns, name, merge_patch(previous, plan.status))
        out.events.extend(plan.events)
        return out
