"""`kvpilot tune`: search a service's autoscaling knobs on a trace for the fewest GPU-hours.

Each candidate is a set of spec.scaling knobs merged over the service's own
spec.scaling (and the site policy file under it), replayed through the fleet
simulator with the operator's real policy. The objective: the fewest GPU-hours
among candidates whose TTFT-SLO attainment reaches the target; while none does,
the highest attainment.

The search is coordinate descent over a small grid per knob, starting from the
service's current policy: for each knob in turn, every value is tried with the
other knobs at their best so far, and the best is kept; the passes repeat until
a pass changes nothing or the simulation budget is spent. Simulations are
memoised, so a candidate is never replayed twice. It is a local search: it finds
a good policy near the current one, not a guaranteed optimum.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvpilot.sim.args import fraction, non_negative, positive
from kvpilot.sim.report import DEFAULT_TTFT_SLO_S

#: The knobs searched and their candidate values (spec.scaling's spelling; None: unset).
DEFAULT_SPACE: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("targets.batchUtilization", (0.5, 0.65, 0.8)),
    ("forecastSeconds", (60.0, 120.0, 180.0)),
    ("targets.kvCacheUtilization", (0.5, 0.6, 0.7, 0.8, 0.9)),
    ("targets.queueDepthPerReplica", (1.0, 2.0, 4.0, 8.0)),
    ("targets.timeToFirstTokenSeconds", (None, "0.5slo", "0.8slo")),
    ("scaleDown.stabilizationWindowSeconds", (60.0, 150.0, 300.0, 600.0)),
    ("scaleDown.burstHoldSeconds", (None, 0.0, 900.0, 2400.0)),
    ("stableWindowSeconds", (60.0, 120.0, 180.0, 300.0)),
    ("panicThreshold", (1.5, 2.0, 3.0)),
)


@dataclass(frozen=True)
class Evaluation:
    """One candidate's outcome."""

    knobs: tuple[tuple[str, Any], ...]
    gpu_hours: float
    attainment: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "knobs": dict(self.knobs),
            "gpu_hours": round(self.gpu_hours, 4),
            "attainment": round(self.attainment, 5),
        }


def better(a: Evaluation, b: Evaluation | None, target: float) -> bool:
    """Whether ``a`` beats ``b``: feasible beats infeasible; then fewer GPU-hours (feasible)
    or higher attainment (infeasible); ties go to fewer GPU-hours."""
    if b is None:
        return True
    fa, fb = a.attainment >= target, b.attainment >= target
    if fa != fb:
        return fa
    if fa:
        return (a.gpu_hours, -a.attainment) < (b.gpu_hours, -b.attainment)
    return (-a.attainment, a.gpu_hours) < (-b.attainment, b.gpu_hours)


@dataclass(frozen=True)
class TuneResult:
    best: Evaluation
    evaluations: tuple[Evaluation, ...]
    target: float
    budget_spent: bool

    @property
    def feasible(self) -> bool:
        return self.best.attainment >= self.target

    def pareto(self) -> list[Evaluation]:
        """Candidates no other beats on both GPU-hours and attainment, by GPU-hours."""
        out: list[Evaluation] = []
        for e in sorted(self.evaluations, key=lambda e: (e.gpu_hours, -e.attainment)):
            if not out or e.attainment > out[-1].attainment:
                out.append(e)
        return out


def search(
    evaluate: Callable[[Mapping[str, Any]], tuple[float, float]],
    start: Mapping[str, Any],
    space: Sequence[tuple[str, Sequence[Any]]],
    target: float,
    *,
    budget: int = 30,
    progress: Callable[[Evaluation], None] | None = None,
) -> TuneResult:
    """Coordinate descent (module docstring); ``evaluate(knobs)`` -> (GPU-hours, attainment)."""
    seen: dict[tuple[tuple[str, Any], ...], Evaluation] = {}
    spent = False

    def run(knobs: Mapping[str, Any]) -> Evaluation | None:
        nonlocal spent
        key = tuple(sorted(knobs.items()))
        if key in seen:
            return seen[key]
        if len(seen) >= budget:
            spent = True
            return None
        gpu_hours, attainment = evaluate(dict(key))
        ev = Evaluation(key, gpu_hours, attainment)
        seen[key] = ev
        if progress is not None:
            progress(ev)
        return ev

    current = dict(start)
    best = run(current)
    assert best is not None  # a budget of at least one
    changed = True
    while changed and not spent:
        changed = False
        for knob, values in space:
            for value in values:
                cand = {**current, knob: value}
                ev = run(cand)
                if ev is None:
                    break
                if better(ev, best, target):
                    best, current, changed = ev, cand, True
            if spent:
                break
    return TuneResult(best, tuple(seen.values()), target, spent)


# --------------------------------------------------------------------------- knobs <-> spec.scaling


def nested(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"targets.x": 1}`` -> ``{"targets": {"x": 1}}``; None values are left out."""
    out: dict[str, Any] = {}
    for key, value in knobs.items():
        if value is None:
            continue
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve(knobs: Mapping[str, Any], ttft_slo_s: float) -> dict[str, Any]:
    """Knob values as the policy takes them: ``"0.5slo"`` -> half the TTFT SLO."""
    out: dict[str, Any] = {}
    for k, v in knobs.items():
        if isinstance(v, str) and v.endswith("slo"):
            out[k] = round(float(v[:-3]) * ttft_slo_s, 3)
        else:
            out[k] = v
    return out


def current_knobs(
    scaling: Mapping[str, Any], space: Sequence[tuple[str, Sequence[Any]]]
) -> dict[str, Any]:
    """The searched knobs as the service sets them (None: unset, the site policy decides)."""
    out: dict[str, Any] = {}
    for knob, _ in space:
        d: Any = scaling
        for p in knob.split("."):
            d = d.get(p) if isinstance(d, Mapping) else None
        out[knob] = d
    return out


def scaling_block(doc_scaling: Mapping[str, Any], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """The service's spec.scaling with the knobs applied (unset knobs removed)."""
    out = copy.deepcopy(dict(doc_scaling))
    for key, value in knobs.items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        if value is None:
            d.pop(parts[-1], None)
        else:
            d[parts[-1]] = value
    for key in [k for k, v in out.items() if isinstance(v, dict) and not v]:
        del out[key]
    return out


# --------------------------------------------------------------------------- command


def plot(result: TuneResult, path: Path, title: str) -> bool:
    """The trade-off curve: every candidate, the Pareto front, the target and the pick."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter(
        [e.gpu_hours for e in result.evaluations],
        [e.attainment for e in result.evaluations],
        s=18,
        color="#9aa5b1",
        label="candidates",
    )
    front = result.pareto()
    ax.plot(
        [e.gpu_hours for e in front],
        [e.attainment for e in front],
        "-o",
        color="#1f6feb",
        ms=4,
        label="trade-off (Pareto front)",
    )
    ax.axhline(result.target, color="#d1242f", ls="--", lw=1, label=f"target {result.target:g}")
    ax.scatter(
        [result.best.gpu_hours],
        [result.best.attainment],
        marker="*",
        s=160,
        color="#1a7f37",
        zorder=5,
        label="recommended",
    )
    ax.set_xlabel("GPU-hours")
    ax.set_ylabel("TTFT-SLO attainment")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kvpilot tune",
        description="Search a service's spec.scaling knobs on a trace: fewest GPU-hours "
        "at the target TTFT-SLO attainment.",
    )
    ap.add_argument("--trace", required=True, type=Path, help="Azure CSV or generic CSV/JSONL")
    ap.add_argument("--service", required=True, type=Path, help="InferenceService YAML")
    ap.add_argument("--target-attainment", type=fraction, default=0.99)
    ap.add_argument(
        "--ttft-slo",
        type=positive,
        default=DEFAULT_TTFT_SLO_S,
        help="TTFT SLO in seconds, as kvpilot simulate (default %(default)s)",
    )
    ap.add_argument("--policy", type=Path, help="site policy file (kvpilot run --scaling-defaults)")
    ap.add_argument("--rate-scale", type=positive, default=1.0)
    ap.add_argument("--start", type=non_negative, default=None, help="trace seconds to skip")
    ap.add_argument("--duration", type=positive, default=None, help="trace seconds to replay")
    ap.add_argument(
        "--cold-start", type=non_negative, default=None, help="seconds (simulator default)"
    )
    ap.add_argument("--budget", type=int, default=30, help="simulations at most (30)")
    ap.add_argument("--out", type=Path, default=Path("tune-out"), help="directory for PNG/JSON")
    ap.add_argument(
        "--write-policy", type=Path, help="also write the recommendation as a site policy file"
    )
    return ap


def _load_service_doc(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or "spec" not in doc:
        raise ValueError(f"{path}: not an InferenceService manifest")
    meta = doc.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", "tune")
    doc["spec"].setdefault("scaling", {})
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kvpilot.api.parse import InvalidObjectError, parse_inference_service
    from kvpilot.sim.baselines import ttft_attainment
    from kvpilot.sim.fleet import DEFAULT_COLD_START_S, fleet_setup, simulate
    from kvpilot.sim.oracle import Slo
    from kvpilot.sim.scaler import KvpilotScaler, load_site_policy
    from kvpilot.sim.trace import TraceError, load_trace

    try:
        doc = _load_service_doc(args.service)
        service = parse_inference_service(doc)
        base = load_site_policy(args.policy)
        requests = load_trace(
            args.trace, rate_scale=args.rate_scale, start_s=args.start, duration_s=args.duration
        )
        setup = fleet_setup(service)
    except (OSError, ValueError, InvalidObjectError, TraceError) as exc:
        print(f"kvpilot tune: {exc}", file=sys.stderr)
        return 2
    if not requests:
        print("kvpilot tune: the trace selection holds no request", file=sys.stderr)
        return 2
    if args.budget < 1:
        print("kvpilot tune: --budget must be at least 1", file=sys.stderr)
        return 2
    slo = Slo(ttft_s=args.ttft_slo, attainment=args.target_attainment)
    cold = args.cold_start if args.cold_start is not None else DEFAULT_COLD_START_S
    scaling = doc["spec"]["scaling"]

    def evaluate(knobs: Mapping[str, Any]) -> tuple[float, float]:
        cand = copy.deepcopy(doc)
        cand["spec"]["scaling"] = scaling_block(scaling, resolve(knobs, slo.ttft_s))
        try:
            svc = parse_inference_service(cand)
            scaler = KvpilotScaler(svc, base)
        except (InvalidObjectError, ValueError):
            return math.inf, 0.0  # a combination the CRD or the policy refuses
        res = simulate(requests, service=svc, scaler=scaler, setup=setup, cold_start_s=cold)
        return res.gpu_hours, ttft_attainment(res, slo)

    def progress(ev: Evaluation) -> None:
        knobs = ", ".join(f"{k}={v}" for k, v in ev.knobs if v is not None) or "(current)"
        print(
            f"  {ev.gpu_hours:8.3f} GPU-h  attainment {ev.attainment:.4f}  {knobs}",
            file=sys.stderr,
            flush=True,
        )

    print(
        f"kvpilot tune: {len(requests)} requests, {setup.gpu_type} x{setup.gpus_per_replica}, "
        f"TTFT SLO {slo.ttft_s:g} s, target attainment {slo.attainment:g}, "
        f"budget {args.budget} simulations",
        file=sys.stderr,
    )
    start = current_knobs(scaling, DEFAULT_SPACE)
    result = search(evaluate, start, DEFAULT_SPACE, slo.attainment, budget=args.budget,
                    progress=progress)  # fmt: skip
    best_knobs = resolve(dict(result.best.knobs), slo.ttft_s)
    block = scaling_block(scaling, best_knobs)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "tradeoff.png"
    plotted = plot(result, png, f"{service.name}: {args.trace.name}")
    (args.out / "tune.json").write_text(
        json.dumps(
            {
                "service": service.name,
                "trace": str(args.trace),
                "slo": {"ttft_s": slo.ttft_s, "target_attainment": slo.attainment},
                "feasible": result.feasible,
                "recommended": result.best.as_dict(),
                "spec_scaling": block,
                "evaluations": [e.as_dict() for e in result.evaluations],
                "pareto": [e.as_dict() for e in result.pareto()],
            },
            indent=2,
        )
        + "\n"
    )
    verdict = "meets" if result.feasible else "MISSES (best attainment found)"
    print(
        f"# {result.best.gpu_hours:.3f} GPU-hours, TTFT-SLO attainment "
        f"{result.best.attainment:.4f} ({verdict} the target {slo.attainment:g}); "
        f"{len(result.evaluations)} simulations"
    )
    print(yaml.safe_dump({"spec": {"scaling": block}}, sort_keys=False), end="")
    if args.write_policy is not None:
        site = {k: v for k, v in nested(best_knobs).items()}
        args.write_policy.write_text(
            "# kvpilot site policy (kvpilot run --scaling-defaults), from kvpilot tune\n"
            + yaml.safe_dump(site, sort_keys=False)
        )
        print(f"# site policy written to {args.write_policy}", file=sys.stderr)
    if plotted:
        print(f"# trade-off curve: {png}", file=sys.stderr)
    else:
        print("# matplotlib is not installed: no trade-off plot", file=sys.stderr)
    return 0 if result.feasible else 1
