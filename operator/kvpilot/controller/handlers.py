"""kopf handlers: the thin I/O layer. Every trigger runs the same reconcile."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf
from urllib3.exceptions import HTTPError

from kvpilot.autoscaling.metrics import AutoscalerMetrics
from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyConfig
from kvpilot.autoscaling.prometheus import PrometheusMetricsSource, PromQLTemplates
from kvpilot.autoscaling.source import MetricsSource
from kvpilot.controller.autoscaler import Autoscaler
from kvpilot.controller.kube import GROUP, PLURAL, VERSION, ApiError, Kube
from kvpilot.controller.reconciler import API_VERSION, Outcome, reconcile
from kvpilot.resources.labels import INFERENCE_SERVICE, MANAGED_BY, MANAGER

log = logging.getLogger("kvpilot.handlers")

REPAIR_INTERVAL = float(os.environ.get("KVPILOT_REPAIR_INTERVAL", "30"))
AUTOSCALE_INTERVAL = float(os.environ.get("KVPILOT_AUTOSCALE_INTERVAL", "15"))

_kube: Kube | None = None
_autoscaler: Autoscaler | None = None


def client() -> Kube:
    global _kube  # noqa: PLW0603 - one client per process, made after config is loaded
    if _kube is None:
        _kube = Kube()
    return _kube


def configure_runtime(
    metrics_port: int,
    prometheus_url: str | None = None,
    metrics_step: float = 15.0,
    templates: PromQLTemplates | None = None,
    policy: PolicyConfig = DEFAULT_POLICY,
) -> None:
    """Process-wide set-up done by ``kvpilot run`` before kopf starts."""
    global _autoscaler  # noqa: PLW0603 - one autoscaler per process
    source: MetricsSource | None = None
    if prometheus_url:
        source = PrometheusMetricsSource(
            prometheus_url, step_seconds=metrics_step, templates=templates
        )
        log.info("Reading serving metrics prometheus=%s step=%gs", prometheus_url, metrics_step)
    else:
        log.warning("No --prometheus-url: autoscaling holds replicas (ScalingActive=False)")
    _autoscaler = Autoscaler(client(), source, AutoscalerMetrics(), base=policy)
    if policy != DEFAULT_POLICY:
        log.info("Operator-wide scaling policy %s", policy.model_dump(by_alias=True))
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
        log.info("Serving operator metrics port=%d", metrics_port)


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kvpilot.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kvpilot.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    settings.networking.error_backoffs = [1, 2, 5, 10]


def _as_body(body: Mapping[str, Any]) -> kopf.Body:
    if isinstance(body, kopf.Body):
        return body
    return kopf.Body(cast("kopf.RawBody", dict(body)))


def _post(body: Mapping[str, Any], outcome: Outcome) -> None:
    for etype, reason, message in outcome.events:
        if etype == "Warning":
            kopf.warn(_as_body(body), reason=reason, message=message)
        else:
            kopf.info(_as_body(body), reason=reason, message=message)


def _run(body: Mapping[str, Any]) -> Outcome:
    try:
        outcome = reconcile(client(), body)
    except ApiError as exc:
        if exc.status in (400, 422):
            raise kopf.PermanentError(
                f"API server refused a rendered object: {exc.reason}: {exc.body}"
            ) from exc
        raise kopf.TemporaryError(f"API error {exc.status} {exc.reason}", delay=5) from exc
    except (HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"API server unreachable: {exc}", delay=5) from exc
    _post(body, outcome)
    return outcome


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_change(body: kopf.Body, **_: Any) -> None:
    """Create, spec change, `kubectl scale`, operator restart: one reconcile."""
    outcome = _run(body)
    if outcome.invalid is not None:
        # Permanent: retrying cannot help until the spec changes.
        raise kopf.PermanentError(outcome.invalid)


@kopf.timer(GROUP, VERSION, PLURAL, interval=REPAIR_INTERVAL, initial_delay=REPAIR_INTERVAL)
def repair(body: kopf.Body, **_: Any) -> None:
    """Periodic reconcile: repairs drift and re-plans the pool after others change."""
    _run(body)


@kopf.timer(GROUP, VERSION, PLURAL, interval=AUTOSCALE_INTERVAL, initial_delay=1.0)
def autoscale(body: kopf.Body, **_: Any) -> None:
    """One autoscaling decision per interval (queue depth and KV cache from Prometheus)."""
    if _autoscaler is None:
        return
    meta = body["metadata"]
    try:
        outcome = _autoscaler.tick(meta["namespace"], meta["name"])
    except ApiError as exc:
        raise kopf.TemporaryError(f"API error {exc.status} {exc.reason}", delay=5) from exc
    except (HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"API server unreachable: {exc}", delay=5) from exc
    _post(body, outcome)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY: MANAGER})
def on_deployment(body: kopf.Body, type: str | None, **_: Any) -> None:
    """An owned Deployment changed (pods became ready, someone edited or deleted it)."""
    meta = body.get("metadata", {})
    owner = meta.get("labels", {}).get(INFERENCE_SERVICE)
    ns = meta.get("namespace")
    if not owner or not ns or type is None:
        return
    try:
        isvc = client().get(API_VERSION, "InferenceService", ns, owner)
    except ApiError as exc:
        log.warning(
            "Reading owner failed deployment=%s/%s err=%s", ns, meta.get("name"), exc.reason
        )
        return
    if isvc is None or isvc["metadata"].get("deletionTimestamp"):
        return
    try:
        _run(isvc)
    except kopf.PermanentError as exc:
        log.info("Not reconciling %s/%s: %s", ns, owner, exc)
    except kopf.TemporaryError as exc:
        log.warning("Reconcile after deployment event failed %s/%s: %s", ns, owner, exc)
