"""The autoscaler loop for one InferenceService: metrics -> policy -> /scale -> status.

The decision is made by the pure policy (kvpilot.autoscaling.policy); this
module only reads what it needs, writes spec.replicas through the scale
subresource (one source of truth shared with `kubectl scale`) and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kvpilot.api.parse import InvalidObjectError, parse_inference_service
from kvpilot.autoscaling.metrics import AutoscalerMetrics
from kvpilot.autoscaling.policy import (
    DEFAULT_POLICY,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    decide,
    query_window_seconds,
)
from kvpilot.autoscaling.source import MetricsSource, MetricsUnavailable, ServiceRef
from kvpilot.conditions import Condition, merge_conditions
from kvpilot.controller.kube import Kube
from kvpilot.controller.reconciler import API_VERSION, Outcome, lock_for, now_iso
from kvpilot.reconcile import autoscaler_status, policy_config, scaling_condition, status_changed

log = logging.getLogger("kvpilot.autoscaler")

#: Annotation that pauses autoscaling of one service (holds spec.replicas as it is).
PAUSE_ANNOTATION = "kvpilot.io/autoscaling-paused"


class Autoscaler:
    """One decision per call; the timer in handlers.py calls it periodically."""

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

    def tick(self, namespace: str, name: str) -> Outcome:
        with lock_for(f"{namespace}/{name}"):
            body = self.kube.get(API_VERSION, "InferenceService", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self.metrics.forget(namespace, name)
                return Outcome()
            return self._tick(body)

    def _tick(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        previous: Mapping[str, Any] = body.get("status") or {}
        out = Outcome()
        now = self.clock()
        stamp = now_iso()
        try:
            isvc = parse_inference_service(body)
        except InvalidObjectError:
            return out  # the reconcile reports it
        scaling = isvc.spec.scaling
        if not scaling.autoscaling:
            cond = Condition(
                "ScalingActive",
                "False",
                "AutoscalingDisabled",
                f"minReplicas == maxReplicas ({scaling.max_replicas}); "
                "replicas follow spec.replicas",
            )
            self._write(ns, name, previous, {}, cond, out, int(meta.get("generation", 1)), stamp)
            return out
        try:
            policy = policy_config(isvc, self.base)
        except ValueError as exc:
            cond = Condition("ScalingActive", "False", "InvalidPolicy", f"holding replicas: {exc}")
            self._write(ns, name, previous, {}, cond, out, int(meta.get("generation", 1)), stamp)
            return out
        if self.source is None:
            result: Any = MetricsUnavailable(
                "the operator has no metrics source (--prometheus-url)"
            )
        else:
            window = query_window_seconds(policy)
            result = self.source.query(ServiceRef(ns, name), now=now, window_seconds=window)
        dep = self.kube.get("apps/v1", "Deployment", ns, name)
        dep_status = (dep or {}).get("status", {}) or {}
        ready = int(dep_status.get("readyReplicas", 0) or 0)
        existing = int(dep_status.get("replicas", 0) or 0)
        state = PolicyState.restore((previous.get("autoscaler") or {}).get("state"))
        paused = (meta.get("annotations") or {}).get(PAUSE_ANNOTATION) == "true"
        spec_replicas = isvc.spec.desired_replicas
        decision = decide(
            policy,
            state,
            PolicyInput(
                now=now,
                metrics=result,
                spec_replicas=spec_replicas,
                ready_replicas=ready,
                starting_replicas=max(0, existing - ready),
                paused=paused,
            ),
        )
        self.metrics.record(ns, name, decision)
        if decision.desired_replicas != spec_replicas:
            self.kube.scale(ns, name, decision.desired_replicas)
            verb = "ScaledUp" if decision.desired_replicas > spec_replicas else "ScaledDown"
            out.events.append(
                (
                    "Normal",
                    verb,
                    f"{spec_replicas} -> {decision.desired_replicas}: {decision.reason}",
                )
            )
            log.info(
                "Scaled inferenceservice=%s/%s from=%d to=%d signal=%s reason=%r",
                ns, name, spec_replicas, decision.desired_replicas, decision.signal.value,
                decision.reason,
            )  # fmt: skip
        cond = scaling_condition(decision)
        self._write(
            ns, name, previous, autoscaler_status(decision, stamp), cond, out,
            int(meta.get("generation", 1)), stamp,
        )  # fmt: skip
        return out

    def _write(  # noqa: PLR0917 - private helper of _tick
        self,
        ns: str,
        name: str,
        previous: Mapping[str, Any],
        block: dict[str, Any],
        cond: Condition,
        out: Outcome,
        generation: int,
        stamp: str,
    ) -> None:
        conditions = merge_conditions(
            previous.get("conditions"), [cond], generation=generation, now=stamp
        )
        status: dict[str, Any] = {"conditions": conditions}
        if block:
            old = dict(previous.get("autoscaler") or {})
            # Re-stamp only when the decision says something new.
            same = {k: v for k, v in block.items() if k != "lastDecisionTime"} == {
                k: v for k, v in old.items() if k != "lastDecisionTime"
            }
            if same and "lastDecisionTime" in old:
                block = {**block, "lastDecisionTime": old["lastDecisionTime"]}
            status["autoscaler"] = block
        if not status_changed(previous, status):
            return
        self.kube.patch_status(ns, name, status)
        out.status_written = True
        before = next(
            (c for c in previous.get("conditions", []) or [] if c.get("type") == "ScalingActive"),
            None,
        )
        if (
            before is None
            or before.get("status") != cond.status
            or before.get("reason") != cond.reason
        ):
            etype = (
                "Warning"
                if cond.status == "False" and cond.reason != "AutoscalingDisabled"
                else "Normal"
            )
            out.events.append((etype, cond.reason, f"ScalingActive={cond.status}: {cond.message}"))
