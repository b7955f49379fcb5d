"""Fit a GPU latency profile's effective rates to step times measured by ``measure.py``.

The prediction is :func:`kvpilot_runtime.latency.step_terms` itself, so the fitted
numbers mean exactly what the engine simulator will do with them. The measured
Llama-3.1-70B rank ran alone on one GPU, so its points are compared with the
step time less the all-reduce term; the all-reduce coefficients come from a
separate NCCL measurement on two GPUs when one is given.

Least squares on the relative error, in log space for the rates. Besides the
fit of the engine's formula, the report evaluates two candidate refinements of
the formula (a smooth maximum of weight streaming and matrix compute, and a
per-layer latency) so that what the formula misses is stated with numbers.

    .venv/bin/python bench/gpu_calibration/fit.py --csv OUT/measured.csv \\
        --env OUT/env.json --allreduce-csv AR/measured.csv --allreduce-env AR/env.json --write
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "runtime"))

from kvpilot_runtime.latency import (  # noqa: E402
    Batch,
    ModelShape,
    PrefillChunk,
    Profile,
    load_profile,
    step_terms,
)
from kvpilot_runtime.models import CATALOG  # noqa: E402

PROFILE_DIR = ROOT / "runtime" / "kvpilot_runtime" / "profiles"
PROFILE_NAME = "h100-80gb"
MEASURED_CSV = f"{PROFILE_NAME}-measured.csv"
ALLREDUCE_CSV = f"{PROFILE_NAME}-allreduce-tp2-h200.csv"

# measure.py's model names -> (catalog shape, tensor-parallel size)
MODELS: Mapping[str, tuple[str, int]] = {
    "llama-3.1-8b": ("meta-llama/llama-3.1-8b-instruct", 1),
    "llama-3.1-70b-tp4-shard": ("meta-llama/llama-3.1-70b-instruct", 4),
}
FIT_KEYS = (
    "step_overhead_s",
    "weight_bandwidth_bytes_per_s",
    "kv_bandwidth_bytes_per_s",
    "matmul_flops_per_s",
    "attention_flops_per_s",
)


@dataclass(frozen=True)
class Point:
    """One measured step and what the engine model needs to predict it."""

    model: str
    phase: str
    batch: int
    context: int
    prompt_len: int
    measured_s: float
    shape: ModelShape
    tp: int
    work: Batch

    @property
    def label(self) -> str:
        if self.phase == "decode":
            return f"{self.model} decode b={self.batch} ctx={self.context}"
        return f"{self.model} prefill L={self.prompt_len}"


def load_points(path: Path, mode: str = "graph") -> list[Point]:
    """Decode and prefill rows of one step mode (CUDA graphs by default, as vLLM runs)."""
    points = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row["phase"] not in ("decode", "prefill") or row["mode"] != mode:
                continue
            name, tp = MODELS[row["model"]]
            shape = CATALOG[name]
            if int(row["layers_measured"]) != int(row["layers_total"]):
                raise ValueError(f"{row['model']}: partial-layer rows are not supported by the fit")
            if row["phase"] == "decode":
                batch, ctx = int(row["batch"]), int(row["context"])
                work = Batch(decode_contexts=(ctx,) * batch)
                prompt = 0
            else:
                batch, ctx, prompt = 1, 0, int(row["prompt_len"])
                work = Batch(prefill_chunks=(PrefillChunk(prompt),))
            points.append(
                Point(
                    model=row["model"],
                    phase=row["phase"],
                    batch=batch,
                    context=ctx,
                    prompt_len=prompt,
                    measured_s=float(row["median_s"]),
                    shape=shape,
                    tp=tp,
                    work=work,
                )
            )
    return points


def predict(profile: Profile, point: Point) -> float:
    """The engine's step time for the point, less the all-reduce one GPU did not do."""
    terms = step_terms(profile, point.shape, point.tp, point.work)
    return terms.total - terms.allreduce


def relative_errors(profile: Profile, points: Sequence[Point]) -> list[float]:
    return [predict(profile, p) / p.measured_s - 1.0 for p in points]


def _with(base: Profile, x: Sequence[float]) -> Profile:
    # x[0]: overhead in ms (may reach 0); x[1:]: log of the rates
    # an overhead below a nanosecond is the bound, not a measurement: write zero
    overhead = float(x[0]) / 1e3
    values = {FIT_KEYS[0]: overhead if overhead >= 1e-9 else 0.0}
    values.update({k: math.exp(float(v)) for k, v in zip(FIT_KEYS[1:], x[1:], strict=True)})
    return base.with_effective(**values)


# Upper bounds: the H100 SXM datasheet (3.35 TB/s HBM3, 989 TFLOP/s dense bf16).
PEAK_BANDWIDTH = 3.35e12
PEAK_FLOPS = 989e12


def fit_profile(base: Profile, points: Sequence[Point]) -> Profile:
    """Least squares on relative error over the five rates the single-GPU data determine.

    The cost is flat along the trade between matmul and prefill-attention rates, so
    several starting points are tried and the lowest cost wins; rates are bounded
    by the datasheet peaks so the fit cannot buy error with impossible numbers.
    """
    lower = [0.0] + [math.log(1e9)] * 4
    upper = [
        50.0,
        math.log(PEAK_BANDWIDTH),
        math.log(PEAK_BANDWIDTH),
        math.log(PEAK_FLOPS),
        math.log(PEAK_FLOPS),
    ]
    best = None
    for matmul in (4e14, 7e14):
        for attention in (2e14, 5e14, 9e14):
            x0 = [0.5, math.log(2.5e12), math.log(2.5e12), math.log(matmul), math.log(attention)]
            sol = least_squares(
                lambda x: relative_errors(_with(base, x), points),
                x0,
                bounds=(lower, upper),
                x_scale="jac",
            )
            if best is None or sol.cost < best.cost:
                best = sol
    assert best is not None
    return _with(base, list(best.x))


def rounded(profile: Profile) -> Profile:
    """Four significant digits, as the profile file is written."""
    return profile.with_effective(
        **{k: float(f"{getattr(profile.effective, k):.4g}") for k in FIT_KEYS}
    )


def load_ceilings(path: Path) -> dict[str, float]:
    """The copy bandwidth (bytes read + written) and the 8192^3 bf16 matmul rate."""
    out: dict[str, float] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row["phase"] == "copy":
                out["copy_bytes_per_s"] = float(row["weight_bytes_read"]) / float(row["median_s"])
            elif row["phase"] == "matmul":
                out["matmul_flops_per_s"] = float(row["attention_flops"]) / float(row["median_s"])
    return out


@dataclass(frozen=True)
class AllReduceFit:
    tp: int
    latency_s: float
    bandwidth_bytes_per_s: float
    points: int
    median_rel_err: float
    max_rel_err: float


def fit_allreduce(path: Path) -> AllReduceFit:
    """t = latency + 2 (tp-1)/tp * bytes / bw, the engine's all-reduce term, on NCCL timings."""
    rows = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row["phase"] == "allreduce":
                rows.append((int(row["tp"]), float(row["comm_bytes"]), float(row["median_s"])))
    if not rows:
        raise ValueError(f"{path}: no all-reduce rows")
    tps = {r[0] for r in rows}
    if len(tps) != 1:
        raise ValueError(f"{path}: expected one tensor-parallel size, got {sorted(tps)}")
    tp = tps.pop()
    k = 2.0 * (tp - 1) / tp

    def model(x: Sequence[float]) -> list[float]:
        lat, bw = x[0] / 1e6, math.exp(x[1])
        return [(lat + k * b / bw) / t - 1.0 for _, b, t in rows]

    sol = least_squares(model, [10.0, math.log(3e11)], bounds=([0.0, 20.0], [1e4, 30.0]))
    errs = [abs(e) for e in model(list(sol.x))]
    return AllReduceFit(
        tp=tp,
        latency_s=float(sol.x[0]) / 1e6,
        bandwidth_bytes_per_s=math.exp(float(sol.x[1])),
        points=len(rows),
        median_rel_err=statistics.median(errs),
        max_rel_err=max(errs),
    )


# ---------------------------------------------------------------- candidate refinements


def _features(point: Point) -> dict[str, float]:
    from kvpilot_runtime.latency import batch_features

    f = batch_features(point.shape, point.tp, point.work)
    f["layers"] = float(point.shape.layers)
    return f


def alternative_forms(points: Sequence[Point]) -> dict[str, dict[str, Any]]:
    """Fit candidate formulas that latency.py could adopt; report their errors.

    smooth-max: (w^q + m^q)^(1/q) in place of max(w, m), w = weight_bytes / weight_bw,
    m = matmul_flops / matmul_flops_per_s (q -> infinity is today's max).
    per-layer:  + layers * layer_latency_s (fixed cost of each layer's kernels).
    """
    feats = [_features(p) for p in points]
    meas = np.array([p.measured_s for p in points])

    def make(smooth: bool, per_layer: bool) -> Callable[[np.ndarray], np.ndarray]:
        def pred(x: np.ndarray) -> np.ndarray:
            t0 = x[0] / 1e3
            wbw, kbw, mf, af = np.exp(x[1:5])
            q = 1.0 + math.exp(x[5]) if smooth else math.inf
            lat = x[6] / 1e6 if per_layer else 0.0
            out = []
            for f in feats:
                w, m = f["weight_bytes"] / wbw, f["matmul_flops"] / mf
                g = max(w, m) if math.isinf(q) else (w**q + m**q) ** (1.0 / q)
                out.append(
                    t0 + g + f["kv_bytes"] / kbw + f["attention_flops"] / af + f["layers"] * lat
                )
            res: np.ndarray = np.array(out) / meas - 1.0
            return res

        return pred

    x0 = np.array(
        [0.5, math.log(2.5e12), math.log(2.5e12), math.log(6e14), math.log(4e14), 0.0, 20.0]
    )
    lower = [0.0, *([math.log(1e9)] * 4), -5.0, 0.0]
    upper = [50.0, *([math.log(1e16)] * 4), 5.0, 1e4]
    results: dict[str, dict[str, Any]] = {}
    for name, smooth, per_layer in (
        ("max (today)", False, False),
        ("smooth-max", True, False),
        ("per-layer", False, True),
        ("smooth-max + per-layer", True, True),
    ):
        fn = make(smooth, per_layer)
        sol = least_squares(fn, x0, bounds=(lower, upper), x_scale="jac")
        errs = np.abs(fn(sol.x))
        x = sol.x
        params = {
            "step_overhead_s": x[0] / 1e3,
            "weight_bandwidth_bytes_per_s": math.exp(x[1]),
            "kv_bandwidth_bytes_per_s": math.exp(x[2]),
            "matmul_flops_per_s": math.exp(x[3]),
            "attention_flops_per_s": math.exp(x[4]),
        }
        if smooth:
            params["smooth_max_exponent"] = 1.0 + math.exp(x[5])
        if per_layer:
            params["layer_latency_s"] = x[6] / 1e6
        results[name] = {
            "params": params,
            "median_rel_err": float(np.median(errs)),
            "max_rel_err": float(errs.max()),
            "within_10pct": int((errs <= 0.10).sum()),
        }
    return results


# ---------------------------------------------------------------- profile file


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.4f}".rstrip("0")


def _fmt(x: float) -> str:
    if x == 0:
        return "0.0"
    text = f"{x:.3e}"
    mantissa, exp = text.split("e")
    return f"{float(mantissa):g}e{int(exp):+03d}".replace("e+", "e")


def render_profile(
    base: Profile,
    fitted: Profile,
    calibration: Mapping[str, Any],
    notes: Mapping[str, str],
) -> str:
    """The profile YAML, with comments that say where each number comes from."""
    eff = fitted.effective
    lines = [
        "# NVIDIA H100 80GB HBM3 (SXM5), one GPU. The `effective` rates are fitted to",
        "# step times measured on a real H100 (see `calibration` and bench/gpu_calibration/).",
        f"gpu: {base.gpu}",
        "# nvidia-smi total memory of H100 80GB HBM3 is 81559 MiB (the node label value).",
        f"memory_gib: {_num(base.memory_gib)}",
        "effective:",
        f"  # {notes['fit']}",
        f"  step_overhead_s: {_fmt(eff.step_overhead_s)}",
        f"  weight_bandwidth_bytes_per_s: {_fmt(eff.weight_bandwidth_bytes_per_s)}",
        f"  kv_bandwidth_bytes_per_s: {_fmt(eff.kv_bandwidth_bytes_per_s)}",
        f"  matmul_flops_per_s: {_fmt(eff.matmul_flops_per_s)}",
        f"  attention_flops_per_s: {_fmt(eff.attention_flops_per_s)}",
        f"  # {notes['allreduce_latency']}",
        f"  allreduce_latency_s: {_fmt(eff.allreduce_latency_s)}",
        f"  # {notes['allreduce_bandwidth']}",
        f"  allreduce_bandwidth_bytes_per_s: {_fmt(eff.allreduce_bandwidth_bytes_per_s)}",
    ]
    body = "\n".join(lines) + "\n"
    tail = yaml.safe_dump(
        {"sources": list(fitted.sources), "calibration": dict(calibration)},
        sort_keys=False,
        width=1000,
        allow_unicode=True,
    )
    return body + tail


def wrap(text: str, width: int = 96) -> str:
    """One comment line per note; long notes wrap onto '#'-prefixed lines."""
    words, out, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    out.append(line)
    return "\n  # ".join(out)


# ---------------------------------------------------------------- main


def summarize(errs: Sequence[float]) -> tuple[float, float, int]:
    a = [abs(float(e)) for e in errs]
    return statistics.median(a), max(a), sum(1 for e in a if e <= 0.10)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=PROFILE_DIR / "data" / MEASURED_CSV)
    ap.add_argument(
        "--env", type=Path, default=HERE / "runs" / "h100-env.json", help="the run's env.json"
    )
    ap.add_argument("--allreduce-csv", type=Path, default=PROFILE_DIR / "data" / ALLREDUCE_CSV)
    ap.add_argument(
        "--allreduce-env", type=Path, default=HERE / "runs" / "allreduce-h200x2-env.json"
    )
    ap.add_argument("--profile", default=PROFILE_NAME)
    ap.add_argument("--write", action="store_true", help="write the profile YAML and data files")
    ap.add_argument("--json", type=Path, help="write the fit report as JSON here")
    args = ap.parse_args(argv)

    base = load_profile(args.profile)
    points = load_points(args.csv)
    if not points:
        raise SystemExit(f"{args.csv}: no graph-mode decode or prefill rows")
    # rounded as the YAML will hold them, so the recorded errors are those of the file
    fitted = rounded(fit_profile(base, points))
    errs = relative_errors(fitted, points)
    med, worst, within = summarize(errs)

    ceilings = load_ceilings(args.csv)
    ar: AllReduceFit | None = None
    if args.allreduce_csv and args.allreduce_csv.is_file():
        ar = fit_allreduce(args.allreduce_csv)
        fitted = fitted.with_effective(
            allreduce_bandwidth_bytes_per_s=float(f"{ar.bandwidth_bytes_per_s:.4g}")
        )

    print(f"{len(points)} points; engine formula fitted:")
    for k in FIT_KEYS:
        print(f"  {k:34s} {getattr(fitted.effective, k):.4g}")
    print(f"  relative error: median {med:.1%}, max {worst:.1%}, {within}/{len(points)} within 10%")
    print("  points beyond 10%:")
    for p, e in sorted(zip(points, errs, strict=True), key=lambda pe: -abs(pe[1])):
        if abs(e) > 0.10:
            print(f"    {p.label:48s} measured {p.measured_s * 1e3:8.2f} ms  error {e:+.1%}")
    if ar:
        print(
            f"all-reduce tp={ar.tp}: latency {ar.latency_s * 1e6:.1f} us, bus bandwidth "
            f"{ar.bandwidth_bytes_per_s / 1e9:.0f} GB/s ({ar.points} sizes, median error "
            f"{ar.median_rel_err:.1%}, max {ar.max_rel_err:.1%})"
        )
    alt = alternative_forms(points)
    print("candidate formulas (least squares on relative error):")
    for name, r in alt.items():
        print(
            f"  {name:24s} median {r['median_rel_err']:.1%} max {r['max_rel_err']:.1%} "
            f"within 10%: {r['within_10pct']}/{len(points)}"
        )

    env: dict[str, Any] = json.loads(args.env.read_text()) if args.env else {}
    ar_env: dict[str, Any] = (
        json.loads(args.allreduce_env.read_text()) if args.allreduce_env else {}
    )
    report = {
        "points": len(points),
        "effective": {k: getattr(fitted.effective, k) for k in FIT_KEYS},
        "median_rel_err": med,
        "max_rel_err": worst,
        "within_10pct": within,
        "beyond_10pct": [
            {"point": p.label, "measured_s": p.measured_s, "rel_err": e}
            for p, e in zip(points, errs, strict=True)
            if abs(e) > 0.10
        ],
        "allreduce": None if ar is None else ar.__dict__,
        "alternatives": alt,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    if args.write:
        data_dir = PROFILE_DIR / "data"
        data_dir.mkdir(exist_ok=True)
        if args.csv.resolve() != (data_dir / MEASURED_CSV).resolve():
            shutil.copyfile(args.csv, data_dir / MEASURED_CSV)
        if ar and args.allreduce_csv.resolve() != (data_dir / ALLREDUCE_CSV).resolve():
            shutil.copyfile(args.allreduce_csv, data_dir / ALLREDUCE_CSV)
        calibration: dict[str, Any] = {
            "date": str(env.get("date_utc", ""))[:10],
            "device": env.get("gpu_name", ""),
            "driver": env.get("driver", ""),
            "torch": env.get("torch", ""),
            "method": (
                "bench/gpu_calibration/measure.py: Llama-3.1-8B and one TP-4 rank of "
                "Llama-3.1-70B (all 80 layers) in PyTorch with random bf16 weights, a "
                "contiguous KV cache and flash scaled-dot-product attention; each decode "
                "and prefill step captured in a CUDA graph, median of CUDA-event timings. "
                "bench/gpu_calibration/fit.py: least squares on relative error of "
                "kvpilot_runtime.latency.step_terms (less the all-reduce term) over "
                f"{len(points)} points."
            ),
            "csv": f"data/{MEASURED_CSV}",
            "cuda": env.get("cuda", ""),
            "points": len(points),
            "fit_median_rel_err": round(med, 4),
            "fit_max_rel_err": round(worst, 4),
            "fit_within_10pct": within,
            "copy_bytes_per_s": float(f"{ceilings.get('copy_bytes_per_s', math.nan):.3g}"),
            "matmul_8192_bf16_flops_per_s": float(
                f"{ceilings.get('matmul_flops_per_s', math.nan):.3g}"
            ),
        }
        if ar:
            calibration["allreduce_csv"] = f"data/{ALLREDUCE_CSV}"
            calibration["allreduce_device"] = (
                f"{ar_env.get('device_count', 2)} x {ar_env.get('gpu_name', '')}, "
                f"driver {ar_env.get('driver', '')}, torch {ar_env.get('torch', '')}"
            )
            calibration["allreduce_fit"] = {
                "tp": ar.tp,
                "latency_s": float(f"{ar.latency_s:.3g}"),
                "bus_bandwidth_bytes_per_s": float(f"{ar.bandwidth_bytes_per_s:.3g}"),
            }
        notes = {
            "fit": wrap(
                f"Fitted to {len(points)} measured decode and prefill steps (see calibration): "
                f"median relative error {med:.1%}, max {worst:.1%}. The overhead fits to about "
                "zero: per-layer kernel costs scale with the weights of both models and are "
                "folded into the weight bandwidth (a device-to-device copy measured "
                f"{ceilings.get('copy_bytes_per_s', math.nan) / 1e12:.2f} TB/s)."
            ),
            "allreduce_latency": wrap(
                "Kept from the published-spec estimate: vLLM's custom all-reduce runs inside "
                "CUDA graphs; an eager NCCL all-reduce measured "
                + (f"{ar.latency_s * 1e6:.0f} us" if ar else "more")
                + " per call, mostly host launch cost."
            ),
            "allreduce_bandwidth": wrap(
                "NCCL bus bandwidth fitted to a TP-2 all-reduce over NVLink 4 (2 x H200, the "
                "same NVLink generation as H100 SXM)."
                if ar
                else "Published-spec estimate (no multi-GPU measurement)."
            ),
        }
        sources = list(base.sources)
        extra = (
            "Calibration: bench/gpu_calibration (measure.py, fit.py); raw step times in "
            f"profiles/data/{MEASURED_CSV}."
        )
        if extra not in sources:
            sources.append(extra)
        fitted = Profile(
            name=fitted.name,
            gpu=fitted.gpu,
            memory_gib=fitted.memory_gib,
            effective=fitted.effective,
            sources=tuple(sources),
        )
        text = render_profile(base, fitted, calibration, notes)
        out = PROFILE_DIR / f"{args.profile}.yaml"
        out.write_text(text)
        load_profile(out)  # validate what was written
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
