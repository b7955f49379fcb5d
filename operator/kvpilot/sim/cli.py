"""``kvpilot simulate``: replay a trace through the operator's policy, write a report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import yaml

from kvpilot.api.parse import InferenceService, InvalidObjectError, parse_inference_service
from kvpilot.autoscaling.policy import PolicyFileError
from kvpilot.sim.args import fraction, non_negative, positive
from kvpilot.sim.baselines import Comparison, format_comparison, run_comparison
from kvpilot.sim.fleet import (
    DEFAULT_COLD_START_S,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_QUERY_DELAY_S,
    DEFAULT_SCRAPE_INTERVAL_S,
    SimResult,
    fleet_setup,
    simulate,
)
from kvpilot.sim.oracle import Slo
from kvpilot.sim.report import DEFAULT_ITL_SLO_S, DEFAULT_TTFT_SLO_S, write_report
from kvpilot.sim.scaler import (
    OPERATOR_INTERVAL_S,
    OPERATOR_METRICS_STEP_S,
    KvpilotScaler,
    load_site_policy,
)
from kvpilot.sim.trace import TraceError, load_trace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvpilot simulate",
        description="Replay a request trace through a simulated fleet of the service's vLLM "
        "replicas under the operator's own autoscaling policy, far faster than real time.",
    )
    p.add_argument("--trace", required=True, help="Azure LLM trace CSV, or generic CSV/JSONL")
    p.add_argument("--service", required=True, help="InferenceService YAML")
    p.add_argument("--policy", default=None, help="operator-wide policy file (--scaling-defaults)")
    p.add_argument("--rate-scale", type=positive, default=1.0, help="replay at X times the rate")
    p.add_argument("--start", type=non_negative, default=None, help="trace seconds to skip")
    p.add_argument("--duration", type=positive, default=None, help="trace seconds to replay")
    p.add_argument("--report", required=True, metavar="DIR", help="writes result.json, report.html")
    p.add_argument("--no-html", action="store_true", help="only result.json")
    p.add_argument(
        "--ttft-slo",
        type=positive,
        default=DEFAULT_TTFT_SLO_S,
        help="seconds (default %(default)s)",
    )
    p.add_argument(
        "--itl-slo",
        type=positive,
        default=DEFAULT_ITL_SLO_S,
        help="seconds of mean inter-token latency (default %(default)s)",
    )
    p.add_argument("--gpu-type", default=None, help="one of the planner's options for the model")
    p.add_argument("--profile", default=None, help="latency profile (default: the GPU type's)")
    p.add_argument(
        "--gpus-per-node", type=int, default=None, help="GPUs per node (caps tensor parallelism)"
    )
    p.add_argument(
        "--cold-start",
        type=non_negative,
        default=DEFAULT_COLD_START_S,
        help="seconds from a replica's creation to Ready (default %(default)s)",
    )
    p.add_argument("--scrape-interval", type=positive, default=DEFAULT_SCRAPE_INTERVAL_S)
    p.add_argument("--query-delay", type=non_negative, default=DEFAULT_QUERY_DELAY_S)
    p.add_argument("--autoscale-interval", type=positive, default=OPERATOR_INTERVAL_S)
    p.add_argument("--metrics-step", type=positive, default=OPERATOR_METRICS_STEP_S)
    p.add_argument("--drain-timeout", type=non_negative, default=DEFAULT_DRAIN_TIMEOUT_S)
    p.add_argument("--initial-replicas", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also replay every baseline autoscaler and compute the clairvoyant oracle: "
        "a table on stdout, in result.json and in the report (all from the same warm fleet)",
    )
    p.add_argument(
        "--target-attainment",
        type=fraction,
        default=0.99,
        help="with --compare: share of requests the oracle keeps within the TTFT SLO "
        "(default %(default)s)",
    )
    return p


def load_service(path: str | Path) -> InferenceService:
    """An InferenceService manifest; namespace and uid get defaults for a file on disk."""
    body = yaml.safe_load(Path(path).read_text())
    if not isinstance(body, dict) or body.get("kind") not in (None, "InferenceService"):
        raise ValueError(f"{path}: not an InferenceService manifest")
    meta = dict(body.get("metadata") or {})
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", "simulated")
    return parse_inference_service({**body, "metadata": meta})


def policy_progress(stream: TextIO = sys.stderr) -> Callable[[str, float], None]:
    """One progress bar per policy of a comparison, each on its own line."""
    bars: dict[str, Callable[[float], None]] = {}

    def show(policy: str, fraction: float) -> None:
        if policy not in bars:
            bars[policy] = progress_bar(stream, label=f"{policy:<18}")
        bars[policy](fraction)

    return show


def progress_bar(
    stream: TextIO = sys.stderr, width: int = 40, label: str = "simulating"
) -> Callable[[float], None]:
    """A one-line progress bar, redrawn in place on a terminal.

    Elsewhere (a CI log, a file) redrawing would write a line per update, so it
    writes one line per tenth of the run instead.
    """
    started = time.monotonic()
    finished = False
    redraw = stream.isatty()
    shown_tenths = -1

    def show(fraction: float) -> None:
        nonlocal finished, shown_tenths
        if finished:
            return
        finished = fraction >= 1.0
        tenths = int(10 * fraction)
        if not redraw and tenths == shown_tenths and not finished:
            return
        shown_tenths = tenths
        done = int(fraction * width)
        elapsed = time.monotonic() - started
        bar = "#" * done + "." * (width - done)
        line = f"{label} [{bar}] {100 * fraction:5.1f}% {elapsed:6.1f}s"
        stream.write(f"\r{line}" if redraw else f"{line}\n")
        if redraw and finished:
            stream.write("\n")
        stream.flush()

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        service = load_service(args.service)
        base = load_site_policy(args.policy)
        requests = load_trace(
            args.trace, rate_scale=args.rate_scale, start_s=args.start, duration_s=args.duration
        )
        scaler = KvpilotScaler(service, base, interval_s=args.autoscale_interval)
    except (OSError, ValueError, TraceError, PolicyFileError, InvalidObjectError) as exc:
        print(f"kvpilot simulate: {exc}", file=sys.stderr)
        return 2
    if not requests:
        print("kvpilot simulate: the trace selection has no requests", file=sys.stderr)
        return 2
    started = time.process_time()
    comparison: Comparison | None = None
    timing = {
        "cold_start_s": args.cold_start,
        "scrape_interval_s": args.scrape_interval,
        "query_delay_s": args.query_delay,
        "metrics_step_s": args.metrics_step,
        "drain_timeout_s": args.drain_timeout,
    }
    try:
        setup = fleet_setup(
            service, gpu_type=args.gpu_type, profile=args.profile, gpus_per_node=args.gpus_per_node
        )
        if args.compare:
            comparison = run_comparison(
                requests,
                service=service,
                slo=Slo(ttft_s=args.ttft_slo, attainment=args.target_attainment),
                base=base,
                setup=setup,
                initial_replicas=args.initial_replicas,
                progress=None if args.no_progress else policy_progress(),
                kvpilot_interval_s=args.autoscale_interval,
                **timing,
            )
            result: SimResult = comparison.results["kvpilot"]
        else:
            result = simulate(
                requests,
                service=service,
                scaler=scaler,
                setup=setup,
                initial_replicas=args.initial_replicas,
                progress=None if args.no_progress else progress_bar(),
                **timing,
            )
    except ValueError as exc:
        print(f"kvpilot simulate: {exc}", file=sys.stderr)
        return 2
    cpu = time.process_time() - started
    summary = write_report(
        result,
        args.report,
        title=f"kvpilot policy simulation: {service.name} on {Path(args.trace).name}",
        ttft_slo_s=args.ttft_slo,
        itl_slo_s=args.itl_slo,
        html_report=not args.no_html,
        comparison=comparison,
        extra={
            "trace": str(args.trace),
            "rate_scale": args.rate_scale,
            "service": service.name,
            "simulation": {
                "cold_start_s": args.cold_start,
                "scrape_interval_s": args.scrape_interval,
                "query_delay_s": args.query_delay,
                "autoscale_interval_s": args.autoscale_interval,
                "metrics_step_s": args.metrics_step,
                "initial_replicas": result.series.ready[0] if result.series.ready else None,
                "cpu_seconds": round(cpu, 3),
                "speedup_vs_real_time": round(result.duration_s / cpu, 1) if cpu > 0 else None,
            },
        },
    )
    att = summary["attainment"]
    print(
        f"{summary['requests']} requests: TTFT attainment {100 * (att['ttft'] or 0):.2f} %, "
        f"ITL attainment {100 * (att['itl'] or 0):.2f} %, p95 TTFT {summary['ttft_s']['p95']} s, "
        f"{summary['gpu_hours']} GPU-hours, {summary['scale_event_count']} scale events; "
        f"report in {args.report}"
    )
    if comparison is not None:
        print(format_comparison(comparison))
        warning = comparison.capped_warning()
        if warning:
            print(f"kvpilot simulate: warning: {warning}", file=sys.stderr)
    return 0
