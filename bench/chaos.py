"""Chaos benchmark: the operator SIGKILLed at random points of many seeded changes on the
dev cluster (e2e/chaos.py), convergence and invariants checked after and during each.

Run: .venv/bin/python bench/chaos.py [--trials N] [--seed S] [--out PATH]
(starts the dev cluster when it is not running, and stops it again afterwards).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e import devcluster  # noqa: E402
from e2e.chaos import run_chaos  # noqa: E402
from e2e.helpers import Kube  # noqa: E402
from e2e.operator import install_crds  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = parser.parse_args(argv)
    layout = devcluster.Layout.default()
    started = not devcluster.is_up(layout)
    if started:
        devcluster.up(layout=layout)
    kube = Kube(layout.kubeconfig, layout.bin)
    namespace = f"chaos-bench-{uuid.uuid4().hex[:5]}"
    try:
        install_crds(kube)
        kube("create", "namespace", namespace)
        result = run_chaos(
            kube, layout.kubeconfig, layout.logs, namespace, trials=args.trials, seed=args.seed
        )
    finally:
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)
        if started:
            devcluster.down(layout)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("figures", "goals", "goals_met")}, indent=2))
    return 0 if result["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
