"""``kvpilot run``: the operator process (kopf) against the current kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence


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
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyFileError, load_policy_defaults
    from kvpilot.autoscaling.prometheus import PromQLTemplates, TemplatesError, load_templates

    templates = PromQLTemplates()
    policy = DEFAULT_POLICY
    try:
        if args.promql_templates:
            with open(args.promql_templates, encoding="utf-8") as fh:
                templates = load_templates(fh.read(), args.promql_templates)
        if args.scaling_defaults:
            with open(args.scaling_defaults, encoding="utf-8") as fh:
                policy = load_policy_defaults(fh.read(), args.scaling_defaults)
    except (OSError, TemplatesError, PolicyFileError) as exc:
        parser.exit(2, f"kvpilot run: {exc}\n")

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.repair_interval is not None:
        os.environ["KVPILOT_REPAIR_INTERVAL"] = str(args.repair_interval)
    if args.autoscale_interval is not None:
        os.environ["KVPILOT_AUTOSCALE_INTERVAL"] = str(args.autoscale_interval)

    import kopf

    from kvpilot.controller import handlers, kube

    kube.load_config()
    handlers.configure_runtime(
        metrics_port=args.metrics_port,
        prometheus_url=args.prometheus_url,
        metrics_step=args.metrics_step,
        templates=templates,
        policy=policy,
    )
    liveness = f"http://127.0.0.1:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            standalone=True,
            liveness_endpoint=liveness,
        )
    )
    return 0
