"""The autoscaling policy: per-replica vLLM signals over time -> desired replicas.

Pure: no I/O, no clock of its own (``PolicyInput.now`` is wall-clock epoch
seconds, the same clock as metric timestamps). Everything that must survive
between decisions (and operator restarts) is in `PolicyState`, which
round-trips through a small JSON-able dict kept in the InferenceService status.

How one decision is made (docs/autoscaling.md has the long form):

1. Signals. Over the stable window (180 s) and the panic window (60 s) the
   policy averages, per sample instant, the replicas' waiting requests, running
   requests and KV-cache utilization (and TTFT when a target is set). Each
   signal turns into a recommended replica count:

   * KV cache (sizes both ways): replicas needed = total KV in use / target.
   * Queue (saturation): a queue only forms when replicas are saturated, so it
     can add replicas or veto removing them, never remove them. Above target,
     with completion rates (vllm:request_success_total) it sizes for the
     arrival rate (completions + growth of requests in the system) at the
     per-replica rate seen while saturated, plus draining the excess backlog
     within one stable window; KV may not ask for more than that (a saturated
     KV cache measures backlog being served, not demand). Without rates it
     asks for the replicas at which running + waiting, each replica keeping its
     observed concurrency, leaves ``queueDepthPerReplica`` waiting, unless the
     backlog is already shrinking fast enough to clear within a stable window.
     Within the band it holds; a queue within tolerance of empty has no opinion.
   * TTFT (optional, saturation): above target it asks for proportionally more
     (capped at ``panicThreshold`` per decision); near target it holds.

   The largest recommendation wins. KV within ``tolerance`` of its target
   holds the current replicas.
2. Panic. When the panic-window recommendation is at least ``panicThreshold``
   times the capacity (ready plus counted starting replicas), the policy scales
   up at once (skipping the scale-up stabilization window) and, until a full
   stable window passes without that condition, never scales down.
3. Cold start. Replicas that are not Ready yet count as capacity for
   ``coldStartGraceSeconds`` after the scale-up that asked for them (or after
   they were first seen). While they load, a growing backlog is expected: the
   queue level and TTFT may hold but not add replicas, and the arrival-rate
   queue need leaves out the backlog drain. After the grace, replicas still not
   Ready no longer count, so a stuck start never blocks scaling for good.
4. Stabilization (as the HPA's behavior): scale up to the lowest
   recommendation of the scale-up window, down to the highest of the
   scale-down window (300 s). Scale-down also needs a full scale-down window
   of valid metrics since the last gap (fail-static, manual change, restart
   without state) and every Ready replica reporting.
5. Rate limits: at most ``maxReplicasPerStep`` added (removed) per
   ``periodSeconds``. Then min/max bounds, which win over everything.

Fail-static: metrics unavailable, no replica reporting, all replicas stale
(older than ``maxMetricAgeSeconds``), or any NaN/infinite/negative value (or
a KV utilization above 1) in the window -> hold the current replicas (clamped
to min/max), ``fail_static=True`` with the reason, and forget the
stabilization history so that scale-down again needs a full window of good
data afterwards. The policy never scales down on absent data.

Manual scale (``kubectl scale`` and the autoscaler both write spec.replicas
through the /scale subresource). The state remembers the last value the
autoscaler decided (``last_applied``). When spec.replicas differs from it, a
person or another controller changed it, and the policy:

* adopts that value as the new baseline, clamped to min/max;
* holds it for ``manualOverrideSeconds`` (default 300 s) in both directions,
  so it does not undo the change on its next tick;
* restarts its stabilization history there, so afterwards scale-down still
  needs a full window of lower recommendations, and a manual scale-up starts
  the cold-start grace like an autoscaler scale-up would.

After the hold it autoscales from that baseline. To pin replicas for longer,
change min/max or set the paused signal (``PolicyInput.paused``, mapped by
the controller from an annotation), which holds spec.replicas as-is.
spec.replicas = 0 is held (as the HPA does): with no replica there is nothing
to measure, so leaving zero takes a manual scale (or an activator) to 1 or
more, which the rule above adopts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kvpilot.autoscaling.source import MetricsResult, MetricsUnavailable, ReplicaSeries, Sample

# --------------------------------------------------------------------------- config


class _Knobs(BaseModel):
    """Frozen, validated; accepts snake_case names and the CRD's camelCase spelling."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


class Targets(_Knobs):
    """Per-replica targets. Queue and KV always apply; TTFT only when set."""

    queue_depth_per_replica: float = Field(4.0, gt=0)
    """Waiting requests per replica that is acceptable (vllm:num_requests_waiting)."""
    kv_cache_utilization: float = Field(0.8, gt=0, le=1)
    """Fraction of the KV cache in use to size for (vllm:kv_cache_usage_perc)."""
    time_to_first_token_seconds: float | None = Field(None, gt=0)
    """Optional TTFT target in seconds (the source's TTFT query decides the quantile)."""


class ScaleUpRules(_Knobs):
    """Scale-up behaviour: react at once, but add at most a few replicas per period."""

    stabilization_window_seconds: float = Field(0.0, ge=0)
    max_replicas_per_step: int | None = Field(4, ge=1)
    """None: no limit."""
    period_seconds: float = Field(60.0, gt=0)


class ScaleDownRules(_Knobs):
    """Scale-down behaviour: wait out the window, then remove one replica per period."""

    stabilization_window_seconds: float = Field(300.0, ge=0)
    max_replicas_per_step: int | None = Field(1, ge=1)
    """None: no limit."""
    period_seconds: float = Field(60.0, gt=0)


class ScaleToZero(_Knobs):
    """Off by default: a cold start costs minutes, and waking from zero needs an activator."""

    enabled: bool = False
    idle_seconds: float = Field(600.0, ge=0)
    """No request running or waiting for this long before zero is allowed."""


class PolicyConfig(_Knobs):
    """Every autoscaling knob with its default; the defaults are the operator-wide policy.

    Field names are the snake_case of spec.scaling's keys, so
    ``PolicyConfig.model_validate(cr["spec"]["scaling"])`` (camelCase) and
    ``PolicyConfig.model_validate(model.model_dump())`` (snake_case) both work.
    """

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=0)
    targets: Targets = Targets()
    stable_window_seconds: float = Field(180.0, gt=0)
    panic_window_seconds: float = Field(60.0, gt=0)
    panic_threshold: float = Field(2.0, gt=1)
    tolerance: float = Field(0.1, ge=0, lt=1)
    scale_up: ScaleUpRules = ScaleUpRules()
    scale_down: ScaleDownRules = ScaleDownRules()
    scale_to_zero: ScaleToZero = ScaleToZero()
    max_metric_age_seconds: float = Field(60.0, gt=0)
    """A replica whose newest sample is older than this does not report."""
    cold_start_grace_seconds: float = Field(600.0, ge=0)
    """How long not-Ready replicas count as capacity after the scale-up that made them."""
    manual_override_seconds: float = Field(300.0, ge=0)
    """How long a manual change of spec.replicas is held before autoscaling resumes."""

    def with_overrides(self, overrides: Mapping[str, Any]) -> PolicyConfig:
        """This policy with some knobs replaced, in the CRD's camelCase spelling.

        Nested blocks merge key by key, so ``{"scaleDown": {"maxReplicasPerStep": 2}}``
        keeps the other scale-down knobs of this policy (e.g. the operator-wide
        default) rather than resetting them. Raises pydantic's ValidationError.
        """
        return PolicyConfig.model_validate(_merge(self.model_dump(by_alias=True), overrides))

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) exceeds maxReplicas ({self.max_replicas})"
            )
        if self.panic_window_seconds > self.stable_window_seconds:
            raise ValueError(
                f"panicWindowSeconds ({self.panic_window_seconds:g}) exceeds "
                f"stableWindowSeconds ({self.stable_window_seconds:g})"
            )
        return self


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


DEFAULT_POLICY = PolicyConfig()
"""The operator-wide default policy (every knob at its documented default)."""


class PolicyFileError(ValueError):
    """An operator-wide policy file that cannot be used; the message names the knob."""


def load_policy_defaults(text: str, source: str = "scaling defaults") -> PolicyConfig:
    """The operator-wide policy from YAML in spec.scaling's spelling, over DEFAULT_POLICY.

    Checked at start-up so a typo stops the operator with the knob named, instead of
    every service silently running on the built-in defaults.
    """
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{source}: not YAML: {exc}") from None
    if data is None:
        return DEFAULT_POLICY
    if not isinstance(data, dict):
        raise PolicyFileError(f"{source}: expected a mapping of spec.scaling knobs")
    bounds = sorted({"minReplicas", "maxReplicas"} & set(data))
    if bounds:
        raise PolicyFileError(
            f"{source}: {', '.join(bounds)} belong to each service's spec.scaling, "
            "not to the operator-wide policy"
        )
    wrong = _wrong_types(PolicyConfig, data, "")
    if wrong:
        raise PolicyFileError(f"{source}: {'; '.join(wrong)}")
    try:
        return DEFAULT_POLICY.with_overrides(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(policy)'}: {e['msg']}" for e in exc.errors()
        )
        raise PolicyFileError(f"{source}: {problems}") from None


def _wrong_types(model: type[BaseModel], data: Mapping[str, Any], prefix: str) -> list[str]:
    """Knobs whose YAML value the CRD would refuse but pydantic would coerce: `true` or
    `"300"` for a number, a non-finite number, or anything but true/false for a switch."""
    out: list[str] = []
    fields = {f.alias or n: f.annotation for n, f in model.model_fields.items()}
    for key, value in data.items():
        kind, path = fields.get(key), f"{prefix}{key}"
        if kind is None or value is None:
            continue  # unknown knobs and nulls: the model's own message is clearer
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if isinstance(value, Mapping):
                out += _wrong_types(kind, value, f"{path}.")
        elif kind is bool:
            if not isinstance(value, bool):
                out.append(f"{path}: expected true or false, got {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            out.append(f"{path}: expected a finite number, got {value!r}")
    return out


# --------------------------------------------------------------------------- state


def _opt_time(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _pairs(value: object, key: str) -> tuple[tuple[float, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key}: expected a list, got {value!r}")
    out: list[tuple[float, int]] = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
        ):
            raise ValueError(f"{key}: expected [time, int] pairs, got {item!r}")
        t = _opt_time(item[0], key)
        assert t is not None
        out.append((t, item[1]))
    return tuple(out)


def _t(value: float) -> float:
    return round(value, 3)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between decisions.

    ``history``: (time, recommendation) within the longest stabilization window.
    ``scale_events``: (time, replica delta) of the autoscaler's own changes within
    the longest rate-limit period.
    """

    last_applied: int | None = None
    history: tuple[tuple[float, int], ...] = ()
    history_since: float | None = None
    scale_events: tuple[tuple[float, int], ...] = ()
    cold_start_at: float | None = None
    panic_since: float | None = None
    panic_last_trigger_at: float | None = None
    manual_at: float | None = None
    idle_since: float | None = None

    _VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the status; None fields are left out to keep it small."""
        out: dict[str, Any] = {"version": self._VERSION}
        if self.last_applied is not None:
            out["lastApplied"] = self.last_applied
        if self.history:
            out["history"] = [[_t(t), r] for t, r in self.history]
        if self.scale_events:
            out["scaleEvents"] = [[_t(t), d] for t, d in self.scale_events]
        for key, value in (
            ("historySince", self.history_since),
            ("coldStartAt", self.cold_start_at),
            ("panicSince", self.panic_since),
            ("panicLastTriggerAt", self.panic_last_trigger_at),
            ("manualAt", self.manual_at),
            ("idleSince", self.idle_since),
        ):
            if value is not None:
                out[key] = _t(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyState:
        """Parse `to_dict`'s output; raises ValueError on anything malformed."""
        if data.get("version") != cls._VERSION:
            raise ValueError(f"unsupported autoscaler state version {data.get('version')!r}")
        last = data.get("lastApplied")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise ValueError(f"lastApplied: expected a non-negative int, got {last!r}")
        return cls(
            last_applied=last,
            history=_pairs(data.get("history"), "history"),
            history_since=_opt_time(data.get("historySince"), "historySince"),
            scale_events=_pairs(data.get("scaleEvents"), "scaleEvents"),
            cold_start_at=_opt_time(data.get("coldStartAt"), "coldStartAt"),
            panic_since=_opt_time(data.get("panicSince"), "panicSince"),
            panic_last_trigger_at=_opt_time(data.get("panicLastTriggerAt"), "panicLastTriggerAt"),
            manual_at=_opt_time(data.get("manualAt"), "manualAt"),
            idle_since=_opt_time(data.get("idleSince"), "idleSince"),
        )

    @classmethod
    def restore(cls, data: object) -> PolicyState:
        """Like `from_dict`, but anything unusable gives the empty state instead of raising.

        The empty state is safe: it adopts spec.replicas as the baseline and
        cannot scale down before a full scale-down window of valid metrics.
        """
        if not isinstance(data, Mapping):
            return cls()
        try:
            return cls.from_dict(data)
        except ValueError:
            return cls()

    def pruned(self, config: PolicyConfig, now: float) -> PolicyState:
        """Drop history and events too old to matter (keeps the stored dict small)."""
        keep_history = max(
            config.scale_up.stabilization_window_seconds,
            config.scale_down.stabilization_window_seconds,
        )
        keep_events = max(config.scale_up.period_seconds, config.scale_down.period_seconds)
        return replace(
            self,
            history=tuple((t, r) for t, r in self.history if t >= now - keep_history),
            scale_events=tuple((t, d) for t, d in self.scale_events if t > now - keep_events),
        )


# --------------------------------------------------------------------------- input / output


@dataclass(frozen=True)
class PolicyInput:
    """One decision's observations.

    ``spec_replicas``: spec.replicas now (includes replicas still starting).
    ``ready_replicas``: Ready pods. ``starting_replicas``: pods that exist but are
    not Ready yet (loading the model). Replicas in spec.replicas that are neither
    (not created yet, or Pending) are treated as starting too, so passing only
    spec and ready replicas is enough. ``paused``: hold spec.replicas as-is.
    """

    now: float
    metrics: MetricsResult
    spec_replicas: int
    ready_replicas: int
    starting_replicas: int = 0
    paused: bool = False


class Signal(StrEnum):
    """Which signal the recommendation came from."""

    QUEUE = "queue"
    KV_CACHE = "kvCache"
    TTFT = "ttft"
    NONE = "none"


class Constraint(StrEnum):
    """What made the desired replicas differ from the plain recommendation (or hold them)."""

    STABILIZATION = "stabilization"
    RATE_LIMIT = "rateLimit"
    MIN_REPLICAS = "minReplicas"
    MAX_REPLICAS = "maxReplicas"
    COLD_START = "coldStart"
    PARTIAL_METRICS = "partialMetrics"
    WINDOW_NOT_COVERED = "windowNotCovered"
    MANUAL_OVERRIDE = "manualOverride"
    PAUSED = "paused"
    SCALED_TO_ZERO = "scaledToZero"
    FAIL_STATIC = "failStatic"


@dataclass(frozen=True)
class Observed:
    """Stable-window averages of the signals, for the status block and operator metrics."""

    reporting_replicas: int
    waiting_per_replica: float
    running_per_replica: float
    kv_cache_utilization: float
    ttft_seconds: float | None = None

    def to_status(self) -> dict[str, Any]:
        """camelCase, rounded, for status.autoscaler.observed."""
        out: dict[str, Any] = {
            "reportingReplicas": self.reporting_replicas,
            "waitingPerReplica": round(self.waiting_per_replica, 3),
            "runningPerReplica": round(self.running_per_replica, 3),
            "kvCacheUtilization": round(self.kv_cache_utilization, 4),
        }
        if self.ttft_seconds is not None:
            out["ttftSeconds"] = round(self.ttft_seconds, 4)
        return out


@dataclass(frozen=True)
class Decision:
    """The outcome of one decision; ``state`` is what to persist for the next one."""

    desired_replicas: int
    current_replicas: int
    recommendation: int | None
    signal: Signal
    constraints: tuple[Constraint, ...]
    panic: bool
    fail_static: bool
    reason: str
    condition_reason: str
    observed: Observed | None
    state: PolicyState

    @property
    def direction(self) -> Literal["up", "down", "none"]:
        if self.desired_replicas > self.current_replicas:
            return "up"
        if self.desired_replicas < self.current_replicas:
            return "down"
        return "none"

    @property
    def scaling_active(self) -> bool:
        """For the ScalingActive condition: False when holding for lack of data or by request."""
        inactive = {Constraint.PAUSED, Constraint.SCALED_TO_ZERO}
        return not self.fail_static and not inactive.intersection(self.constraints)


# --------------------------------------------------------------------------- metrics evaluation


@dataclass(frozen=True)
class _Point:
    """Totals over the replicas reporting at one instant."""

    t: float
    n: int
    waiting: float
    running: float
    kv: float
    ttft: float | None
    completed: float | None


@dataclass(frozen=True)
class _Stats:
    waiting_per_replica: float
    running_per_replica: float
    kv_per_replica: float
    kv_need: float
    queue_need: float
    """Level-only queue need (used when completion rates are missing)."""
    ttft: float | None
    arrival_rate: float | None
    """Mean arrivals/s over the window: completions + growth of requests in the system."""
    service_rate: float | None
    """Completions/s per replica at saturation (instants with a queue)."""
    excess_backlog: float
    """Waiting requests beyond the target at the window's last instant."""
    in_system_trend: float
    """Change of requests in the system (running + waiting) per second over the window."""


@dataclass(frozen=True)
class _Failure:
    condition_reason: str
    message: str


@dataclass(frozen=True)
class _Evaluation:
    stable: _Stats
    panic: _Stats
    reporting: int
    partial: bool
    idle: bool


_KV_SLACK = 1e-6
_CLOCK_SLACK = 1.0
"""Samples up to this far after `now` still count (sources round times to seconds)."""


def _invalid(s: Sample) -> str | None:
    for name, value in (
        ("waiting", s.waiting),
        ("running", s.running),
        ("kv cache utilization", s.kv_cache_utilization),
    ):
        if not math.isfinite(value):
            return f"{name} is {value}"
        if value < 0:
            return f"{name} is negative ({value:g})"
    if s.kv_cache_utilization > 1 + _KV_SLACK:
        return f"kv cache utilization {s.kv_cache_utilization:g} is outside [0, 1]"
    return None


def _usable(value: float | None) -> float | None:
    """Optional signals (TTFT, completions) are NaN when nothing finished: treat as absent."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def _aggregate(series: Iterable[ReplicaSeries]) -> list[_Point]:
    acc: dict[float, list[Sample]] = {}
    for s in series:
        for sample in s.samples:
            acc.setdefault(round(sample.timestamp, 3), []).append(sample)
    points = []
    for t in sorted(acc):
        group = acc[t]
        ttfts = [v for v in (_usable(x.ttft_seconds) for x in group) if v is not None]
        done = [_usable(x.completed_per_second) for x in group]
        points.append(
            _Point(
                t=t,
                n=len(group),
                waiting=sum(x.waiting for x in group),
                running=sum(x.running for x in group),
                kv=sum(min(x.kv_cache_utilization, 1.0) for x in group),
                ttft=sum(ttfts) / len(ttfts) if ttfts else None,
                completed=None if None in done else sum(v for v in done if v is not None),
            )
        )
    return points


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _queue_need(p: _Point, target: float) -> float:
    """Replicas at which this instant's demand leaves `target` waiting per replica.

    Each replica keeps running what it runs now (its achieved concurrency); the
    rest of the demand waits. With nothing running this is the plain
    waiting / target.
    """
    r, w = p.running / p.n, p.waiting / p.n
    return p.n * (r + w) / (r + target)


_SATURATED_WAITING = 1.0
"""Waiting requests per replica from which an instant counts as saturated."""


def _trend(points: Sequence[_Point]) -> float:
    first, last = points[0], points[-1]
    if last.t <= first.t:
        return 0.0
    return ((last.waiting + last.running) - (first.waiting + first.running)) / (last.t - first.t)


def _rates(points: Sequence[_Point]) -> tuple[float | None, float | None]:
    """(arrivals/s, completions/s per saturated replica) when completion rates are known.

    Requests are conserved: arrivals over the window = completions + the change
    in requests in the system (running + waiting). Unlike the queue level, this
    does not grow with a backlog that is merely waiting for capacity.
    """
    known = [p for p in points if p.completed is not None]
    if not known:
        return None, None
    completed = _mean([p.completed for p in known if p.completed is not None])
    growth = _trend(points)
    saturated = [
        p.completed / p.n
        for p in known
        if p.completed is not None and p.waiting / p.n >= _SATURATED_WAITING
    ]
    service = _mean(saturated) if saturated else None
    return max(0.0, completed + growth), service if service and service > 0 else None


def _stats(points: Sequence[_Point], targets: Targets) -> _Stats:
    ttfts = [p.ttft for p in points if p.ttft is not None]
    arrivals, service = _rates(points)
    last = points[-1]
    return _Stats(
        waiting_per_replica=_mean([p.waiting / p.n for p in points]),
        running_per_replica=_mean([p.running / p.n for p in points]),
        kv_per_replica=_mean([p.kv / p.n for p in points]),
        kv_need=_mean([p.kv for p in points]) / targets.kv_cache_utilization,
        queue_need=_mean([_queue_need(p, targets.queue_depth_per_replica) for p in points]),
        ttft=_mean(ttfts) if ttfts else None,
        arrival_rate=arrivals,
        service_rate=service,
        excess_backlog=max(0.0, last.waiting - targets.queue_depth_per_replica * last.n),
        in_system_trend=_trend(points),
    )


def _evaluate(config: PolicyConfig, inp: PolicyInput) -> _Failure | _Evaluation:
    metrics = inp.metrics
    if isinstance(metrics, MetricsUnavailable):
        return _Failure("MetricsUnavailable", f"metrics unavailable: {metrics.reason}")
    now = inp.now
    start = now - config.stable_window_seconds
    in_window: list[ReplicaSeries] = []
    max_age = config.max_metric_age_seconds
    for series in metrics.replicas:
        samples = tuple(
            s
            for s in series.samples
            if start <= s.timestamp <= now + _CLOCK_SLACK
            # A repeat of a value from before a scrape gap is not a measurement.
            and (s.scraped_at is None or s.timestamp - s.scraped_at <= max_age)
        )
        if samples:
            in_window.append(replace(series, samples=samples))
    if not in_window:
        return _Failure(
            "NoMetrics",
            f"no replica reports metrics in the last {config.stable_window_seconds:g}s "
            f"({inp.ready_replicas} ready, {inp.starting_replicas} starting)",
        )
    ages = []
    for series in in_window:
        seen = series.last_scraped_at
        if seen is None:
            seen = series.samples[-1].timestamp
        ages.append(now - seen)
    reporting = sum(1 for age in ages if age <= config.max_metric_age_seconds)
    if reporting == 0:
        return _Failure(
            "MetricsStale",
            f"newest metrics are {min(ages):.0f}s old (limit {config.max_metric_age_seconds:g}s)",
        )
    # Past the last real scrape a range query repeats the old value: drop those samples.
    trimmed = []
    for series in in_window:
        kept = series
        if series.last_scraped_at is not None:
            until = series.last_scraped_at + max(metrics.step, 0.0)
            kept = replace(series, samples=tuple(s for s in series.samples if s.timestamp <= until))
        if kept.samples:
            trimmed.append(kept)
    if not trimmed:
        return _Failure("MetricsStale", "no sample newer than the replicas' last scrape")
    in_window = trimmed
    for series in in_window:
        for sample in series.samples:
            problem = _invalid(sample)
            if problem is not None:
                return _Failure("MetricsInvalid", f"invalid metrics from {series.pod}: {problem}")
    points = _aggregate(in_window)
    panic_points = [p for p in points if p.t >= now - config.panic_window_seconds] or points
    stable = _stats(points, config.targets)
    return _Evaluation(
        stable=stable,
        panic=_stats(panic_points, config.targets),
        reporting=reporting,
        partial=reporting < inp.ready_replicas,
        idle=all(p.waiting == 0 and p.running == 0 for p in points),
    )


# --------------------------------------------------------------------------- recommendations


@dataclass(frozen=True)
class _Rec:
    signal: Signal
    replicas: int
    text: str


_EPS = 1e-9


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def _recommend(
    config: PolicyConfig, st: _Stats, recent: _Stats, spec: int, cold_start: bool
) -> tuple[list[_Rec], bool]:
    """Per-signal recommendations over one window (signals without an opinion are left out).

    `recent` is the panic window, for the queue's current trend. Returns whether
    the cold start held a signal back. While replicas load, a growing backlog
    is expected: the queue level and TTFT may then hold but not add replicas,
    and the arrival-rate queue need leaves out draining the backlog (the
    replicas in flight will drain it).
    """
    tol = config.tolerance
    targets = config.targets
    recs: list[_Rec] = []
    held_back = False

    busy = st.running_per_replica > 0 or st.waiting_per_replica > 0 or st.kv_per_replica > 0
    kv_text = (
        f"KV cache {st.kv_per_replica:.0%}, target {targets.kv_cache_utilization:.0%}"
        if busy
        else "no requests running or waiting"
    )
    kv_ratio = st.kv_need / spec
    kv_rec = spec if abs(kv_ratio - 1) <= tol else _ceil(st.kv_need)
    recs.append(_Rec(Signal.KV_CACHE, kv_rec, kv_text))

    q_target = targets.queue_depth_per_replica
    q_ratio = st.waiting_per_replica / q_target
    q_text = f"queue {st.waiting_per_replica:.1f} waiting/replica, target {q_target:g}"
    if q_ratio > 1 + tol:
        if st.arrival_rate is not None and st.service_rate is not None:
            drain = 0.0 if cold_start else st.excess_backlog / config.stable_window_seconds
            need = (st.arrival_rate + drain) / st.service_rate
            q_text += f"; arrivals {st.arrival_rate:.2f}/s, {st.service_rate:.2f}/s per replica"
            q_rec = max(spec, _ceil(need))
            # Saturated replicas show a full KV cache while they work off a backlog;
            # the arrival rate is the better measure of demand, so KV may not exceed it.
            recs = [replace(r, replicas=min(r.replicas, q_rec)) for r in recs]
            recs.append(_Rec(Signal.QUEUE, q_rec, q_text))
        else:
            # Without completion rates only the level is known; a backlog that the
            # current replicas clear within a stable window needs no more of them.
            shrink = -recent.in_system_trend
            draining = shrink > 0 and recent.excess_backlog <= shrink * config.stable_window_seconds
            rec = spec if draining else max(spec, _ceil(st.queue_need))
            if draining:
                q_text += f"; draining {shrink:.2f}/s"
            if cold_start and rec > spec:
                rec, held_back = spec, True
            recs.append(_Rec(Signal.QUEUE, rec, q_text))
    elif q_ratio > tol:
        recs.append(_Rec(Signal.QUEUE, spec, q_text))

    ttft_target = targets.time_to_first_token_seconds
    if ttft_target is not None and st.ttft is not None:
        ratio = st.ttft / ttft_target
        text = f"TTFT {st.ttft:.2f}s, target {ttft_target:g}s"
        if ratio > 1 + tol:
            grow = min(ratio, config.panic_threshold)
            rec = max(spec, _ceil(spec * grow))
            if cold_start and rec > spec:
                rec, held_back = spec, True
            recs.append(_Rec(Signal.TTFT, rec, text))
        elif ratio >= 1 - tol:
            recs.append(_Rec(Signal.TTFT, spec, text))
    return recs, held_back


_PRIORITY = {Signal.QUEUE: 2, Signal.TTFT: 1, Signal.KV_CACHE: 0, Signal.NONE: -1}


def _best(recs: Iterable[_Rec]) -> _Rec:
    return max(recs, key=lambda r: (r.replicas, _PRIORITY[r.signal]))


# --------------------------------------------------------------------------- decision


def _clamp(value: int, lo: int, hi: int) -> int:
    return min(max(value, lo), hi)


def _with_change(state: PolicyState, now: float, spec: int, desired: int) -> PolicyState:
    events = state.scale_events
    cold = state.cold_start_at
    if desired != spec:
        events = (*events, (now, desired - spec))
    if desired > spec:
        cold = now
    return replace(state, last_applied=desired, scale_events=events, cold_start_at=cold)


def _bound_notes(constraints: Sequence[Constraint], lo: int, hi: int) -> list[str]:
    notes = []
    if Constraint.MIN_REPLICAS in constraints:
        notes.append(f"raised to the minimum {lo}")
    if Constraint.MAX_REPLICAS in constraints:
        notes.append(f"capped at maxReplicas {hi}")
    return notes


def _headline(spec: int, desired: int) -> str:
    if desired > spec:
        return f"scaling up {spec} -> {desired}"
    if desired < spec:
        return f"scaling down {spec} -> {desired}"
    return f"holding {spec}"


def _cleared(state: PolicyState) -> PolicyState:
    """Forget the windows and modes (after a gap in usable decisions)."""
    return replace(
        state,
        history=(),
        history_since=None,
        panic_since=None,
        panic_last_trigger_at=None,
        idle_since=None,
    )


def _paused(state: PolicyState, spec: int) -> Decision:
    return Decision(
        desired_replicas=spec,
        current_replicas=spec,
        recommendation=None,
        signal=Signal.NONE,
        constraints=(Constraint.PAUSED,),
        panic=False,
        fail_static=False,
        reason=f"holding {spec}: autoscaling is paused",
        condition_reason="Paused",
        observed=None,
        state=replace(_cleared(state), last_applied=spec, manual_at=None),
    )


def _at_zero(state: PolicyState) -> Decision:
    return Decision(
        desired_replicas=0,
        current_replicas=0,
        recommendation=None,
        signal=Signal.NONE,
        constraints=(Constraint.SCALED_TO_ZERO,),
        panic=False,
        fail_static=False,
        reason="holding 0: no replica to measure; scale to 1 or more to resume autoscaling",
        condition_reason="ScaledToZero",
        observed=None,
        state=replace(_cleared(state), last_applied=0, cold_start_at=None),
    )


def _rate_limit(
    config: PolicyConfig, state: PolicyState, now: float, spec: int, target: int
) -> int:
    """Cap the change at maxReplicasPerStep minus what was changed within the period."""
    up, down = config.scale_up, config.scale_down
    if target > spec and up.max_replicas_per_step is not None:
        used = sum(d for t, d in state.scale_events if d > 0 and t > now - up.period_seconds)
        return min(target, spec + max(0, up.max_replicas_per_step - used))
    if target < spec and down.max_replicas_per_step is not None:
        used = sum(-d for t, d in state.scale_events if d < 0 and t > now - down.period_seconds)
        return max(target, spec - max(0, down.max_replicas_per_step - used))
    return target


def decide(config: PolicyConfig, state: PolicyState, inp: PolicyInput) -> Decision:
    """Compute one decision. Pure: same inputs, same Decision.

    Call it on a steady cadence well under the stable window (e.g. every 15 s):
    a longer pause is treated as a gap in the windows.
    """
    now = inp.now
    spec = inp.spec_replicas
    last_rec_at = state.history[-1][0] if state.history else None
    state = state.pruned(config, now)
    if state.history_since is not None and (
        last_rec_at is None or now - last_rec_at > config.stable_window_seconds
    ):
        # No decision for a while (operator down): the windows saw nothing of it.
        state = replace(state, history=(), history_since=None)

    if inp.paused:
        return _paused(state, spec)

    if state.last_applied is not None and spec != state.last_applied:
        # Someone else wrote spec.replicas: adopt it, hold it, restart the windows.
        state = replace(
            _cleared(state),
            manual_at=now,
            cold_start_at=now if spec > state.last_applied else state.cold_start_at,
        )

    if spec == 0:
        return _at_zero(state)

    lo, hi = config.min_replicas, config.max_replicas
    floor = max(lo, 1)
    in_manual = (
        state.manual_at is not None and now - state.manual_at < config.manual_override_seconds
    )
    if not in_manual:
        state = replace(state, manual_at=None)
    starting = max(inp.starting_replicas, spec - inp.ready_replicas, 0)
    if starting == 0:
        state = replace(state, cold_start_at=None)
    elif state.cold_start_at is None:
        # Replicas already loading when first seen get their grace from now.
        state = replace(state, cold_start_at=now)

    ev = _evaluate(config, inp)

    if isinstance(ev, _Failure):
        desired = _clamp(spec, floor, hi)
        held_by = [Constraint.FAIL_STATIC]
        if in_manual:
            held_by.append(Constraint.MANUAL_OVERRIDE)
        if desired > spec:
            held_by.append(Constraint.MIN_REPLICAS)
        elif desired < spec:
            held_by.append(Constraint.MAX_REPLICAS)
        bound_notes = _bound_notes(held_by, floor, hi)
        reason = f"{_headline(spec, desired)}: {ev.message}"
        if bound_notes:
            reason += "; " + "; ".join(bound_notes)
        return Decision(
            desired_replicas=desired,
            current_replicas=spec,
            recommendation=None,
            signal=Signal.NONE,
            constraints=tuple(held_by),
            panic=False,
            fail_static=True,
            reason=reason,
            condition_reason=ev.condition_reason,
            observed=None,
            state=_with_change(_cleared(state), now, spec, desired),
        )

    observed = Observed(
        reporting_replicas=ev.reporting,
        waiting_per_replica=ev.stable.waiting_per_replica,
        running_per_replica=ev.stable.running_per_replica,
        kv_cache_utilization=ev.stable.kv_per_replica,
        ttft_seconds=ev.stable.ttft,
    )

    # Scale-to-zero needs the feature, minReplicas 0 and a long enough idle spell.
    idle_since = (state.idle_since if state.idle_since is not None else now) if ev.idle else None
    zero_ok = (
        config.scale_to_zero.enabled
        and lo == 0
        and idle_since is not None
        and now - idle_since >= config.scale_to_zero.idle_seconds
    )
    lo_eff = 0 if zero_ok else floor

    in_cold_start = (
        starting > 0
        and state.cold_start_at is not None
        and now - state.cold_start_at < config.cold_start_grace_seconds
    )
    counted_starting = starting if in_cold_start else 0
    capacity = max(inp.ready_replicas, ev.reporting, 1) + counted_starting

    recs_stable, held_s = _recommend(config, ev.stable, ev.panic, spec, in_cold_start)
    recs_panic, held_p = _recommend(config, ev.panic, ev.panic, spec, in_cold_start)
    cold_capped = held_s or held_p
    panic_peak = _best(recs_panic)
    # A manual change is held, panic or not.
    triggered = (
        not in_manual
        and panic_peak.replicas > spec
        and panic_peak.replicas >= config.panic_threshold * capacity
    )
    panic_mode = triggered or (
        not in_manual
        and state.panic_last_trigger_at is not None
        and now - state.panic_last_trigger_at < config.stable_window_seconds
    )
    if panic_mode:
        best = _best([*recs_stable, *recs_panic])
        window_name = "panic" if any(best is r for r in recs_panic) else "stable"
        if best.replicas < spec:
            best = replace(best, replicas=spec)
    else:
        best = _best(recs_stable)
        window_name = "stable"
    rec = best.replicas

    history = (*state.history, (now, rec))
    history_since = state.history_since if state.history_since is not None else now

    constraints: list[Constraint] = []
    notes: list[str] = []
    if cold_capped:
        constraints.append(Constraint.COLD_START)
        notes.append(
            f"{starting} starting replica(s) count as capacity until Ready "
            "(queue/TTFT wait for them)"
        )

    up_rules, down_rules = config.scale_up, config.scale_down
    if in_manual:
        target = spec
        constraints.append(Constraint.MANUAL_OVERRIDE)
        assert state.manual_at is not None
        left = config.manual_override_seconds - (now - state.manual_at)
        notes.append(f"manual scale to {spec} is held for {left:.0f}s more (recommendation {rec})")
    elif panic_mode:
        target = max(rec, spec)
    else:
        up_rec = min(r for t, r in history if t >= now - up_rules.stabilization_window_seconds)
        down_rec = max(r for t, r in history if t >= now - down_rules.stabilization_window_seconds)
        if up_rec > spec:
            target = up_rec
            if up_rec < rec:
                constraints.append(Constraint.STABILIZATION)
                notes.append(
                    f"lowest recommendation in the "
                    f"{up_rules.stabilization_window_seconds:g}s scale-up window is {up_rec}"
                )
        elif down_rec < spec:
            covered = now - history_since >= down_rules.stabilization_window_seconds
            if ev.partial:
                target = spec
                constraints.append(Constraint.PARTIAL_METRICS)
                notes.append(
                    f"only {ev.reporting} of {inp.ready_replicas} ready replicas report "
                    "metrics; not scaling down"
                )
            elif not covered:
                target = spec
                constraints.append(Constraint.WINDOW_NOT_COVERED)
                notes.append(
                    f"scale-down needs {down_rules.stabilization_window_seconds:g}s of valid "
                    f"metrics ({now - history_since:.0f}s so far)"
                )
            else:
                target = down_rec
                if down_rec > rec:
                    constraints.append(Constraint.STABILIZATION)
                    notes.append(
                        f"highest recommendation in the "
                        f"{down_rules.stabilization_window_seconds:g}s scale-down window "
                        f"is {down_rec}"
                    )
        else:
            target = spec
            if rec != spec:
                constraints.append(Constraint.STABILIZATION)
                window = (
                    up_rules.stabilization_window_seconds
                    if rec > spec
                    else down_rules.stabilization_window_seconds
                )
                notes.append(f"recommendation {rec} waits out the {window:g}s window")

    if not in_manual:
        limited = _rate_limit(config, state, now, spec, target)
        if limited != target:
            target = limited
            constraints.append(Constraint.RATE_LIMIT)
            step, period = (
                (up_rules.max_replicas_per_step, up_rules.period_seconds)
                if limited > spec
                else (down_rules.max_replicas_per_step, down_rules.period_seconds)
            )
            sign = "+" if limited > spec else "-"
            notes.append(f"rate limit {sign}{step} per {period:g}s")

    desired = _clamp(target, lo_eff, hi)
    if desired > target:
        constraints.append(Constraint.MIN_REPLICAS)
    elif desired < target:
        constraints.append(Constraint.MAX_REPLICAS)
    notes.extend(_bound_notes(constraints, lo_eff, hi))

    reason = f"{_headline(spec, desired)}: {best.text} ({window_name} window"
    reason += ", panic mode)" if panic_mode else ")"
    if notes:
        reason += "; " + "; ".join(notes)

    new_state = replace(
        state,
        history=history,
        history_since=history_since,
        idle_since=idle_since,
        panic_last_trigger_at=now if triggered else state.panic_last_trigger_at,
        panic_since=(
            (state.panic_since if state.panic_since is not None else now) if panic_mode else None
        ),
    )
    if not panic_mode:
        new_state = replace(new_state, panic_last_trigger_at=None)
    return Decision(
        desired_replicas=desired,
        current_replicas=spec,
        recommendation=rec,
        signal=best.signal,
        constraints=tuple(constraints),
        panic=panic_mode,
        fail_static=False,
        reason=reason,
        condition_reason="ManualOverride" if in_manual else "ValidMetrics",
        observed=observed,
        state=_with_change(new_state, now, spec, desired),
    )


def query_window_seconds(config: PolicyConfig) -> float:
    """How far back the metrics source must read for one decision."""
    return config.stable_window_seconds
