"""The autoscalers an SRE would pick instead of kvpilot's, as simulator `Scaler`\\ s.

Each baseline reads only what the real one reads (the `FleetView`: per-replica
vLLM gauges through Prometheus, and the Deployment's replica counts) and keeps
its source's defaults; where the source has no default for a knob (a
concurrency target), the docstring says how it is set here. Every one is
clamped to the service's min/max replicas, as its source clamps to its own.

Concurrency targets (HPA, KPA) have no default upstream: a user sets them per
model. Here they are the concurrency one replica holds at its SLO capacity
(measured on the engine model, `kvpilot.sim.oracle.replica_capacity`) times
Knative's default target utilization of 70 % (``container-concurrency-target-percentage``),
which is what an SRE following the Knative/KServe guidance would configure.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyConfig
from kvpilot.autoscaling.source import Sample
from kvpilot.reconcile import policy_config
from kvpilot.sim.fleet import DEFAULT_COLD_START_S, FleetSetup, SimResult, fleet_setup, simulate
from kvpilot.sim.oracle import (
    CapacityProbe,
    OraclePlan,
    Slo,
    arrival_rates,
    plan,
    replica_capacity,
    replicas_needed,
)
from kvpilot.sim.scaler import OPERATOR_INTERVAL_S, FleetView, KvpilotScaler, Scaler
from kvpilot.sim.trace import Request
from kvpilot_runtime.engine import Engine

#: The oracle's bin: three TTFT SLOs of the benchmark (5 s). A request waits at most
#: seconds, so demand cannot be carried across a minute; 60 s bins let the oracle
#: average bursts its own schedule then fails (docs/simulator.md, "The oracle").
ORACLE_BIN_S = 15.0
#: The bin in which the trace's first cold start is sized for every policy's warm fleet.
WARM_START_S = 60.0

#: Knative's default target utilization of the concurrency target.
KNATIVE_TARGET_UTILIZATION = 0.7


def _running(s: Sample) -> float:
    return s.running


def _waiting(s: Sample) -> float:
    return s.waiting


def _active(s: Sample) -> float:
    return s.running + s.waiting


def _kv(s: Sample) -> float:
    return s.kv_cache_utilization


def latest_total(view: FleetView, value: Callable[[Sample], float]) -> float | None:
    """Sum over reporting replicas of their newest value (an instant PromQL query)."""
    vals = [value(s) for s in view.latest()]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) if vals else None


def window_mean_total(
    view: FleetView, value: Callable[[Sample], float], window_s: float
) -> float | None:
    """Mean over the steps of ``[now - window_s, now]`` of the fleet-wide total."""
    pts = [v for t, v in view.totals(value) if t >= view.now - window_s - 1e-9]
    return sum(pts) / len(pts) if pts else None


def window_mean_per_replica(
    view: FleetView, value: Callable[[Sample], float], window_s: float
) -> float | None:
    """Mean over replicas and steps of ``[now - window_s, now]`` (a per-replica average)."""
    vals = [
        value(s)
        for series in view.replicas
        for s in series.samples
        if s.timestamp >= view.now - window_s - 1e-9 and math.isfinite(value(s))
    ]
    return sum(vals) / len(vals) if vals else None


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


class _HpaBehavior:
    """The HPA's stabilization (per-direction window over past recommendations) and rate limits.

    Kubernetes defaults (``autoscaling/v2`` behavior): scale-up window 0 s, at
    most max(100 %, 4 pods) added per 15 s; scale-down window 300 s, up to
    100 % removed per 15 s.
    """

    def __init__(self, up_window_s: float = 0.0, down_window_s: float = 300.0) -> None:
        self.up_window_s = up_window_s
        self.down_window_s = down_window_s
        self.history: deque[tuple[float, int]] = deque()

    def apply(self, now: float, current: int, recommendation: int) -> int:
        self.history.append((now, recommendation))
        keep = max(self.up_window_s, self.down_window_s)
        while self.history and self.history[0][0] < now - keep - 1e-9:
            self.history.popleft()
        up = min(r for t, r in self.history if t >= now - self.up_window_s - 1e-9)
        down = max(r for t, r in self.history if t >= now - self.down_window_s - 1e-9)
        desired = current
        if current < up:
            desired = up
        elif current > down:
            desired = down
        # Rate limits per 15 s period (the decision interval here).
        if desired > current:
            desired = min(desired, max(2 * current, current + 4))
        return desired


@dataclass
class StaticPeak:
    """Static provisioning for the peak: a fixed fleet that serves the trace's busiest minute.

    The replica count is the oracle's peak need (the busiest 60 s bin's arrival
    rate over one replica's SLO capacity): what a clairvoyant capacity planner
    would provision without an autoscaler.
    """

    replicas: int
    interval_s: float = 15.0
    window_s: float = 60.0
    reason: str = "static peak provisioning"

    def decide(self, now: float, view: FleetView) -> int:
        return self.replicas


class HpaConcurrency:
    """Kubernetes HPA target tracking on concurrency (``vllm:num_requests_running`` per pod).

    HPA defaults: sync period 15 s, tolerance 0.1 (``--horizontal-pod-autoscaler-tolerance``),
    scale-down stabilization 300 s, scale-up limit max(100 %, 4 pods) per 15 s. A Pods
    metric reads each pod's current value; desired = ceil(ready x average / target),
    held when the average is within the tolerance of the target.
    """

    def __init__(
        self,
        target_running: float,
        *,
        min_replicas: int = 1,
        max_replicas: int = 1_000,
        tolerance: float = 0.1,
        scale_down_window_s: float = 300.0,
    ) -> None:
        self.target = target_running
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.tolerance = tolerance
        self.interval_s = 15.0
        self.window_s = 60.0
        self.behavior = _HpaBehavior(0.0, scale_down_window_s)
        self.reason = ""

    def decide(self, now: float, view: FleetView) -> int:
        current = view.spec_replicas
        latest = view.latest()
        if not latest:
            self.reason = "no metrics: hold"
            return _clamp(current, self.min_replicas, self.max_replicas)
        avg = sum(s.running for s in latest) / len(latest)
        ratio = avg / self.target
        if abs(ratio - 1.0) <= self.tolerance:
            rec = current
        else:
            rec = math.ceil(ratio * len(latest) - 1e-9)
            # Pods still starting count as 0 on a scale-up (the HPA's missing-pods rule):
            # if that flips the direction, hold.
            missing = max(0, current - len(latest))
            if rec > current and missing:
                ratio_all = avg * len(latest) / (self.target * current)
                if ratio_all <= 1.0 + self.tolerance:
                    rec = current
        desired = self.behavior.apply(now, current, rec)
        self.reason = f"running/pod {avg:.2f} vs target {self.target:.2f}"
        return _clamp(desired, self.min_replicas, self.max_replicas)


class KedaWaiting:
    """KEDA Prometheus scaler on ``vllm:num_requests_waiting``, vLLM production-stack's settings.

    production-stack's ScaledObject (tutorials/autoscaling with KEDA): query
    ``vllm:num_requests_waiting``, threshold 5, pollingInterval 15 s,
    cooldownPeriod 360 s, minReplicaCount 1. KEDA hands the value to an HPA as
    an AverageValue external metric: desired = ceil(sum waiting / 5), held within
    the HPA's 0.1 tolerance, with the HPA's default 300 s scale-down stabilization.
    KEDA's cooldownPeriod only delays the last step to zero replicas, which a
    minimum of 1 never takes; it is applied here as the scale-down window when it
    is the longer of the two (360 s), which favours the baseline with fewer flaps.
    """

    def __init__(
        self,
        *,
        threshold: float = 5.0,
        cooldown_s: float = 360.0,
        min_replicas: int = 1,
        max_replicas: int = 1_000,
        tolerance: float = 0.1,
    ) -> None:
        self.threshold = threshold
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.tolerance = tolerance
        self.interval_s = 15.0
        self.window_s = 60.0
        self.behavior = _HpaBehavior(0.0, max(300.0, cooldown_s))
        self.reason = ""

    def decide(self, now: float, view: FleetView) -> int:
        current = view.spec_replicas
        total = latest_total(view, _waiting)
        if total is None:
            self.reason = "no metrics: hold"
            return _clamp(current, self.min_replicas, self.max_replicas)
        ratio = total / (self.threshold * max(1, current))
        rec = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(total / self.threshold)
        desired = self.behavior.apply(now, current, _clamp(rec, self.min_replicas, 10**6))
        self.reason = f"waiting {total:.0f} vs {self.threshold:g}/replica"
        return _clamp(desired, self.min_replicas, self.max_replicas)


class KubeAiActiveRequests:
    """KubeAI's autoscaler: a moving average of active requests over the model's replicas.

    KubeAI defaults: ``modelAutoscaling.interval`` 10 s, ``timeWindow`` 10 min (the
    average over the last 60 samples), per model ``targetRequests`` 100 and
    ``scaleDownDelaySeconds`` 30. Active requests are those in flight at its
    proxy: running plus waiting here. desired = ceil(average / targetRequests);
    a lower count is applied only after 30 s of lower recommendations.
    """

    def __init__(
        self,
        *,
        target_requests: float = 100.0,
        time_window_s: float = 600.0,
        scale_down_delay_s: float = 30.0,
        min_replicas: int = 1,
        max_replicas: int = 1_000,
    ) -> None:
        self.target = target_requests
        self.time_window_s = time_window_s
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.interval_s = 10.0
        self.window_s = time_window_s
        self.behavior = _HpaBehavior(0.0, scale_down_delay_s)
        self.reason = ""

    def decide(self, now: float, view: FleetView) -> int:
        current = view.spec_replicas
        avg = window_mean_total(view, _active, self.time_window_s)
        if avg is None:
            self.reason = "no metrics: hold"
            return _clamp(current, self.min_replicas, self.max_replicas)
        rec = math.ceil(avg / self.target - 1e-9)
        desired = self.behavior.apply(now, current, rec)
        self.reason = f"active requests (10 min average) {avg:.1f} / {self.target:g}"
        return _clamp(desired, self.min_replicas, self.max_replicas)


class AibrixKpa:
    """AIBrix's KPA (Knative Pod Autoscaler) on concurrency, with stable and panic windows.

    AIBrix KPA defaults: stable window 180 s, panic window 60 s, panic threshold
    2.0 (200 %), tolerance 0.1 (up and down), max scale-up rate 1000x, max
    scale-down rate 2x (at most half the ready pods removed per decision),
    scale-down delay 0, sync every 15 s. Over the panic threshold
    (panic-window desired >= 2 x ready) it enters panic: scales on the panic window
    and never down until a stable window passes without the condition.
    """

    def __init__(
        self,
        target_running: float,
        *,
        stable_window_s: float = 180.0,
        panic_window_s: float = 60.0,
        panic_threshold: float = 2.0,
        tolerance: float = 0.1,
        max_scale_up_rate: float = 1000.0,
        max_scale_down_rate: float = 2.0,
        min_replicas: int = 1,
        max_replicas: int = 1_000,
    ) -> None:
        self.target = target_running
        self.stable_window_s, self.panic_window_s = stable_window_s, panic_window_s
        self.panic_threshold, self.tolerance = panic_threshold, tolerance
        self.max_up, self.max_down = max_scale_up_rate, max_scale_down_rate
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.interval_s = 15.0
        self.window_s = stable_window_s
        self.panic_time: float | None = None
        self.max_panic_pods = 0
        self.reason = ""

    def decide(self, now: float, view: FleetView) -> int:
        current = view.spec_replicas
        ready = max(1, view.ready_replicas)
        stable = window_mean_total(view, _running, self.stable_window_s)
        panic = window_mean_total(view, _running, self.panic_window_s)
        if stable is None or panic is None:
            self.reason = "no metrics: hold"
            return _clamp(current, self.min_replicas, self.max_replicas)
        up_limit = math.ceil(self.max_up * ready)
        down_limit = math.floor(ready / self.max_down)
        desired_stable = _clamp(math.ceil(stable / self.target - 1e-9), down_limit, up_limit)
        desired_panic = _clamp(math.ceil(panic / self.target - 1e-9), down_limit, up_limit)
        over = desired_panic / ready >= self.panic_threshold
        if over:
            # Enter panic, or extend it while the condition holds.
            self.panic_time = now
        elif self.panic_time is not None and now >= self.panic_time + self.stable_window_s:
            self.panic_time = None
            self.max_panic_pods = 0
        if self.panic_time is not None:
            desired = max(desired_panic, self.max_panic_pods, current)
            self.max_panic_pods = desired
            self.reason = f"panic: concurrency {panic:.1f} over {self.panic_window_s:g} s"
        else:
            desired = desired_stable
            if current and abs(stable / (self.target * current) - 1.0) <= self.tolerance:
                desired = current
            self.reason = f"stable: concurrency {stable:.1f} over {self.stable_window_s:g} s"
        return _clamp(desired, self.min_replicas, self.max_replicas)


class DynamoThroughputPlanner:
    """A queue/KV-threshold planner in the style of NVIDIA Dynamo's load-based planner.

    Dynamo's load-based planner (docs "Planner", 0.3): every adjustment interval it
    averages the decode workers' KV-cache utilization and the prefill queue over
    the interval, and changes the workers by one: up when KV > 0.9
    (``decode-kv-scale-up-threshold``) or queue per worker > 5
    (``prefill-queue-scale-up-threshold``), down when KV < 0.5 and queue < 0.2
    (the scale-down thresholds); adjustment interval 10 s; no decision while a
    change is still being carried out. For one aggregated vLLM the prefill queue
    is ``vllm:num_requests_waiting``.
    """

    def __init__(
        self,
        *,
        kv_up: float = 0.9,
        kv_down: float = 0.5,
        queue_up: float = 5.0,
        queue_down: float = 0.2,
        adjustment_interval_s: float = 10.0,
        min_replicas: int = 1,
        max_replicas: int = 1_000,
    ) -> None:
        self.kv_up, self.kv_down = kv_up, kv_down
        self.queue_up, self.queue_down = queue_up, queue_down
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.interval_s = adjustment_interval_s
        self.window_s = max(adjustment_interval_s, 30.0)
        self.reason = ""

    def decide(self, now: float, view: FleetView) -> int:
        current = view.spec_replicas
        if view.starting_replicas or view.ready_replicas < current:
            self.reason = "adjusting: waiting for replicas"
            return _clamp(current, self.min_replicas, self.max_replicas)
        window = max(self.interval_s, view.step_s)
        kv = window_mean_per_replica(view, _kv, window)
        queue = window_mean_per_replica(view, _waiting, window)
        if kv is None or queue is None:
            self.reason = "no metrics: hold"
            return _clamp(current, self.min_replicas, self.max_replicas)
        desired = current
        if kv > self.kv_up or queue > self.queue_up:
            desired = current + 1
        elif kv < self.kv_down and queue < self.queue_down:
            desired = current - 1
        self.reason = f"kv {kv:.2f}, queue/replica {queue:.2f}"
        return _clamp(desired, self.min_replicas, self.max_replicas)


@dataclass
class OracleSchedule:
    """The oracle's own fleet schedule, replayed: how the bound's plan fares in the fleet.

    A replica the plan needs from bin i is created one cold start earlier, so the
    desired count at t is the plan's largest count over ``[t, t + cold_start_s]``.
    Not a policy anyone could run (it knows the future); it checks that the
    oracle's bins are fine enough for its plan to meet the SLO.
    """

    replicas: Sequence[int]
    bin_s: float
    cold_start_s: float
    interval_s: float = 5.0
    window_s: float = 60.0
    reason: str = "the oracle's schedule"

    def decide(self, now: float, view: FleetView) -> int:
        if not self.replicas:
            return view.spec_replicas
        first = max(0, int(now // self.bin_s))
        last = int((now + self.cold_start_s) // self.bin_s)
        window = self.replicas[min(first, len(self.replicas) - 1) : last + 1]
        return max(window) if window else self.replicas[-1]


ORACLE_SCHEDULE = "oracle-schedule"
"""The oracle's plan replayed through the fleet (`OracleSchedule`), after the baselines."""

BASELINE_NAMES: Sequence[str] = (
    "static-peak",
    "hpa-concurrency",
    "keda-waiting",
    "kubeai-active",
    "aibrix-kpa",
    "dynamo-throughput",
)


def baseline_scalers(
    capacity: CapacityProbe, peak_replicas: int, min_replicas: int, max_replicas: int
) -> dict[str, Scaler]:
    """Every baseline for one service, targets set as the module docstring says."""
    target = max(1.0, capacity.concurrency * KNATIVE_TARGET_UTILIZATION)
    bounds = {"min_replicas": min_replicas, "max_replicas": max_replicas}
    return {
        "static-peak": StaticPeak(_clamp(peak_replicas, min_replicas, max_replicas)),
        "hpa-concurrency": HpaConcurrency(target, **bounds),
        "keda-waiting": KedaWaiting(**bounds),
        "kubeai-active": KubeAiActiveRequests(**bounds),
        "aibrix-kpa": AibrixKpa(target, **bounds),
        "dynamo-throughput": DynamoThroughputPlanner(**bounds),
    }


# --------------------------------------------------------------------------- comparison


def ttft_attainment(result: SimResult, slo: Slo) -> float:
    """Fraction of requests whose first token came within the TTFT SLO (unfinished: missed)."""
    ttft = result.requests.ttft
    if not ttft:
        return 1.0
    return sum(1 for t in ttft if t <= slo.ttft_s) / len(ttft)


def itl_attainment(result: SimResult, slo: Slo) -> float:
    """Fraction of finished requests whose mean inter-token latency is within the ITL SLO."""
    if slo.itl_s is None:
        return 1.0
    r = result.requests
    n = len(r.itl_mean)
    if not n:
        return 1.0
    ok = sum(
        1
        for itl, e2e in zip(r.itl_mean, r.e2e, strict=True)
        if math.isfinite(e2e) and (math.isnan(itl) or itl <= slo.itl_s)
    )
    return ok / n


def _quantile(values: Sequence[float], q: float) -> float:
    vals = sorted(v if math.isfinite(v) else math.inf for v in values)
    if not vals:
        return math.nan
    return vals[min(len(vals) - 1, math.ceil(q * len(vals)) - 1)]


@dataclass(frozen=True)
class ComparisonRow:
    """One policy's outcome on the trace."""

    policy: str
    gpu_hours: float
    ttft_attainment: float
    itl_attainment: float
    scale_events: int
    peak_replicas: int
    p99_ttft_s: float
    vs_oracle: float
    """GPU-hours over the oracle's."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "gpu_hours": round(self.gpu_hours, 4),
            "ttft_attainment": round(self.ttft_attainment, 5),
            "itl_attainment": round(self.itl_attainment, 5),
            "scale_events": self.scale_events,
            "peak_replicas": self.peak_replicas,
            "p99_ttft_s": round(self.p99_ttft_s, 4) if math.isfinite(self.p99_ttft_s) else None,
            "vs_oracle": round(self.vs_oracle, 4),
        }


@dataclass(frozen=True)
class Comparison:
    """kvpilot's policy, every baseline and the oracle on one trace and service."""

    rows: tuple[ComparisonRow, ...]
    oracle: OraclePlan
    oracle_gpu_hours: float
    capacity: CapacityProbe
    slo: Slo
    results: Mapping[str, SimResult] = field(default_factory=dict, repr=False)
    uncapped_peak: int = 0
    """Replicas the busiest oracle bin needs before the cap at maxReplicas."""
    max_replicas: int = 0

    def row(self, policy: str) -> ComparisonRow:
        return next(r for r in self.rows if r.policy == policy)

    def capped_warning(self) -> str | None:
        """Says so when maxReplicas, not the policies, limits the fleet at the peak."""
        if self.uncapped_peak <= self.max_replicas:
            return None
        return (
            f"the trace's peak needs {self.uncapped_peak} replicas to meet the SLO but "
            f"maxReplicas is {self.max_replicas}: every policy, the oracle too, is capped "
            "there; raise spec.scaling.maxReplicas (or --rate-scale down) to compare them"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "slo": {
                "ttft_s": self.slo.ttft_s,
                "itl_s": self.slo.itl_s,
                "attainment": self.slo.attainment,
            },
            "replica_capacity_rps": round(self.capacity.rate_rps, 4),
            "replica_concurrency_at_capacity": round(self.capacity.concurrency, 3),
            "oracle": {
                "gpu_hours": round(self.oracle_gpu_hours, 4),
                "peak_replicas": self.oracle.peak,
                "cold_starts": self.oracle.starts,
                "bin_s": self.oracle.bin_s,
                "uncapped_peak_replicas": self.uncapped_peak,
            },
            "rows": [r.as_dict() for r in self.rows],
        }


def capacity_lengths(
    requests: Sequence[Request], max_model_len: int, *, sample: int = 600, seed: int = 0
) -> list[tuple[int, int]]:
    """A seeded sample of the trace's (prompt, output) lengths, clipped as the fleet clips them."""
    rng = random.Random(seed)
    chosen = list(requests) if len(requests) <= sample else rng.sample(list(requests), sample)
    out = []
    for r in chosen:
        p, o = r.prompt_tokens, r.output_tokens
        if p + o > max_model_len:
            o = min(o, max_model_len // 2)
            p = min(p, max_model_len - o)
        out.append((p, o))
    return out


def measure_capacity(setup: FleetSetup, requests: Sequence[Request], slo: Slo) -> CapacityProbe:
    """One replica's SLO capacity for this trace's mix (see `oracle.replica_capacity`)."""
    eng = setup.engine

    def make() -> Engine:
        return Engine(eng.config, eng.profile, eng.shape)

    best, _ = replica_capacity(
        make,
        capacity_lengths(requests, eng.config.max_model_len),
        slo,
        iterations=9,
        frontend_latency_s=setup.frontend_latency_s,
    )
    return best


def _progress_for(progress: Callable[[str, float], None], name: str) -> Callable[[float], None]:
    return lambda fraction: progress(name, fraction)


def run_comparison(
    requests: Sequence[Request],
    *,
    service: InferenceService,
    slo: Slo,
    base: PolicyConfig = DEFAULT_POLICY,
    setup: FleetSetup | None = None,
    cold_start_s: float = DEFAULT_COLD_START_S,
    oracle_bin_s: float = ORACLE_BIN_S,
    capacity: CapacityProbe | None = None,
    initial_replicas: int | None = None,
    policies: Sequence[str] | None = None,
    progress: Callable[[str, float], None] | None = None,
    kvpilot_interval_s: float = OPERATOR_INTERVAL_S,
    **simulate_kwargs: Any,
) -> Comparison:
    """Simulates kvpilot's policy and every baseline on the trace, and computes the oracle.

    ``policies`` limits the run to some of ``("kvpilot", *BASELINE_NAMES,
    ORACLE_SCHEDULE)``; ``progress(policy, fraction)`` is called while each runs.
    ``kvpilot_interval_s`` is the operator's decision interval; the baselines keep
    their sources' own.
    Every policy starts from the same warm fleet, ``initial_replicas`` (default:
    what the busiest minute within the first cold start needs, so no policy starts
    overloaded), with
    the same cold start, scrape and query delays. The oracle's need is capped at
    maxReplicas, like every policy.
    """
    setup = setup or fleet_setup(service)
    cap = capacity or measure_capacity(setup, requests, slo)
    config = policy_config(service, base)
    duration = max(requests[-1].arrival_s if requests else 0.0, oracle_bin_s)
    rates = arrival_rates([r.arrival_s for r in requests], oracle_bin_s, duration)
    uncapped = replicas_needed(rates, cap.rate_rps, config.min_replicas)
    needed = [min(n, config.max_replicas) for n in uncapped]
    if initial_replicas is None:
        # No policy can add a Ready replica before one cold start has passed: the warm
        # fleet serves the busiest minute of that span (60 s bins, whatever the
        # oracle's bin), so no policy starts overloaded.
        span = max(cold_start_s, WARM_START_S)
        early = arrival_rates(
            [r.arrival_s for r in requests if r.arrival_s < span], WARM_START_S, span
        )
        start = min(
            max(replicas_needed(early, cap.rate_rps, config.min_replicas)), config.max_replicas
        )
    else:
        start = initial_replicas
    plan_ = plan(needed, oracle_bin_s, cold_start_s, initial_replicas=start)
    oracle_gpu_hours = plan_.gpu_seconds * setup.gpus_per_replica / 3600.0
    scalers: dict[str, Scaler] = {
        "kvpilot": KvpilotScaler(service, base, interval_s=kvpilot_interval_s)
    }
    scalers.update(baseline_scalers(cap, plan_.peak, config.min_replicas, config.max_replicas))
    scalers[ORACLE_SCHEDULE] = OracleSchedule(plan_.replicas, oracle_bin_s, cold_start_s)
    names = list(policies) if policies is not None else list(scalers)
    rows: list[ComparisonRow] = []
    results: dict[str, SimResult] = {}
    for name in names:
        report = None if progress is None else _progress_for(progress, name)
        res = simulate(
            requests,
            service=service,
            scaler=scalers[name],
            setup=setup,
            cold_start_s=cold_start_s,
            initial_replicas=start,
            progress=report,
            **simulate_kwargs,
        )
        results[name] = res
        rows.append(
            ComparisonRow(
                policy=name,
                gpu_hours=res.gpu_hours,
                ttft_attainment=ttft_attainment(res, slo),
                itl_attainment=itl_attainment(res, slo),
                scale_events=len(res.scale_events),
                peak_replicas=res.peak_replicas,
                p99_ttft_s=_quantile(res.requests.ttft, 0.99),
                vs_oracle=res.gpu_hours / oracle_gpu_hours if oracle_gpu_hours else math.inf,
            )
        )
    return Comparison(
        rows=tuple(rows),
        oracle=plan_,
        oracle_gpu_hours=oracle_gpu_hours,
        uncapped_peak=max(uncapped, default=0),
        max_replicas=config.max_replicas,
        capacity=cap,
        slo=slo,
        results=results,
    )


def format_comparison(comparison: Comparison) -> str:
    """A plain-text table: one line per policy, then the oracle."""
    slo = comparison.slo
    head = (
        f"{'policy':<18} {'GPU-hours':>9} {'TTFT<=' + format(slo.ttft_s, 'g') + 's':>10} "
        f"{'scale events':>12} {'peak':>5} {'vs oracle':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in comparison.rows:
        lines.append(
            f"{r.policy:<18} {r.gpu_hours:>9.3f} {r.ttft_attainment:>10.2%} "
            f"{r.scale_events:>12d} {r.peak_replicas:>5d} {r.vs_oracle:>8.2f}x"
        )
    o = comparison.oracle
    lines.append(
        f"{'oracle':<18} {comparison.oracle_gpu_hours:>9.3f} {'(bound)':>10} "
        f"{o.starts:>12d} {o.peak:>5d} {1.0:>8.2f}x"
    )
    return "\n".join(lines)
