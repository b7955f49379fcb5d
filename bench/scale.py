"""Scale benchmark: 1,000 InferenceServices on the dev cluster, one operator.

The pool is e2e/clusters/scale.yaml (250 kwok nodes x 8 H100), added to the running dev
cluster (or the cluster is started with it). The operator runs as ``kvpilot run`` with
its defaults. Figures:

- seconds from the last ``kubectl apply`` until every service is Ready with its replica;
- requests per service per minute at steady state, from the API server's own
  ``apiserver_request_total`` for what the operator reads and writes (InferenceServices,
  Deployments, Services, PDBs, Events), writes separately;
- the operator's peak RSS (VmHWM);
- reconcile p50/p99 from its ``kvpilot_reconcile_duration_seconds`` histogram, and the
  pool plan's time from ``kvpilot_pool_plan_duration_seconds`` (mean) and measured
  directly on the same 1,000 services and nodes.

Run: .venv/bin/python bench/scale.py [--services N] [--steady-seconds S] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e import devcluster  # noqa: E402
from e2e.helpers import Kube, wait_for  # noqa: E402
from e2e.operator import OperatorProcess, install_crds  # noqa: E402

INVENTORY = ROOT / "e2e" / "clusters" / "scale.yaml"
NAMESPACE = "scale-bench"
RESOURCES = ("inferenceservices", "deployments", "services", "poddisruptionbudgets", "events")
WRITES = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
_SAMPLE = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def service(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": f"svc-{i:04d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
            "placement": {"gpuTypes": ["H100-80GB"], "priority": i % 3},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    }


def requests(kube: Kube) -> Counter[tuple[str, str]]:
    """apiserver_request_total for the operator's resources, by (resource, verb)."""
    out: Counter[tuple[str, str]] = Counter()
    for line in kube("get", "--raw", "/metrics").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("resource") in RESOURCES:
            out[(labels["resource"], labels.get("verb", ""))] += int(float(m.group(2)))
    return out


def histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(le, cumulative count) buckets, sum and count of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None
            buckets.append((float(le.group(1)), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
    return sorted(buckets), total, count


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """histogram_quantile: linear within the bucket that holds the q-th observation."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return prev_le


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ready_count(kube: Kube) -> int:
    items = kube.json("get", "inferenceservices", "-n", NAMESPACE)["items"]
    n = 0
    for o in items:
        st = o.get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        if (conds.get("Ready") or {}).get("status") == "True" and st.get("readyReplicas") == 1:
            n += 1
    return n


def plan_seconds(kube: Kube) -> float:
    """One pool plan of the live services and nodes, timed in this process."""
    from kvpilot.api.parse import parse_inference_service
    from kvpilot.reconcile import plan_pool

    services = [
        parse_inference_service(o)
        for o in kube.json("get", "inferenceservices", "-n", NAMESPACE)["items"]
    ]
    nodes = kube.json("get", "nodes")["items"]
    pods = kube.json("get", "pods", "-A")["items"]
    started = time.perf_counter()
    plan_pool(services, nodes, pods)
    return time.perf_counter() - started


def _goal(name: str, value: float | None, target: float) -> dict[str, Any]:
    return {"name": name, "value": value, "target": target, "better": "lower"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--steady-seconds", type=float, default=120.0)
    parser.add_argument("--ready-timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args(argv)
    layout = devcluster.Layout.default()
    started = not devcluster.is_up(layout)
    devcluster.up(INVENTORY, layout=layout)  # adds the nodes when the cluster already runs
    kube = Kube(layout.kubeconfig, layout.bin)
    install_crds(kube)
    kube.run("create", "namespace", NAMESPACE, check=False)
    wait_for(
        lambda: kube.get("serviceaccount", "default", NAMESPACE), lambda sa: sa is not None,
        timeout=60, what="default ServiceAccount",
    )  # fmt: skip
    port = free_port()
    log_file = layout.logs / "operator-scale.log"
    log_file.write_text("")
    op = OperatorProcess(
        layout.kubeconfig, log_file, metrics_port=port, repair_interval=30.0,
        autoscale_interval=15.0,
    )  # fmt: skip
    result: dict[str, Any] = {"benchmark": "scale", "services": args.services}
    try:
        op.start()
        assert op.proc is not None
        pid = op.proc.pid
        docs = [service(i) for i in range(args.services)]
        t_first = time.monotonic()
        for chunk in range(0, len(docs), 100):
            kube(
                "apply", "--server-side", "-f", "-",
                input_text="\n---\n".join(yaml.safe_dump(d) for d in docs[chunk : chunk + 100]),
            )  # fmt: skip
        t_last = time.monotonic()
        result["apply_seconds"] = round(t_last - t_first, 1)
        progress: list[tuple[float, int]] = []

        def observe() -> int:
            n = ready_count(kube)
            progress.append((round(time.monotonic() - t_last, 1), n))
            print(f"+{progress[-1][0]:.0f}s ready {n}/{args.services}", flush=True)
            return n

        wait_for(
            observe, lambda n: n >= args.services, timeout=args.ready_timeout,
            what="all services Ready", interval=5.0,
        )  # fmt: skip
        result["all_ready_after_last_apply_s"] = progress[-1][0]
        result["ready_progress"] = progress[:: max(1, len(progress) // 40)] + progress[-1:]

        # Steady state: let repair passes run, then count requests over the window.
        time.sleep(35)
        before = requests(kube)
        t0 = time.monotonic()
        time.sleep(args.steady_seconds)
        diff = requests(kube) - before
        minutes = (time.monotonic() - t0) / 60
        writes = sum(n for (res, verb), n in diff.items() if verb in WRITES)
        total = sum(diff.values())
        result["steady_state"] = {
            "window_s": round(minutes * 60, 1),
            "requests_by_resource_verb": {f"{r} {v}": n for (r, v), n in sorted(diff.items())},
            "requests_per_service_per_minute": round(total / args.services / minutes, 4),
            "writes_per_service_per_minute": round(writes / args.services / minutes, 4),
        }
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        text = metrics.decode()
        buckets, total_s, count = histogram(text, "kvpilot_reconcile_duration_seconds")
        result["reconcile"] = {
            "count": int(count),
            "p50_s": quantile(buckets, 0.5),
            "p99_s": quantile(buckets, 0.99),
            "mean_s": round(total_s / count, 4) if count else None,
        }
        _, plan_sum, plan_count = histogram(text, "kvpilot_pool_plan_duration_seconds")
        result["pool_plan"] = {
            "count": int(plan_count),
            "mean_s": round(plan_sum / plan_count, 3) if plan_count else None,
            "one_plan_measured_s": round(plan_seconds(kube), 3),
        }
        result["operator_peak_rss_mb"] = round(peak_rss_mb(pid), 1)
    finally:
        op.stop()
        kube.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        kube.run("delete", "nodes", "-l", "kvpilot.io/node-pool=scale-h100", "--wait=false",
                 check=False)  # fmt: skip
        if started:
            devcluster.down(layout)
    steady = result.get("steady_state", {})
    goals = [
        _goal("all_ready_after_last_apply_s", result.get("all_ready_after_last_apply_s"), 120),
        _goal("writes_per_service_per_minute", steady.get("writes_per_service_per_minute"), 0),
        _goal("operator_peak_rss_mb", result.get("operator_peak_rss_mb"), 300),
    ]
    result["goals"] = goals
    result["goals_met"] = all(g["value"] is not None and g["value"] <= g["target"] for g in goals)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "ready_progress"}, indent=2))
    return 0 if result["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
