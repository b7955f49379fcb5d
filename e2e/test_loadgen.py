"""The load generator against pod-runner replicas: the queue and KV usage it causes are
what Prometheus (and so the autoscaler) sees."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import GC_TIMEOUT, Kube, condition_true, wait_for
from e2e.test_podrunner import (
    apply,
    isvc_manifest,
    process_gone,
    prometheus,
    replicas_of,
    target_files,
)
from kvpilot_runtime.loadgen import (
    LoadConfig,
    RequestRecord,
    Summary,
    discover_targets,
    fixed_lengths,
    poisson_arrivals,
    read_records,
    run_load,
)

pytestmark = pytest.mark.usefixtures("operator", "pod_runner")

MAX_NUM_SEQS = 2
# Llama-3.1-8B on an L4 decodes a token in about 70 ms: a 16-token request holds a
# sequence slot for about 1.2 s, so 2 replicas x 2 slots serve about 3.5 requests/s.
# 8 requests/s for 4 s is past saturation: a queue forms on both replicas.
RATE, DURATION, PROMPT, OUTPUT = 8.0, 4.0, 256, 16


def test_load_past_saturation_queues_on_every_replica(
    kube: Kube, served_namespace: str, cluster: Cluster, tmp_path: Path
) -> None:
    ns, name = served_namespace, "loaded"
    apply(kube, ns, isvc_manifest(name, replicas=2, gpu_types=("L4-24GB",),
                                  max_num_seqs=MAX_NUM_SEQS))  # fmt: skip
    replicas = wait_for(
        lambda: replicas_of(cluster, ns, name),
        lambda found: len(found) == 2,
        timeout=90,
        what=f"two replicas for {ns}/{name}",
    )
    assert {r.profile for r in replicas} == {"l4-24gb"}
    pods = sorted(r.pod for r in replicas)
    wait_for(
        lambda: [condition_true(kube.get("pod", pod, ns), "Ready") for pod in pods],
        all,
        timeout=60,
        what=f"pods {pods} Ready",
    )
    selector = f'namespace="{ns}",inference_service="{name}"'
    wait_for(
        lambda: prometheus(cluster, f"vllm:num_requests_waiting{{{selector}}}"),
        lambda result: {s["metric"]["pod"] for s in result} == set(pods),
        timeout=60,
        what="both replicas' series in Prometheus",
    )

    out = tmp_path / "records.jsonl"
    arrivals = poisson_arrivals(RATE, DURATION, fixed_lengths(PROMPT, OUTPUT), seed=7)
    result: dict[str, Any] = {}

    def load() -> None:
        try:
            result["run"] = asyncio.run(
                run_load(
                    arrivals,
                    lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
                    LoadConfig(balance="least-outstanding", drain_timeout=60, seed=7),
                    out=out,
                )
            )
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=load, name="loadgen")
    worker.start()
    try:
        waiting = wait_for(
            lambda: prometheus(
                cluster, f"max_over_time(vllm:num_requests_waiting{{{selector}}}[1m])"
            ),
            lambda res: len(res) == 2 and all(float(s["value"][1]) > 0 for s in res),
            timeout=60,
            what="a queue on both replicas, seen through Prometheus",
        )
        kv = wait_for(
            lambda: prometheus(
                cluster, f"max_over_time(vllm:kv_cache_usage_perc{{{selector}}}[1m])"
            ),
            lambda res: len(res) == 2 and all(float(s["value"][1]) > 0 for s in res),
            timeout=30,
            what="KV-cache usage on both replicas, seen through Prometheus",
        )
    finally:
        worker.join(timeout=120)
    assert "error" not in result, result.get("error")
    records: list[RequestRecord]
    summary: Summary
    records, summary = result["run"]
    print(
        "load:", summary,
        "peak waiting:", {s["metric"]["pod"]: s["value"][1] for s in waiting},
        "peak kv:", {s["metric"]["pod"]: s["value"][1] for s in kv},
    )  # fmt: skip

    assert len(records) == len(arrivals) and summary.errors == 0, summary.error_kinds
    assert all(r.output_tokens == OUTPUT and r.prompt_tokens == PROMPT for r in records)
    assert set(summary.per_replica) == set(pods)
    assert sorted(read_records(out), key=lambda r: r.index) == records
    # Queueing shows at the client too: the slowest first tokens waited longer than a
    # whole request takes to decode.
    assert summary.ttft_p90_s is not None and summary.itl_p50_s is not None
    assert summary.ttft_p90_s > OUTPUT * summary.itl_p50_s

    kube("delete", "inferenceservice", name, "-n", ns, "--wait=false")
    wait_for(
        lambda: (replicas_of(cluster, ns, name), target_files(cluster, ns)),
        lambda state: state == ([], []),
        timeout=GC_TIMEOUT,
        what="both replicas stopped and their targets removed",
    )
    assert all(process_gone(r.pid) for r in replicas)
