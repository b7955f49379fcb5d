"""A tiny deterministic fleet for policy tests: fluid queue, cold starts, per-replica samples.

Requests arrive at `rate(t)` per second, each holds one of a replica's
`slots` for `service_seconds`; what does not fit waits. Replicas become Ready
`cold_start_seconds` after they are created, and only Ready replicas serve and
report metrics. Every `step` seconds the fleet is sampled and the policy
decides, exactly as the controller's timer would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kvpilot.autoscaling.policy import (
    Decision,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    Signal,
    decide,
)
from kvpilot.autoscaling.source import MetricsResult, MetricsWindow, ReplicaSeries, Sample

T0 = 1_700_000_000.0
Rate = Callable[[float], float]


def constant(rps: float) -> Rate:
    return lambda t: rps


def step(at: float, before: float, after: float) -> Rate:
    return lambda t: before if t < at else after


def ramp(start: float, end: float, low: float, high: float) -> Rate:
    def rate(t: float) -> float:
        if t <= start:
            return low
        if t >= end:
            return high
        return low + (high - low) * (t - start) / (end - start)

    return rate


def pulse(start: float, end: float, base: float, peak: float) -> Rate:
    return lambda t: peak if start <= t < end else base


@dataclass(frozen=True)
class FleetModel:
    slots: int = 16
    kv_per_sequence: float = 1 / 16
    service_seconds: float = 20.0
    cold_start_seconds: float = 120.0
    step: float = 15.0
    noise: float = 0.0
    """Relative noise on the observed per-replica signals (deterministic, seeded)."""
    rate_noise: float = 0.0
    """Relative noise on the arrivals of every second (deterministic, seeded)."""
    completions: bool = True
    """Report completed requests/s (vllm:request_success_total) with each sample."""
    seed: int = 7


@dataclass(frozen=True)
class Tick:
    t: float
    spec: int
    ready: int
    starting: int
    decision: Decision


@dataclass
class Fleet:
    config: PolicyConfig
    model: FleetModel = FleetModel()
    replicas: int = 1
    state: PolicyState = field(default_factory=PolicyState)
    ready_at: list[float] = field(default_factory=list)
    in_system: float = 0.0
    series: dict[str, list[Sample]] = field(default_factory=dict)
    pod_names: list[str] = field(default_factory=list)
    next_pod: int = 0

    def __post_init__(self) -> None:
        for _ in range(self.replicas):
            self._add_pod(ready_at=-math.inf)
        self._rng = random.Random(self.model.seed)
        self._arrivals_rng = random.Random(self.model.seed + 1)

    def _add_pod(self, ready_at: float) -> None:
        self.ready_at.append(ready_at)
        self.pod_names.append(f"pod-{self.next_pod}")
        self.next_pod += 1

    def _ready(self, t: float) -> list[int]:
        return [i for i, r in enumerate(self.ready_at) if r <= t]

    def set_replicas(self, n: int, t: float) -> None:
        """What the Deployment does: create pods that start cold, delete unready first."""
        while len(self.ready_at) < n:
            self._add_pod(ready_at=t + self.model.cold_start_seconds)
        while len(self.ready_at) > n:
            # The ReplicaSet deletes not-ready pods first, then the newest.
            idx = max(range(len(self.ready_at)), key=lambda i: (self.ready_at[i] > t, i))
            del self.ready_at[idx]
            del self.pod_names[idx]

    def advance(self, t: float, rate: Rate) -> None:
        """Integrate the fluid queue over one step, one second at a time."""
        m = self.model
        for k in range(int(m.step)):
            now = t + k
            capacity = len(self._ready(now)) * m.slots
            running = min(self.in_system, capacity)
            arrivals = rate(now)
            if m.rate_noise:
                arrivals *= 1.0 + self._arrivals_rng.uniform(-m.rate_noise, m.rate_noise)
            self.in_system = max(0.0, self.in_system + arrivals - running / m.service_seconds)
            if self.in_system < 0.01:
                self.in_system = 0.0  # the fluid tail of the last requests: they are done

    def sample(self, t: float) -> None:
        m = self.model
        ready = self._ready(t)
        if not ready:
            return
        capacity = len(ready) * m.slots
        running = min(self.in_system, capacity)
        waiting = self.in_system - running
        for i in ready:
            jitter = 1.0 + (self._rng.uniform(-m.noise, m.noise) if m.noise else 0.0)
            r = running / len(ready) * jitter
            self.series.setdefault(self.pod_names[i], []).append(
                Sample(
                    timestamp=t,
                    waiting=max(0.0, waiting / len(ready) * jitter),
                    running=r,
                    kv_cache_utilization=min(1.0, r * m.kv_per_sequence),
                    completed_per_second=r / m.service_seconds if m.completions else None,
                )
            )

    def window(self, t: float) -> MetricsWindow:
        start = t - self.config.stable_window_seconds
        live = set(self.pod_names)
        return MetricsWindow(
            start=start,
            end=t,
            step=self.model.step,
            replicas=tuple(
                ReplicaSeries(pod=pod, samples=tuple(s for s in samples if s.timestamp >= start))
                for pod, samples in sorted(self.series.items())
                if pod in live
            ),
        )


def run(
    config: PolicyConfig,
    rate: Rate,
    seconds: float,
    *,
    replicas: int = 1,
    model: FleetModel = FleetModel(),
    warm_in_system: float | None = None,
    state_hook: Callable[[float, PolicyState], PolicyState] | None = None,
    policy: Callable[[PolicyConfig, PolicyState, PolicyInput], Decision] = decide,
    metrics_hook: Callable[[float, MetricsWindow], MetricsResult] | None = None,
) -> list[Tick]:
    """Run the closed loop for `seconds` (relative times in the result start at 0).

    `state_hook(t, state)` may replace the state before a decision (operator restarts);
    `metrics_hook(t, window)` what the policy reads (outages, broken exporters).
    """
    fleet = Fleet(config=config, model=model, replicas=replicas)
    if warm_in_system is not None:
        fleet.in_system = warm_in_system
    ticks: list[Tick] = []
    steps = int(seconds // model.step)
    for k in range(steps + 1):
        rel = k * model.step
        t = T0 + rel
        if k:
            fleet.advance(t - model.step, lambda abs_t: rate(abs_t - T0))
        fleet.sample(t)
        spec = len(fleet.ready_at)
        ready = len(fleet._ready(t))
        if state_hook is not None:
            fleet.state = state_hook(rel, fleet.state)
        d = policy(
            config,
            fleet.state,
            PolicyInput(
                now=t,
                metrics=fleet.window(t)
                if metrics_hook is None
                else metrics_hook(rel, fleet.window(t)),
                spec_replicas=spec,
                ready_replicas=ready,
                starting_replicas=spec - ready,
            ),
        )
        ticks.append(Tick(t=rel, spec=spec, ready=ready, starting=spec - ready, decision=d))
        fleet.state = d.state
        fleet.set_replicas(d.desired_replicas, t)
    return ticks


def changes(ticks: list[Tick]) -> list[tuple[float, int, int, str, bool]]:
    """(t, from, to, signal, panic) for every decision that changed replicas."""
    return [
        (
            x.t,
            x.spec,
            x.decision.desired_replicas,
            x.decision.signal.value,
            x.decision.panic,
        )
        for x in ticks
        if x.decision.desired_replicas != x.spec
    ]


def peak(ticks: list[Tick]) -> int:
    return max(x.decision.desired_replicas for x in ticks)


class QueueOnlyHPA:
    """Baseline for comparison: an HPA on the queue alone, as the common KEDA setup.

    KEDA's Prometheus trigger on sum(vllm:num_requests_waiting) with threshold 5
    feeds the HPA an AverageValue target: desired = ceil(total waiting / 5), with
    the HPA's tolerance (0.1) and default behavior (scale-down stabilization 300 s;
    scale up by at most max(4 pods, 100 %) per 15 s).
    """

    def __init__(self, threshold: float = 5.0, minimum: int = 1, maximum: int = 16) -> None:
        self.threshold, self.minimum, self.maximum = threshold, minimum, maximum
        self.recommendations: list[tuple[float, int]] = []

    def __call__(self, config: PolicyConfig, state: PolicyState, inp: PolicyInput) -> Decision:
        window = inp.metrics
        assert isinstance(window, MetricsWindow)
        latest = max(s.timestamp for r in window.replicas for s in r.samples)
        total = sum(s.waiting for r in window.replicas for s in r.samples if s.timestamp == latest)
        current = inp.spec_replicas
        ratio = total / (self.threshold * max(current, 1))
        rec = current if abs(ratio - 1) <= 0.1 else math.ceil(total / self.threshold)
        rec = min(max(rec, self.minimum), self.maximum)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > inp.now - 300]
        self.recommendations.append((inp.now, rec))
        desired = rec
        if rec < current:
            desired = min(current, max(r for _, r in self.recommendations))
        desired = min(desired, max(current + 4, 2 * current))
        base = decide(config, state, inp)
        return replace(
            base, desired_replicas=desired, signal=Signal.QUEUE, constraints=(), panic=False
        )
