"""Fidelity of kvpilot-sim against real vLLM-CPU under the same open-loop loads.

Both serve the tiny test model with ``--max-num-seqs 4`` and a 16-block KV
cache (see :mod:`kvpilot_runtime.vllm_cpu`). The procedure:

1. calibrate: before each load, the CPU profile's step-time model is refitted
   on the running vLLM with the micro-measurements of
   :mod:`kvpilot_runtime.calibrate` (single-request prefills, synchronized
   decode batches of 1-4), scraping /metrics as often as the validation
   does (on two cores that costs the server time). The test machines are shared, so the committed
   ``cpu`` profile is only the reference; the refit absorbs how fast the
   machine is right now;
2. validate: the same Poisson arrivals at three rates (light, moderate, and
   past saturation) go to real vLLM and to the simulator in turn, and median
   TTFT, median inter-token latency (per-request time per output token), mean
   queue depth (``vllm:num_requests_waiting``) and mean KV-cache usage
   (``vllm:kv_cache_usage_perc``, both sampled from ``/metrics`` at 20 Hz
   while requests are in flight) are compared.

Relative error is |sim - real| / max(|real|, floor): the floor keeps
near-zero quantities from turning noise into large ratios: 1 request for
queue depth (a queue under one request is no queue), 0.05 for KV usage,
1 ms for latencies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import statistics
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kvpilot_runtime.calibrate import fit, measure
from kvpilot_runtime.latency import PROFILE_DIR, Batch, PrefillChunk, load_profile, step_time
from kvpilot_runtime.models import shape_from_config
from kvpilot_runtime.probe import RequestPlan, poisson_plan, run_load
from kvpilot_runtime.vllm_cpu import SERVED_NAME, Server, run_sim

# Capacity is about 12.5 requests/s. Past saturation, TTFT amplifies a throughput
# error e by about rate / (rate - capacity); at 2.4x capacity that is 1.7e.
RATES: tuple[tuple[str, float], ...] = (("light", 4.0), ("moderate", 8.0), ("overload", 30.0))
PROMPT_LEN = (64, 192)
MAX_TOKENS = 32
VOCAB = 400
FLOORS = {
    "median_ttft_s": 0.001,
    "median_itl_s": 0.001,
    "mean_queue_depth": 1.0,
    "mean_kv_usage": 0.05,
}
UNITS = {
    "median_ttft_s": "s",
    "median_itl_s": "s",
    "mean_queue_depth": "requests",
    "mean_kv_usage": "fraction",
}
TARGET = 0.20


def rel_error(sim: float, real: float, floor: float) -> float:
    return abs(sim - real) / max(abs(real), floor)


def calibrate_profile(url: str, model_dir: Path, out: Path) -> dict[str, Any]:
    """Refits the CPU profile on the server at ``url``; writes it to ``out`` (YAML)."""
    shape = shape_from_config(json.loads((model_dir / "config.json").read_text()))
    base = load_profile("cpu")
    data = asyncio.run(measure(url, SERVED_NAME, repeats=2, quick=True))
    prof, frontend, rms = fit(base, shape, data)
    doc = yaml.safe_load((PROFILE_DIR / "cpu.yaml").read_text())
    doc["effective"] = {
        k: v for k, v in dataclasses.asdict(prof.effective).items() if v is not None
    }
    doc["frontend_latency_s"] = frontend
    doc.pop("calibration", None)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    reference = base.effective
    return {
        "rms_rel_error": round(rms, 4),
        "frontend_latency_s": round(frontend, 6),
        "effective": {k: float(f"{v:.4g}") for k, v in doc["effective"].items()},
        # How the machine compares with the committed profile right now.
        "step_overhead_vs_reference": round(
            prof.effective.step_overhead_s / reference.step_overhead_s, 3
        ),
        "matmul_rate_vs_reference": round(
            prof.effective.matmul_flops_per_s / reference.matmul_flops_per_s, 3
        ),
    }


def discount_own_latency(url: str, model_dir: Path, profile_path: Path) -> float:
    """Measures the simulator's own serving latency and takes it off the modelled front end.

    The simulator is a Python process too: the client sees its HTTP and event-loop
    time on top of the modelled latency. Timing a few requests on the idle
    simulator against the model's prediction gives that time; the front-end
    latency is reduced by it, so end to end the client sees what was fitted.
    """
    shape = shape_from_config(json.loads((model_dir / "config.json").read_text()))
    profile = load_profile(profile_path)
    frontend = float(profile.extra.get("frontend_latency_s", 0.0))
    plen = 128
    predicted = frontend + step_time(profile, shape, 1, Batch(prefill_chunks=(PrefillChunk(plen),)))
    ttfts: list[float] = []
    for k in range(7):
        rng = random.Random(k)
        plan = RequestPlan(0.0, tuple(rng.randrange(2, VOCAB) for _ in range(plen)), 1)
        result = asyncio.run(run_load(url, SERVED_NAME, [plan]))
        if result.requests[0].ttft is not None:
            ttfts.append(result.requests[0].ttft)
    own = max(0.0, statistics.median(ttfts) - predicted) if ttfts else 0.0
    body = json.dumps({"frontend_latency_s": max(0.0, frontend - own)}).encode()
    req = urllib.request.Request(
        f"{url}/kvpilot/control", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
    return round(own, 6)


def run_rate(url: str, rate: float, duration: float, seed: int) -> dict[str, float]:
    plans = poisson_plan(
        rate, duration, prompt_len=PROMPT_LEN, max_tokens=MAX_TOKENS, vocab=VOCAB, seed=seed
    )
    result = asyncio.run(run_load(url, SERVED_NAME, plans))
    return {k: round(v, 6) for k, v in result.summary().items()}


def compare(
    real: dict[str, dict[str, float]],
    sim: dict[str, dict[str, float]],
    rates: Sequence[tuple[str, float]] = RATES,
) -> dict[str, Any]:
    errors: dict[str, dict[str, float]] = {}
    goals: list[dict[str, Any]] = []
    worst = 0.0
    for name, _ in rates:
        errors[name] = {}
        for metric, floor in FLOORS.items():
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


def run_fidelity(
    vllm: Server,
    model_dir: Path,
    work_dir: Path,
    *,
    duration: float = 20.0,
    seed: int = 7,
    rates: Sequence[tuple[str, float]] = RATES,
    log: Any = print,
) -> dict[str, Any]:
    """For each rate: calibrate on ``vllm``, then run the load on vLLM and on a simulator.

    Calibrating right before each rate keeps the comparison about the model, not
    about how busy the shared machine happened to be a few minutes earlier.
    """
    real: dict[str, dict[str, float]] = {}
    sim: dict[str, dict[str, float]] = {}
    calibrations: dict[str, dict[str, Any]] = {}
    work_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, rate) in enumerate(rates):
        profile_path = work_dir / f"cpu-insitu-{name}.yaml"
        calibrations[name] = calibrate_profile(vllm.url, model_dir, profile_path)
        log(f"calibration {name}: {json.dumps(calibrations[name])}")
        real[name] = run_rate(vllm.url, rate, duration, seed + i)
        log(f"real {name:9s} rate={rate:5.1f}/s {json.dumps(real[name])}")
        sim_args = ["--profile", str(profile_path)]
        with run_sim(model_dir, work_dir / name, extra_args=sim_args) as simulator:
            calibrations[name]["sim_own_latency_s"] = discount_own_latency(
                simulator.url, model_dir, profile_path
            )
            sim[name] = run_rate(simulator.url, rate, duration, seed + i)
        log(f"sim  {name:9s} rate={rate:5.1f}/s {json.dumps(sim[name])}")
    return {
        "setup": {
            "model": "tiny random Llama (runtime/kvpilot_runtime/tiny_model.py)",
            "vllm_args": "--max-model-len 1024 --max-num-seqs 4 --num-gpu-blocks-override 16",
            "rates_per_s": dict(rates),
            "duration_s": duration,
            "prompt_tokens": list(PROMPT_LEN),
            "max_tokens": MAX_TOKENS,
            "error": "|sim-real|/max(|real|, floor)",
            "floors": FLOORS,
            "units": UNITS,
        },
        "calibration": calibrations,
        "real": real,
        "sim": sim,
        **compare(real, sim, rates),
    }
