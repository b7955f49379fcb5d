"""``kvpilot run``: the operator process (kopf) against the current kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvpilot run", description="Run the kvpilot operator.")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("KVPILOT_METRICS_PORT", "8080")),
        help="port of the operator's Prometheus /metrics (0 disables it)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("KVPILOT_HEALTH_PORT", "8081")),
        help="port of the liveness endpoint /healthz (0 disables it)",
    )
    parser.add_argument(
        "--repair-interval", type=float, default=None, help="seconds between drift repairs"
    )
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("KVPILOT_PROMETHEUS_URL"),
        help="Prometheus that scrapes the vLLM replicas (autoscaling holds without it)",
    )
    parser.add_argument(
        "--metrics-step",
        type=float,
        default=float(os.environ.get("KVPILOT_METRICS_STEP", "15")),
        help="resolution (seconds) of the metric windows the autoscaler reads",
    )
    parser.add_argument(
        "--autoscale-interval",
        type=float,
        default=None,
        help="seconds between autoscaling decisions",
    )
    parser.add_argument(
        "--promql-templates",
        default=os.environ.get("KVPILOT_PROMQL_TEMPLATES"),
        metavar="FILE",
        help="YAML with the PromQL the autoscaler runs, for other label conventions "
        "(docs/autoscaling.md); keys left out keep their defaults",
    )
    parser.add_argument(
        "--scaling-defaults",
        default=os.environ.get("KVPILOT_SCALING_DEFAULTS"),
        metavar="FILE",
        help="YAML with the operator-wide autoscaling policy in spec.scaling's spelling; "
        "each service's spec.scaling overrides it knob by knob",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the leader-election Lease (default: $POD_NAMESPACE, else default)",
    )
    parser.add_argument(
        "--leader-election-id", default="kvpilot-operator", help="name of the Lease"
    )
    parser.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act at once without a Lease (only when exactly one replica runs)",
    )
    parser.add_argument(
        "--workers", type=int, default=16, help="reconciles run in parallel (threads)"
    )
    parser.add_argument(
        "--tenant-policy",
        default=os.environ.get("KVPILOT_TENANT_POLICY"),
        metavar="FILE",
        help="YAML capping each namespace's placement priority (maxPriority) and GPUs "
        "(maxGPUs); see docs/placement.md",
    )
    parser.add_argument(
        "--scheduler-name",
        default=os.environ.get("KVPILOT_SCHEDULER_NAME") or None,
        help="schedulerName of kvpilot's pods: a bin-packing kube-scheduler profile such as "
        "deploy/scheduler/kvpilot-binpack.yaml, or Volcano/KAI (default: the cluster's default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyFileError, load_policy_defaults
    from kvpilot.autoscaling.prometheus import PromQLTemplates, TemplatesError, load_templates
    from kvpilot.reconcile.tenancy import TenantPolicy, TenantPolicyError, load_tenant_policy

    templates = PromQLTemplates()
    policy = DEFAULT_POLICY
    tenants = TenantPolicy()
    try:
        if args.tenant_policy:
            with open(args.tenant_policy, encoding="utf-8") as fh:
                tenants = load_tenant_policy(fh.read(), args.tenant_policy)
        if args.promql_templates:
            with open(args.promql_templates, encoding="utf-8") as fh:
                templates = load_templates(fh.read(), args.promql_templates)
        if args.scaling_defaults:
            with open(args.scaling_defaults, encoding="utf-8") as fh:
                policy = load_policy_defaults(fh.read(), args.scaling_defaults)
    except (OSError, TemplatesError, PolicyFileError, TenantPolicyError) as exc:
        parser.exit(2, f"kvpilot run: {exc}\n")

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler call at INFO: far too much at a thousand services.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from kvpilot.controller.core import new_identity
    from kvpilot.controller.settings import Settings

    settings = Settings(
        namespaces=tuple(args.namespace),
        repair_interval=args.repair_interval if args.repair_interval is not None else 30.0,
        autoscale_interval=args.autoscale_interval if args.autoscale_interval is not None else 15.0,
        workers=max(1, args.workers),
        prometheus_url=args.prometheus_url,
        metrics_step=args.metrics_step,
        templates=templates,
        policy=policy,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        leader_election=not args.no_leader_election,
        lease_name=args.leader_election_id,
        lease_namespace=args.leader_election_namespace,
        identity=new_identity(),
        scheduler_name=args.scheduler_name,
        tenants=tenants,
    )
    return run(settings)


def redact_url(url: str) -> str:
    """A URL without its credentials (user:password@ and query string), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "?..." if parts.query else ""
    auth = "***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{auth}{host}{parts.path}{query}"


class _Health(BaseHTTPRequestHandler):
    """/healthz answers 200 on leader and standby alike (the process is alive)."""

    role = "standby"

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/healthz", "/readyz"):
            self.send_error(404)
            return
        body = json.dumps({"status": "ok", "role": type(self).role}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def run(settings: Any) -> int:
    """Start serving metrics and health, win the Lease, then watch and reconcile."""
    import kopf

    from kvpilot.autoscaling.metrics import AutoscalerMetrics
    from kvpilot.autoscaling.prometheus import PrometheusMetricsSource
    from kvpilot.autoscaling.source import MetricsSource
    from kvpilot.controller import handlers  # noqa: F401 - registers the kopf handlers
    from kvpilot.controller.autoscaler import Autoscaler
    from kvpilot.controller.core import Controller
    from kvpilot.controller.kube import Kube, load_config
    from kvpilot.controller.leader import LeaderElector
    from kvpilot.controller.metrics import OperatorMetrics

    log = logging.getLogger("kvpilot.run")
    load_config()
    kube = Kube()
    metrics = OperatorMetrics()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
        log.info("Serving operator metrics port=%d", settings.metrics_port)
    if settings.health_port:
        server = ThreadingHTTPServer(("0.0.0.0", settings.health_port), _Health)
        threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    elector = None
    if settings.leader_election:
        elector = LeaderElector(
            kube,
            name=settings.lease_name,
            namespace=settings.lease_namespace,
            identity=settings.identity,
            duration=settings.lease_duration,
            renew=settings.lease_renew,
        )
        metrics.leader.set(0)
        elector.acquire()
    metrics.leader.set(1)
    _Health.role = "leader"

    source: MetricsSource | None = None
    if settings.prometheus_url:
        source = PrometheusMetricsSource(
            settings.prometheus_url,
            step_seconds=settings.metrics_step,
            templates=settings.templates,
        )
        log.info(
            "Reading serving metrics prometheus=%s step=%gs",
            redact_url(settings.prometheus_url), settings.metrics_step,
        )  # fmt: skip
    else:
        log.warning("No --prometheus-url: autoscaling holds replicas (ScalingActive=False)")
    autoscaler = Autoscaler(kube, source, AutoscalerMetrics(), base=settings.policy)
    controller = Controller(kube, settings, metrics=metrics, autoscaler=autoscaler)
    lost = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if elector is not None:

            def on_lost() -> None:
                lost.set()
                loop.call_soon_threadsafe(stop.set)

            threading.Thread(
                target=elector.keep, args=(on_lost,), daemon=True, name="lease"
            ).start()
        work = asyncio.create_task(controller.run(stop))
        try:
            await kopf.operator(
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                standalone=True,
                stop_flag=stop,
                memo=kopf.Memo(controller=controller),
            )
        finally:
            stop.set()
            await asyncio.gather(work, return_exceptions=True)
            controller.events.flush()

    try:
        asyncio.run(main())
    finally:
        if elector is not None and not lost.is_set():
            elector.release()
    if lost.is_set():
        log.error("Exiting: the leader Lease was lost")
        return 1
    return 0
