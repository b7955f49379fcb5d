"""What an autoscaler sees in the simulator, and the operator's own policy as a `Scaler`.

A `Scaler` is asked for the desired replica count every ``interval_s`` seconds
of simulated time with a `FleetView`: exactly what an autoscaler could read at
that moment through Prometheus and the Deployment's status. The per-replica
series are the same `kvpilot.autoscaling.source` types the Prometheus adapter
returns (``MetricsWindow`` of ``ReplicaSeries`` of ``Sample``), built from the
simulated scrapes with the scrape interval, the ingestion delay and the range
query's step applied (see `kvpilot.sim.prom`).

`KvpilotScaler` runs the operator's real policy (`kvpilot.autoscaling.policy.decide`)
with its state carried between calls the way the operator carries it (through the
status dict), on the config the operator builds for the service
(`kvpilot.reconcile.policy_config` over the site policy file).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from kvpilot.api.parse import InferenceService
from kvpilot.autoscaling.policy import (
    DEFAULT_POLICY,
    Decision,
    PolicyConfig,
    PolicyInput,
    PolicyState,
    decide,
    load_policy_defaults,
    query_window_seconds,
)
from kvpilot.autoscaling.source import MetricsResult, MetricsWindow, ReplicaSeries, Sample
from kvpilot.reconcile import policy_config

#: The operator's default decision interval (``kvpilot run --autoscale-interval``).
OPERATOR_INTERVAL_S = 15.0
#: The operator's default range-query step (``kvpilot run --metrics-step``).
OPERATOR_METRICS_STEP_S = 15.0


@dataclass(frozen=True)
class FleetView:
    """What an autoscaler can observe at ``now`` (simulated seconds).

    ``metrics`` is what the Prometheus adapter would return for a range query over
    ``[now - window_s, now]`` at ``step_s``: per replica (pod), samples of
    ``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
    ``vllm:kv_cache_usage_perc``, ``rate(vllm:request_success_total[1m])`` and the
    p90 of ``vllm:time_to_first_token_seconds`` over 1 m (NaN when no request got
    its first token then), each sample carrying when its value was scraped.
    Replica counts are those of the Deployment: ``spec_replicas`` is spec.replicas
    (the last desired count), ``ready_replicas`` pods Ready, ``starting_replicas``
    pods that exist but are still loading the model. Draining (terminating) pods
    are in none of them and are no longer scraped.
    """

    now: float
    spec_replicas: int
    ready_replicas: int
    starting_replicas: int
    metrics: MetricsResult
    window_s: float
    step_s: float

    @property
    def replicas(self) -> tuple[ReplicaSeries, ...]:
        """Per-replica series (empty when the metrics are unavailable)."""
        return self.metrics.replicas if isinstance(self.metrics, MetricsWindow) else ()

    def latest(self) -> tuple[Sample, ...]:
        """Each reporting replica's newest sample."""
        return tuple(s.samples[-1] for s in self.replicas if s.samples)

    def totals(self, value: Callable[[Sample], float | None]) -> list[tuple[float, float]]:
        """(time, sum over replicas of ``value``) per step; NaN/None values are skipped."""
        acc: dict[float, float] = {}
        for series in self.replicas:
            for s in series.samples:
                v = value(s)
                if v is not None and math.isfinite(v):
                    acc[s.timestamp] = acc.get(s.timestamp, 0.0) + v
                else:
                    acc.setdefault(s.timestamp, 0.0)
        return sorted(acc.items())


@runtime_checkable
class Scaler(Protocol):
    """An autoscaling policy under simulation.

    ``interval_s``: seconds between decisions. ``window_s``: how much history the
    view carries (the range query's length). ``decide`` returns the desired replica
    count; it may keep state between calls (they come in time order). A scaler may
    also expose ``reason: str`` (why it decided what it did), which the simulator
    records with each scale event.
    """

    interval_s: float
    window_s: float

    def decide(self, now: float, view: FleetView) -> int:
        """Desired replicas at ``now``."""
        ...


def load_site_policy(path: str | Path | None) -> PolicyConfig:
    """The operator-wide policy from a ``--scaling-defaults`` file (built-in without one)."""
    if path is None:
        return DEFAULT_POLICY
    p = Path(path)
    return load_policy_defaults(p.read_text(), source=str(p))


class KvpilotScaler:
    """The operator's autoscaling policy, exactly as `kvpilot run` applies it to a service.

    ``base`` is the operator-wide policy (``load_site_policy``); the service's
    spec.scaling is merged over it by the operator's own ``policy_config``. With
    ``minReplicas == maxReplicas`` the operator does not autoscale: replicas stay
    at spec.replicas, and so they do here.
    """

    def __init__(
        self,
        service: InferenceService,
        base: PolicyConfig = DEFAULT_POLICY,
        *,
        interval_s: float = OPERATOR_INTERVAL_S,
    ) -> None:
        self.service = service
        self.config = policy_config(service, base)
        self.autoscaling = service.spec.scaling.autoscaling
        self.interval_s = interval_s
        self.window_s = query_window_seconds(self.config)
        self.state = PolicyState()
        self.reason = ""
        self.last_decision: Decision | None = None

    def decide(self, now: float, view: FleetView) -> int:
        """One decision of the real policy; its state round-trips as through the status."""
        if not self.autoscaling:
            self.reason = "autoscaling disabled (minReplicas == maxReplicas)"
            return view.spec_replicas
        d = decide(
            self.config,
            self.state,
            PolicyInput(
                now=now,
                metrics=view.metrics,
                spec_replicas=view.spec_replicas,
                ready_replicas=view.ready_replicas,
                starting_replicas=view.starting_replicas,
            ),
        )
        self.state = PolicyState.restore(d.state.to_dict())
        self.last_decision = d
        self.reason = d.reason
        return d.desired_replicas


@dataclass
class FixedScaler:
    """Holds a replica count (static provisioning); a reference for the others."""

    replicas: int
    interval_s: float = OPERATOR_INTERVAL_S
    window_s: float = 60.0
    reason: str = "static"

    def decide(self, now: float, view: FleetView) -> int:
        return self.replicas


def series_values(series: Sequence[Sample], value: Callable[[Sample], float | None]) -> list[float]:
    """The finite values of one replica's series (a helper for scalers)."""
    out = []
    for s in series:
        v = value(s)
        if v is not None and math.isfinite(v):
            out.append(v)
    return out
