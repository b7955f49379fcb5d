"""Baseline autoscalers on hand-made fleet views: each follows its source's rules and defaults."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from kvpilot.api.parse import parse_inference_service
from kvpilot.autoscaling.source import MetricsWindow, ReplicaSeries, Sample
from kvpilot.sim.baselines import (
    BASELINE_NAMES,
    ORACLE_SCHEDULE,
    AibrixKpa,
    DynamoThroughputPlanner,
    HpaConcurrency,
    KedaWaiting,
    KubeAiActiveRequests,
    StaticPeak,
    baseline_scalers,
    format_comparison,
    run_comparison,
)
from kvpilot.sim.oracle import CapacityProbe, Slo
from kvpilot.sim.scaler import FleetView, Scaler
from kvpilot.sim.trace import Request

STEP = 15.0


def view(
    now: float,
    spec: int,
    *,
    waiting: float = 0.0,
    running: float = 0.0,
    kv: float = 0.0,
    ready: int | None = None,
    starting: int = 0,
    window: float = 600.0,
    per_step: dict[float, tuple[float, float, float]] | None = None,
) -> FleetView:
    """``ready`` replicas reporting the same per-replica values at every step of the window.

    ``per_step`` overrides the values at given step times (time -> waiting, running, kv).
    """
    ready = spec - starting if ready is None else ready
    times = [now - k * STEP for k in range(int(window // STEP), -1, -1) if now - k * STEP >= 0]
    series = []
    for i in range(ready):
        samples = []
        for t in times:
            w, r, u = (per_step or {}).get(t, (waiting, running, kv))
            samples.append(Sample(t, w, r, u, scraped_at=t))
        series.append(ReplicaSeries(f"pod-{i}", tuple(samples), last_scraped_at=now))
    return FleetView(
        now=now,
        spec_replicas=spec,
        ready_replicas=ready,
        starting_replicas=starting,
        metrics=MetricsWindow(now - window, now, STEP, tuple(series)),
        window_s=window,
        step_s=STEP,
    )


def test_every_baseline_is_a_scaler() -> None:
    cap = CapacityProbe(1.0, 1.0, 1.0, True, concurrency=10.0)
    scalers = baseline_scalers(cap, peak_replicas=5, min_replicas=1, max_replicas=8)
    assert tuple(scalers) == tuple(BASELINE_NAMES)
    for s in scalers.values():
        assert isinstance(s, Scaler)
    # Concurrency targets: 70 % of the concurrency at SLO capacity.
    hpa = scalers["hpa-concurrency"]
    assert isinstance(hpa, HpaConcurrency)
    assert hpa.target == pytest.approx(7.0)


def test_static_peak_holds() -> None:
    s = StaticPeak(6)
    assert [s.decide(t, view(t, 2, running=50)) for t in (0.0, 15.0, 3600.0)] == [6, 6, 6]


@pytest.mark.parametrize(
    ("spec", "running", "expected"),
    [
        (2, 10.0, 4),  # ratio 2 -> ceil(2 x 2)
        (2, 5.4, 2),  # within the 0.1 tolerance: hold
        (4, 12.0, 10),  # ceil(2.4 x 4) = 10, then capped at max(2 x 4, 4 + 4) = 8
    ],
)
def test_hpa_scales_up_on_concurrency(spec: int, running: float, expected: int) -> None:
    hpa = HpaConcurrency(5.0, max_replicas=100)
    got = hpa.decide(100.0, view(100.0, spec, running=running))
    assert got == min(expected, max(2 * spec, spec + 4))


def test_hpa_waits_five_minutes_before_scaling_down() -> None:
    hpa = HpaConcurrency(5.0, max_replicas=100)
    assert hpa.decide(0.0, view(0.0, 4, running=5.0)) == 4
    # Load halves: the recommendation is 2, but 4 was recommended within 300 s.
    for t in (15.0, 150.0, 299.0):
        assert hpa.decide(t, view(t, 4, running=2.5)) == 4
    assert hpa.decide(301.0, view(301.0, 4, running=2.5)) == 2


def test_hpa_counts_starting_pods_as_idle_on_scale_up() -> None:
    hpa = HpaConcurrency(5.0, max_replicas=100)
    # 2 ready pods at 8 ask for ceil(1.6 x 2) = 4, but with the starting pod at 0
    # the ratio is 16 / (5 x 3) = 1.07, within tolerance: hold.
    assert hpa.decide(0.0, view(0.0, 3, running=8.0, starting=1)) == 3


def test_keda_sizes_for_waiting_over_threshold_and_cools_down() -> None:
    keda = KedaWaiting(max_replicas=100)
    # 2 replicas x 11.5 waiting = 23 -> ceil(23 / 5) = 5.
    assert keda.decide(0.0, view(0.0, 2, waiting=11.5)) == 5
    # The queue empties: the recommendation drops to the minimum, but only after 360 s.
    assert keda.decide(15.0, view(15.0, 5, waiting=0.0)) == 5
    assert keda.decide(359.0, view(359.0, 5, waiting=0.0)) == 5
    assert keda.decide(361.0, view(361.0, 5, waiting=0.0)) == 1


def test_kubeai_moving_average_of_active_requests() -> None:
    kubeai = KubeAiActiveRequests(max_replicas=100)
    # 3 replicas with 90 active each over the 10 min window: 270 / 100 -> 3.
    assert kubeai.decide(600.0, view(600.0, 3, running=60.0, waiting=30.0)) == 3
    # A one-step burst is diluted by the 10-minute average (41 steps).
    burst = {900.0: (200.0, 100.0, 0.5)}
    got = kubeai.decide(900.0, view(900.0, 3, running=60.0, waiting=30.0, per_step=burst))
    mean = (40 * 270 + 900) / 41
    assert got == math.ceil(mean / 100)


def test_kubeai_scale_down_delay() -> None:
    kubeai = KubeAiActiveRequests(max_replicas=100)
    assert kubeai.decide(0.0, view(0.0, 3, running=100.0, window=600.0)) == 3
    assert kubeai.decide(10.0, view(10.0, 3, running=10.0, per_step={0.0: (0, 10, 0)})) == 3
    assert kubeai.decide(31.0, view(31.0, 3, running=10.0, per_step={0.0: (0, 10, 0)})) == 1


def test_kpa_panics_on_a_burst_and_does_not_scale_down_in_panic() -> None:
    kpa = AibrixKpa(10.0, max_replicas=100)
    now = 600.0
    # Stable window: mostly 10 per replica; the last 60 s: 30 per replica on 2 replicas.
    burst = {now - k * STEP: (0.0, 30.0, 0.5) for k in range(5)}
    got = kpa.decide(now, view(now, 2, running=10.0, per_step=burst))
    assert got == 6  # panic: ceil(2 x 30 / 10)
    assert kpa.panic_time == now
    # Load falls right after: still in panic, so no scale-down.
    assert kpa.decide(now + 15, view(now + 15, 6, running=1.0)) == 6
    # A stable window (180 s) after the last panic condition, it scales on the stable average.
    later = now + 181.0
    assert kpa.decide(later, view(later, 6, running=1.0)) == 3  # at most halved per decision


def test_kpa_tolerance_holds_near_target() -> None:
    kpa = AibrixKpa(10.0, max_replicas=100)
    assert kpa.decide(300.0, view(300.0, 4, running=10.5)) == 4
    assert kpa.decide(315.0, view(315.0, 4, running=12.0)) == 5


@pytest.mark.parametrize(
    ("kv", "waiting", "starting", "expected"),
    [
        (0.95, 0.0, 0, 4),  # KV above 0.9: one more
        (0.6, 6.0, 0, 4),  # queue above 5 per worker: one more
        (0.3, 0.1, 0, 2),  # both below the scale-down thresholds: one fewer
        (0.3, 1.0, 0, 3),  # queue not low enough: hold
        (0.95, 9.0, 1, 3),  # a change is still being carried out: hold
    ],
)
def test_dynamo_planner_thresholds(kv: float, waiting: float, starting: int, expected: int) -> None:
    planner = DynamoThroughputPlanner(max_replicas=100)
    fleet = view(60.0, 3, kv=kv, waiting=waiting, starting=starting)
    assert planner.decide(60.0, fleet) == expected


def test_bounds_win() -> None:
    hpa = HpaConcurrency(1.0, min_replicas=2, max_replicas=3)
    assert hpa.decide(0.0, view(0.0, 2, running=50.0)) == 3
    dyn = DynamoThroughputPlanner(min_replicas=2, max_replicas=3)
    assert dyn.decide(0.0, view(0.0, 2, kv=0.0)) == 2


SERVICE = """
apiVersion: kvpilot.io/v1alpha1
kind: InferenceService
metadata: {name: qwen, namespace: sim, uid: "0"}
spec:
  model:
    source: hf://Qwen/Qwen2.5-7B-Instruct-AWQ
    quantization: awq
    dtype: float16
    maxModelLen: 8192
    shape: {parametersBillions: 7.62, layers: 28, hiddenSize: 3584, attentionHeads: 28,
            kvHeads: 4, headDim: 128, intermediateSize: 18944, vocabSize: 152064}
  runtime: {maxNumSeqs: 64}
  parallelism: {tensor: 1}
  placement: {gpuTypes: [L4-24GB]}
  scaling: {minReplicas: 1, maxReplicas: 4}
"""


def test_run_comparison_on_a_short_trace(tmp_path: Path) -> None:
    service = parse_inference_service(yaml.safe_load(SERVICE))
    # Two minutes: 0.5 req/s, then 3 req/s (short requests).
    reqs = [Request(i * 2.0, 200, 20) for i in range(30)]
    reqs += [Request(60.0 + i / 3, 200, 20) for i in range(180)]
    cap = CapacityProbe(1.0, 1.0, 1.0, True, concurrency=4.0)
    slo = Slo(ttft_s=2.0, itl_s=0.1)
    seen: set[str] = set()
    cmp_ = run_comparison(
        reqs,
        service=service,
        slo=slo,
        capacity=cap,
        cold_start_s=30.0,
        oracle_bin_s=60.0,
        progress=lambda name, frac: seen.add(name),
    )
    names = [r.policy for r in cmp_.rows]
    assert names == ["kvpilot", *BASELINE_NAMES, ORACLE_SCHEDULE]
    assert seen == set(names)
    # Oracle: bins of 60 s need 1 and 3 replicas (capped by maxReplicas 4).
    assert cmp_.oracle.needed[:2] == (1, 3)
    static = cmp_.row("static-peak")
    assert static.peak_replicas == 3
    for r in cmp_.rows:
        assert 0.0 <= r.ttft_attainment <= 1.0
        assert r.gpu_hours > 0
        assert r.vs_oracle == pytest.approx(r.gpu_hours / cmp_.oracle_gpu_hours)
    table = format_comparison(cmp_)
    assert "oracle" in table
    assert all(n in table for n in names)
    assert cmp_.as_dict()["rows"][0]["policy"] == "kvpilot"
