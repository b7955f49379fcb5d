"""Compare the H100 profile's step times with published vLLM and NVIDIA NIM figures.

vLLM (Lambda Labs' benchmark, vLLM v0.6.0 with 10-step scheduling on H100 SXM):
the result files keep every request's inter-token gaps. With multi-step
scheduling a gap spans 10 decode steps of the whole running batch, so one
request that runs to the end (the reference) gives the step time over the
whole run while the batch drains; which requests were decoding during each
gap, and at what context, follows from their arrival of the first token and
their output lengths. Gaps that overlap another request's prefill are left out.

NVIDIA NIM: inter-token latency at concurrency 1 (one decoding sequence) from
NIM's published benchmark tables, where the table names the GPU, precision and
tensor-parallel size.

Each figure is predicted with the profile, with the same H100 data fitted to the
plain max(w, m) formula (no overlap exponent, per-layer or per-sequence cost),
and with the specification-based rates that the calibration replaced.

    .venv/bin/python bench/gpu_calibration/compare.py [--profile h100-80gb]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))

from kvpilot_runtime.latency import (  # noqa: E402
    ModelShape,
    Profile,
    decode_batch,
    load_profile,
    step_time,
)
from kvpilot_runtime.models import CATALOG  # noqa: E402

HERE = Path(__file__).resolve().parent
LAMBDA = HERE / "published_lambda_vllm.json"
STEPS_PER_GAP = 10
SHAPES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/llama-3.1-8b-instruct",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/llama-3.1-70b-instruct",
}

# The profile the calibration replaced (published specifications), for reference.
SPEC = {
    "step_overhead_s": 0.0008,
    "weight_bandwidth_bytes_per_s": 2.6e12,
    "kv_bandwidth_bytes_per_s": 2.0e12,
    "matmul_flops_per_s": 6.0e14,
    "attention_flops_per_s": 4.5e14,
    "allreduce_latency_s": 8e-6,
    "allreduce_bandwidth_bytes_per_s": 3.6e11,
}


@dataclass(frozen=True)
class Step:
    run: str
    tp: int
    shape: ModelShape
    contexts: tuple[int, ...]
    measured_s: float


def lambda_steps(path: Path = LAMBDA) -> list[Step]:
    """Decode steps reconstructed from the reference request's 10-step gaps."""
    doc = json.loads(path.read_text())
    steps = []
    for name, run in doc["runs"].items():
        ins, outs, ttfts = run["input_lens"], run["output_lens"], run["ttfts"]
        ref = run["reference_seq"]
        gaps = run["reference_itls"]
        starts = [ttfts[ref]]
        for g in gaps:
            starts.append(starts[-1] + g)
        live = [i for i, o in enumerate(outs) if o > 0]
        for j, gap in enumerate(gaps):
            t0, t1 = starts[j], starts[j + 1]
            if any(t0 < ttfts[i] <= t1 for i in live):
                continue  # a prefill ran inside this gap
            contexts = []
            for i in live:
                if ttfts[i] > t0:
                    continue
                done = sum(1 for k in range(j) if starts[k] >= ttfts[i])
                generated = 1 + STEPS_PER_GAP * done
                if generated < outs[i]:
                    contexts.append(ins[i] + generated + STEPS_PER_GAP // 2)
            if not contexts:
                continue
            steps.append(
                Step(
                    run=name,
                    tp=run["tp"],
                    shape=CATALOG[SHAPES[run["model"]]],
                    contexts=tuple(contexts),
                    measured_s=gap / STEPS_PER_GAP,
                )
            )
    return steps


@dataclass(frozen=True)
class NimPoint:
    label: str
    tp: int
    shape: ModelShape
    context: int
    itl_s: float


def nim_points() -> list[NimPoint]:
    """NIM Llama-3.3-70B-Instruct 1.8.0 on 2 x H100 80G, fp8, TP 2, concurrency 1."""
    fp8_70b = ModelShape(70.6e9, 80, 8192, 64, 8, 128, weight_bytes_per_param=1.0)
    return [
        # 5000 input / 500 output tokens: mean context ~5250
        NimPoint("NIM 1.8.0 Llama-3.3-70B fp8 TP2, 5000 in / 500 out", 2, fp8_70b, 5250, 18.58e-3),
        # 500 input / 2000 output tokens: mean context ~1500
        NimPoint("NIM 1.8.0 Llama-3.3-70B fp8 TP2, 500 in / 2000 out", 2, fp8_70b, 1500, 18.91e-3),
    ]


def spec_profile(profile: Profile) -> Profile:
    """The profile with the specification-based rates and the formula they were made for."""
    eff = dataclasses.replace(
        profile.effective,
        overlap_exponent=None,
        layer_overhead_s=0.0,
        sequence_overhead_s=0.0,
        **SPEC,
    )
    return dataclasses.replace(profile, effective=eff)


def max_formula_profile(profile: Profile) -> Profile:
    """The profile fitted by fit.py to the same H100 data with the plain max(w, m) formula
    and no per-layer or per-sequence cost (the engine's formula before those terms)."""
    sys.path.insert(0, str(HERE))
    import fit

    csv_path = fit.PROFILE_DIR / "data" / fit.MEASURED_CSV
    points = fit.load_points(csv_path)
    return fit.rounded(fit.fit_profile(profile, points, (), fit.load_ceilings(csv_path)))


def rel(pred: float, meas: float) -> float:
    return pred / meas - 1.0


def table(references: Mapping[str, Profile], steps: Sequence[Step]) -> list[str]:
    """Median per run and batch-size bucket: measured, then each profile's prediction."""
    buckets = [(1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 128)]
    head = "".join(f" {name} ms | dev. |" for name in references)
    lines = [
        f"| vLLM run | batch | steps | vLLM ms |{head}",
        "| --- | --- | --- | --- |" + " --- | --- |" * len(references),
    ]
    for run in dict.fromkeys(s.run for s in steps):
        for lo, hi in buckets:
            sel = [s for s in steps if s.run == run and lo <= len(s.contexts) <= hi]
            if not sel:
                continue
            meas = statistics.median(s.measured_s for s in sel)
            batch = f"{lo}" if lo == hi else f"{lo}-{hi}"
            cells = ""
            for prof in references.values():
                pred = statistics.median(
                    step_time(prof, s.shape, s.tp, decode_batch(s.contexts)) for s in sel
                )
                cells += f" {pred * 1e3:.2f} | {rel(pred, meas):+.1%} |"
            lines.append(f"| {run} | {batch} | {len(sel)} | {meas * 1e3:.2f} |{cells}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="h100-80gb")
    args = ap.parse_args(argv)
    profile = load_profile(args.profile)
    references = {
        "calibrated": profile,
        "max(w, m) fit": max_formula_profile(profile),
        "spec": spec_profile(profile),
    }
    steps = lambda_steps()
    print("\n".join(table(references, steps)))
    for name, prof in list(references.items())[:2]:
        for run in dict.fromkeys(s.run for s in steps):
            sel = [s for s in steps if s.run == run]
            errs = [
                rel(step_time(prof, s.shape, s.tp, decode_batch(s.contexts)), s.measured_s)
                for s in sel
            ]
            print(
                f"{name}: {run}: {len(sel)} steps, batch {min(len(s.contexts) for s in sel)}-"
                f"{max(len(s.contexts) for s in sel)}, deviation median "
                f"{statistics.median(errs):+.1%}, range {min(errs):+.1%} to {max(errs):+.1%}"
            )
    eager_ar = profile.with_effective(allreduce_latency_s=44.6e-6)
    tp4 = [s for s in steps if s.tp == 4]
    if tp4:
        errs = [
            rel(step_time(eager_ar, s.shape, s.tp, decode_batch(s.contexts)), s.measured_s)
            for s in tp4
        ]
        print(
            f"TP-4 steps with the eager NCCL latency (44.6 us) instead: "
            f"median {statistics.median(errs):+.1%}"
        )
    print()
    head = "".join(f" {name} ms | dev. |" for name in references)
    print(f"| NIM table row | ITL ms |{head}")
    print("| --- | --- |" + " --- | --- |" * len(references))
    for p in nim_points():
        batch = decode_batch([p.context])
        cells = ""
        for prof in references.values():
            pred = step_time(prof, p.shape, p.tp, batch)
            cells += f" {pred * 1e3:.2f} | {rel(pred, p.itl_s):+.1%} |"
        print(f"| {p.label} | {p.itl_s * 1e3:.2f} |{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
