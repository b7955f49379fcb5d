"""Live placement: seeded multi-service scenarios on the dev cluster, every service applied
in a random order, then the plan (status.placement.nodes) compared with where the real
kube-scheduler (the bin-packing profile kvpilot's pods name) bound the pods.

Run: .venv/bin/python bench/placement_live.py [--scenarios N] [--seed S] [--out PATH]
(the dev cluster must be up: `make dev-cluster`). Prints progress lines and a JSON summary;
`make bench-placement` merges its goals into bench/results/placement.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e import devcluster  # noqa: E402
from e2e.helpers import Kube  # noqa: E402
from e2e.operator import OperatorProcess, install_crds  # noqa: E402

#: (source, quantization, TP choices, GPU types) of the services a scenario draws from.
MODELS = (
    ("hf://meta-llama/Llama-3.1-8B-Instruct", "none", (1, 2), ("A100-80GB", "H100-80GB")),
    ("hf://meta-llama/Llama-3.1-70B-Instruct", "none", (4, 8), ("A100-80GB", "H100-80GB")),
    ("hf://meta-llama/Llama-3.1-405B-Instruct-FP8", "fp8", (8,), ("A100-80GB", "H100-80GB")),
    ("hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "awq", (1,), ("A100-80GB", "H100-80GB")),
)


def scenario(rng: random.Random, index: int) -> list[dict[str, Any]]:
    """3-5 services that together fit the two 8-GPU nodes of one GPU type."""
    gpu_type = rng.choice(("A100-80GB", "H100-80GB"))
    budget, out = 16, []
    for i in range(rng.randint(3, 5)):
        source, quant, tps, _ = rng.choice(MODELS)
        tp = rng.choice(tps)
        most = budget // tp
        if most == 0:
            continue
        replicas = rng.randint(1, min(most, 6))
        budget -= replicas * tp
        out.append(
            {
                "apiVersion": "kvpilot.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": f"s{index}-{i}"},
                "spec": {
                    "model": {"source": source, "quantization": quant, "maxModelLen": 4096},
                    "parallelism": {"tensor": tp},
                    "placement": {"gpuTypes": [gpu_type]},
                    "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
                },
            }
        )
    rng.shuffle(out)
    return out


def nodes_of(kube: Kube, ns: str) -> dict[str, dict[str, int]]:
    actual: dict[str, Counter[str]] = {}
    for p in kube.json("get", "pods", "-n", ns)["items"]:
        if p["metadata"].get("deletionTimestamp"):
            continue
        svc = p["metadata"].get("labels", {}).get("kvpilot.io/inference-service")
        actual.setdefault(svc, Counter())[p["spec"].get("nodeName") or "<pending>"] += 1
    return {k: dict(v) for k, v in actual.items()}


def planned(kube: Kube, ns: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for obj in kube.json("get", "inferenceservices", "-n", ns)["items"]:
        nodes = (obj.get("status", {}).get("placement") or {}).get("nodes") or []
        out[obj["metadata"]["name"]] = {n["name"]: n["replicas"] for n in nodes}
    return out


def settle(kube: Kube, ns: str, names: list[str], timeout: float) -> tuple[bool, Any, Any]:
    deadline = time.monotonic() + timeout
    plan: dict[str, dict[str, int]] = {}
    actual: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        plan, actual = planned(kube, ns), nodes_of(kube, ns)
        if all(n in plan and plan[n] and plan[n] == actual.get(n) for n in names):
            return True, plan, actual
        time.sleep(1)
    return False, plan, actual


def merge(path: Path, summary: dict[str, Any]) -> None:
    """Add the live run and its goal to the planner benchmark's results."""
    results = json.loads(path.read_text())
    results["live"] = {k: v for k, v in summary.items() if k != "goals"}
    names = {g["name"] for g in summary["goals"]}
    results["goals"] = [g for g in results.get("goals", []) if g["name"] not in names]
    results["goals"] += summary["goals"]
    path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenarios", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--merge-into",
        type=Path,
        default=None,
        help="a results JSON (bench/results/placement.json) to add the live figures and goal to",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="merge an earlier run's output instead of running the scenarios again",
    )
    args = ap.parse_args()
    if args.from_json is not None:
        summary = json.loads(args.from_json.read_text())
        if args.merge_into is not None:
            merge(args.merge_into, summary)
        return 0
    layout = devcluster.Layout.default()
    if not devcluster.is_up(layout):
        devcluster.up(layout=layout)
    kube = Kube(layout.kubeconfig, layout.bin)
    install_crds(kube)
    op = OperatorProcess(layout.kubeconfig, layout.logs / "placement-live.log", repair_interval=5.0)
    rng = random.Random(args.seed)
    results = []
    op.start()
    try:
        for i in range(args.scenarios):
            ns = f"placement-live-{i}-{uuid.uuid4().hex[:4]}"
            kube("create", "namespace", ns)
            services = scenario(rng, i)
            names = [s["metadata"]["name"] for s in services]
            started = time.monotonic()
            for s in services:  # one by one, in the scenario's random arrival order
                kube("apply", "-n", ns, "-f", "-", input_text=yaml.safe_dump(s))
                time.sleep(rng.uniform(0.0, 3.0))
            ok, plan, actual = settle(kube, ns, names, timeout=120)
            results.append(
                {"scenario": i, "services": len(services), "equal": ok,
                 "seconds": round(time.monotonic() - started, 1),
                 **({} if ok else {"planned": plan, "actual": actual})}
            )  # fmt: skip
            print(
                f"[placement-live] scenario {i + 1}/{args.scenarios}: {len(services)} services, "
                f"planned == actual: {ok}",
                file=sys.stderr,
                flush=True,
            )
            kube("delete", "namespace", ns, "--wait=true", "--timeout=180s")
    finally:
        op.stop()
    equal = sum(r["equal"] for r in results)
    summary = {
        "scenarios": results,
        "equal": equal,
        "total": len(results),
        "goals": [
            {
                "name": "live placement equal to the plan (scenarios)",
                "value": equal / max(1, len(results)),
                "target": 1.0,
                "better": "higher",
                "unit": "fraction",
            }
        ],
    }
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.merge_into is not None:
        merge(args.merge_into, summary)
    print(text)
    return 0 if equal == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
