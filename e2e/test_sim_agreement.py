"""The policy simulator agrees with the live system on the same trace segment.

Live: a segment of the Azure conversation trace is sent by the load generator to
pod-runner replicas (the engine simulator on the L4 profile), scraped by the dev
cluster's Prometheus and scaled by ``kvpilot run``. Simulated: the same requests go
through ``kvpilot.sim.simulate`` with the operator's policy at the same interval,
step and scrape interval, the operator's decision phase and the cold starts measured
in the live run.

Agreement (stated in docs/simulator.md): the desired-replica trajectories differ by
at most 0.5 replica on average over the run and reach the same peak; TTFT-SLO
attainment differs by at most 10 percentage points (the live run's own spread); p95
TTFT of a replay of the same fleet with the live run's timings (the requests at the times
the load generator sent them; each replica created when the Deployment watch saw it and
serving from its first request) is within 10 %. The policy-driven
simulation's p95 is recorded, not gated: in this overloaded segment p95 moves by seconds
for every second a scale-up or a cold start shifts. The figures go to
``.dev-cluster/logs/sim-agreement.json``.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import math
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.helpers import Kube, service_deployment, wait_for
from e2e.operator import OperatorProcess
from e2e.test_autoscaling import LOAD_DELAY_S, SCALING, Watch
from e2e.test_podrunner import apply, isvc_manifest
from kvpilot.api.parse import parse_inference_service
from kvpilot.sim.fleet import simulate
from kvpilot.sim.report import percentile, summarize
from kvpilot.sim.scaler import KvpilotScaler
from kvpilot.sim.trace import Request, load_trace
from kvpilot_runtime.loadgen import Arrival, LoadConfig, discover_targets, run

pytestmark = pytest.mark.usefixtures("pod_runner")

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "bench" / "traces" / "azure-llm-2023-conv.csv"
#: Trace seconds 600-690, every third request (about 1.8 requests/s), lengths capped to
#: 512 prompt and 48 output tokens: more than one L4 replica with 2 sequence slots serves.
SEGMENT_START_S, SEGMENT_S, KEEP_EVERY = 600.0, 90.0, 3
MAX_PROMPT, MAX_OUTPUT = 512, 48
TTFT_SLO_S = 5.0
#: The operator fixture's settings (e2e/operator.py) and the dev cluster's scrape interval.
INTERVAL_S, METRICS_STEP_S, SCRAPE_S = 2.0, 2.0, 2.0
TAIL_S = 60.0

MEAN_ABS_REPLICAS = 0.5
#: The live system alone varies this much between runs on a shared 2-core machine
#: (0.107, 0.148 and 0.168 in three runs): most requests wait 5-20 s, so a 5 s SLO cuts
#: through the steep part of the TTFT distribution.
ATTAINMENT_POINTS = 0.10
#: p95 TTFT of the same fleet with the live replicas' timings (the goal of issue 15).
P95_REL_ERROR = 0.10


def segment() -> list[Request]:
    reqs = load_trace(TRACE, start_s=SEGMENT_START_S, duration_s=SEGMENT_S)[::KEEP_EVERY]
    return [
        Request(r.arrival_s, min(r.prompt_tokens, MAX_PROMPT), min(r.output_tokens, MAX_OUTPUT))
        for r in reqs
    ]


def manifest(name: str) -> dict[str, Any]:
    obj = isvc_manifest(
        name,
        gpu_types=("L4-24GB",),
        env={"KVPILOT_SIM_LOAD_DELAY": str(LOAD_DELAY_S)},
        max_num_seqs=2,
    )
    obj["spec"]["scaling"] = SCALING
    return obj


class Sampler:
    """spec.replicas and Ready replicas every half second, in a thread."""

    def __init__(self, w: Watch, t0: float) -> None:
        self.w, self.t0 = w, t0
        self.points: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._go, daemon=True)

    def _go(self) -> None:
        while not self.stop.is_set():
            t = time.time() - self.t0
            # A transient kubectl failure loses one sample; the next one counts.
            with contextlib.suppress(Exception):
                self.points.append((t, self.w.spec_replicas(), self.w.ready_replicas()))
            self.stop.wait(0.5)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


class DeploymentWatch:
    """spec.replicas and Ready replicas of the Deployment as each change happens.

    A watch stream, not polling: on a busy machine one kubectl call takes seconds, so
    polled samples miss when a replica was created or turned Ready by that much, and the
    queue a segment builds (its p95 TTFT) moves by seconds for every second of that.
    """

    def __init__(self, kube: Kube, ns: str, name: str, t0: float) -> None:
        self.t0 = t0
        self.points: list[tuple[float, int, int]] = []
        template = '{.spec.replicas} {.status.readyReplicas}{"\\n"}'
        self.proc = subprocess.Popen(
            [str(kube.bin_dir / "kubectl"), f"--kubeconfig={kube.kubeconfig}", "get",
             "deployment", name, "-n", ns, "--watch", "-o", f"jsonpath={template}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            fields = line.split()
            if not fields:
                continue
            spec, ready = int(fields[0]), int(fields[1]) if len(fields) > 1 else 0
            if not self.points or self.points[-1][1:] != (spec, ready):
                self.points.append((time.time() - self.t0, spec, ready))

    def close(self) -> list[tuple[float, int, int]]:
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(10)
        return self.points


@dataclass
class Replay:
    """A scaler that sets the replicas a live run's Deployment had at each moment."""

    points: list[tuple[float, int]]
    interval_s: float = 0.1
    window_s: float = 60.0
    reason: str = "live replay"

    def decide(self, now: float, view: object) -> int:
        return step_value(self.points, now)


def step_value(points: list[tuple[float, int]], t: float) -> int:
    """The value of a step function (time-ordered points) at ``t``."""
    i = bisect.bisect_right([p[0] for p in points], t) - 1
    return points[max(i, 0)][1]


def cold_starts(points: list[tuple[float, int, int]]) -> list[float]:
    """Seconds from each rise of spec.replicas to the Ready count reaching it."""
    out = []
    prev = points[0][1]
    for i, (t, spec, _) in enumerate(points):
        if spec > prev:
            ready_at = next((t2 for t2, _, r in points[i:] if r >= spec), None)
            if ready_at is not None:
                out.append(ready_at - t)
        prev = spec
    return out


def first_use(records: list[Any], t0: float) -> list[float]:
    """When the load generator first sent a request to each replica (seconds from ``t0``).

    A replica serves from the moment the load generator sees it Ready (its discovery
    refresh and /health check come after the Deployment's count), so this, not the
    Deployment's Ready count, is when its capacity arrived for the requests.
    """
    first: dict[str, float] = {}
    for r in records:
        first[r.replica] = min(first.get(r.replica, math.inf), r.start - t0)
    return sorted(first.values())


def decision_phase(points: list[tuple[float, int, int]], interval: float) -> float | None:
    """The operator's decision phase (seconds into each interval), from when spec.replicas moved.

    Each change lands between the sample before it and the sample that shows it; their
    midpoints, taken modulo the interval, are averaged on the circle. None without changes.
    """
    angles = [
        2 * math.pi * ((t0 + t1) / 2 % interval) / interval
        for (t0, s0, _), (t1, s1, _) in itertools.pairwise(points)
        if s1 != s0
    ]
    if not angles:
        return None
    x, y = sum(math.cos(a) for a in angles), sum(math.sin(a) for a in angles)
    return (math.atan2(y, x) / (2 * math.pi) % 1.0) * interval


def live_replay(
    svc: Any,
    records: list[Any],
    timing: list[tuple[float, int, int]],
    t0: float,
    *,
    cold: float,
    end: float,
) -> tuple[Any, list[float], list[float]]:
    """The same fleet with the live run's replicas at the live times.

    What remains to compare is routing, queueing and the engines, which p95 TTFT is gated
    on. The requests go in at the times the load generator sent them (on a busy machine a
    send can lag its schedule, and the live TTFT counts from the send); each new replica
    is created when spec.replicas rose and serves by its first request. Times are in the
    load's own base (its first send, as the trace's arrivals are). Returns the replay, the
    replicas' starts to first request and the sorted send lags.
    """
    origin = min(r.start - r.scheduled for r in records) - t0
    rises = [t1 for (_, s0, _), (t1, s1, _) in itertools.pairwise(timing) if s1 > s0]
    used = first_use(records, t0)[1:]
    # The replay creates a replica at its first decision after the rise (at most one of
    # its intervals later); it must serve by its first live request, not race it.
    lead = Replay.interval_s
    serving_starts = [max(0.0, u - c - lead) for u, c in zip(used, rises, strict=False)]
    sent = sorted(
        (Request(r.start - t0 - origin, r.prompt_tokens, r.max_tokens) for r in records),
        key=lambda q: q.arrival_s,
    )
    send_lag = sorted(r.start - t0 - origin - r.scheduled for r in records)
    replay = simulate(
        sent,
        service=svc,
        scaler=Replay([(t - origin, spec) for t, spec, _ in timing]),
        gpus_per_node=1,
        cold_start_s=cold,
        cold_starts_s=serving_starts,
        scrape_interval_s=SCRAPE_S,
        metrics_step_s=METRICS_STEP_S,
        query_delay_s=0.5,
        drain_timeout_s=2.0,
        sample_interval_s=0.5,
        initial_replicas=1,
        until=end,
    )
    return replay, serving_starts, send_lag


def test_simulator_agrees_with_the_live_system(
    kube: Kube, served_namespace: str, cluster: Cluster, operator: OperatorProcess
) -> None:
    ns, name = served_namespace, "agreement"
    w = Watch(kube, ns, name)
    apply(kube, ns, manifest(name))
    w.until(w.ready_replicas, lambda n: n == 1, 90, "one replica Ready")
    w.until(
        w.scaling_active,
        lambda c: c is not None and c["status"] == "True" and c["reason"] == "ValidMetrics",
        60,
        "ScalingActive=True on valid metrics while idle",
    )
    reqs = segment()
    arrivals = [Arrival(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs]

    t0 = time.time()
    dep = service_deployment(kube, ns, name)
    assert dep is not None, "no Deployment for the service"
    deployment = DeploymentWatch(kube, ns, dep["metadata"]["name"], t0)
    with Sampler(w, t0) as sampler:
        records, summary = run(
            arrivals,
            lambda: discover_targets(cluster.layout.scrape_targets, ns, name),
            LoadConfig(balance="least-outstanding", drain_timeout=180, seed=11),
            out=cluster.layout.logs / "sim-agreement-requests.jsonl",
        )
        w.mark(f"segment sent and drained: {summary.ok} ok, {summary.errors} errors")
        wait_for(w.spec_replicas, lambda n: n == 1, timeout=TAIL_S + 60, what="back to 1")
        end = time.time() - t0
    dep_points = deployment.close()
    assert summary.errors == 0, summary.error_kinds

    live = sampler.points
    # Timings from the watch where it saw the changes (polled samples otherwise).
    timing = dep_points if len(dep_points) > 1 else live
    starts = cold_starts(timing)
    assert starts, f"the live run never scaled up: {timing[-5:]}"
    cold = sum(starts) / len(starts)
    # The live operator's loop runs at its own phase to the load's start; the
    # simulation decides at the same phase, and each new replica takes its live cold start.
    phase = decision_phase(timing, INTERVAL_S)

    svc = parse_inference_service({**manifest(name), "metadata": {
        "name": name, "namespace": ns, "uid": "sim"}})  # fmt: skip
    sim = simulate(
        reqs,
        service=svc,
        scaler=KvpilotScaler(svc, interval_s=INTERVAL_S),
        gpus_per_node=1,  # the dev cluster's L4 nodes have one GPU each
        cold_start_s=cold,
        cold_starts_s=starts,
        decision_phase_s=phase,
        scrape_interval_s=SCRAPE_S,
        metrics_step_s=METRICS_STEP_S,
        query_delay_s=0.5,
        drain_timeout_s=2.0,
        sample_interval_s=0.5,
        initial_replicas=1,
        until=end,
    )
    replay, serving_starts, send_lag = live_replay(svc, records, timing, t0, cold=cold, end=end)
    sim_spec = list(zip(sim.series.t, sim.series.desired, strict=True))
    live_spec = [(t, s) for t, s, _ in live]
    grid = [float(t) for t in range(1, int(end))]
    diffs = [abs(step_value(live_spec, t) - step_value(sim_spec, t)) for t in grid]
    mean_abs = sum(diffs) / len(diffs)

    live_ttft = [r.ttft if r.ok and r.ttft is not None else float("inf") for r in records]
    live_att = sum(1 for t in live_ttft if t <= TTFT_SLO_S) / len(reqs)
    sim_sum = summarize(sim, ttft_slo_s=TTFT_SLO_S)
    sim_att = sim_sum["attainment"]["ttft"]
    live_p95 = percentile([t for t in live_ttft if t != float("inf")], 95)
    sim_p95 = percentile(list(sim.requests.ttft), 95)
    replay_p95 = percentile(list(replay.requests.ttft), 95)

    figures: dict[str, Any] = {
        "t0": t0,
        "end_s": end,
        "segment": {
            "trace": TRACE.name,
            "start_s": SEGMENT_START_S,
            "duration_s": SEGMENT_S,
            "keep_every": KEEP_EVERY,
            "max_prompt_tokens": MAX_PROMPT,
            "max_output_tokens": MAX_OUTPUT,
            "requests": len(reqs),
        },
        "cold_start_s": {
            "live_each": [round(s, 1) for s in starts],
            "simulated": round(cold, 2),
            "to_first_request": [round(s, 2) for s in serving_starts],
        },
        "decision_phase_s": None if phase is None else round(phase, 2),
        "send_lag_s": {
            "p50": round(percentile(send_lag, 50), 3),
            "p95": round(percentile(send_lag, 95), 3),
            "max": round(send_lag[-1], 3),
        },
        "replicas": {
            "mean_abs_difference": round(mean_abs, 3),
            "peak_live": max(s for _, s in live_spec),
            "peak_sim": max(sim.series.desired),
            "live": [[round(t, 1), s] for t, s in live_spec if t <= end][::4],
            "sim": [[round(t, 1), s] for t, s in sim_spec][::4],
        },
        "ttft_slo_s": TTFT_SLO_S,
        "attainment": {"live": round(live_att, 4), "sim": sim_att},
        "ttft_p95_s": {
            "live": round(live_p95, 3),
            "replay": round(replay_p95, 3),
            "sim": round(sim_p95, 3),
        },
        "ttft_p95_rel_error": round(abs(replay_p95 - live_p95) / live_p95, 3),
        "ttft_p95_rel_error_policy_sim": round(abs(sim_p95 - live_p95) / live_p95, 3),
        "deployment_watch": [[round(t, 2), sp, r] for t, sp, r in dep_points],
        "ttft_p50_s": {
            "live": round(percentile([t for t in live_ttft if t != float("inf")], 50), 3),
            "sim": sim_sum["ttft_s"]["p50"],
        },
        "scale_events_sim": [
            (round(e.time, 1), e.from_replicas, e.to_replicas) for e in sim.scale_events
        ],
    }
    out = cluster.layout.logs / "sim-agreement.json"
    Path(out).write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "replicas"}, indent=2))
    print({k: v for k, v in figures["replicas"].items() if k not in ("live", "sim")})

    assert mean_abs <= MEAN_ABS_REPLICAS, figures["replicas"]
    assert figures["replicas"]["peak_live"] == figures["replicas"]["peak_sim"], figures
    assert sim_att is not None and abs(live_att - sim_att) <= ATTAINMENT_POINTS, figures
    # p95 TTFT of the replay (the live replicas' timings): the 10 % goal, gated. The
    # policy-driven simulation's p95 is recorded: it moves by seconds for every second by
    # which a scale-up or a cold start differs from the live run's (see docs/simulator.md).
    assert figures["ttft_p95_rel_error"] <= P95_REL_ERROR, figures["ttft_p95_s"]
