"""Autoscaling knobs (`PolicyConfig`) and the operator-wide policy file.

The defaults here are the built-in operator-wide policy; spec.scaling and the
policy file override them knob by knob in the CRD's camelCase spelling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


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
    concurrency_per_replica: float | None = Field(None, gt=0)
    """Requests in flight (running + waiting) per replica to size for; None: derived from
    the engine's batch limit (``batchUtilization`` x --max-num-seqs) where that is known."""
    batch_utilization: float = Field(0.65, gt=0, le=1)
    """Fraction of --max-num-seqs in flight per replica to size for when
    ``concurrencyPerReplica`` is unset: below the batch limit TTFT stays low, at it
    requests queue."""


class ScaleUpRules(_Knobs):
    """Scale-up behaviour: react at once, but add at most a few replicas per period."""

    stabilization_window_seconds: float = Field(0.0, ge=0)
    max_replicas_per_step: int | None = Field(4, ge=1)
    """None: no limit."""
    period_seconds: float = Field(60.0, gt=0)


BURST_HOLD_WINDOWS = 6.0
"""The default hold after a burst, in scale-down windows: bursty traffic (the Azure code
trace) comes back within half an hour, and a smooth load never starts the hold."""


class ScaleDownRules(_Knobs):
    """Scale-down behaviour: wait out the window, then remove one replica per period."""

    stabilization_window_seconds: float = Field(300.0, ge=0)
    max_replicas_per_step: int | None = Field(1, ge=1)
    """None: no limit."""
    period_seconds: float = Field(60.0, gt=0)
    burst_hold_seconds: float | None = Field(None, ge=0)
    """After a burst (panic triggered, or a queue over its target in the panic window),
    no scale-down for this long: bursts recur, and a replica given back before the next
    one is a cold start late. None: ``BURST_HOLD_WINDOWS`` scale-down windows (1800 s)."""

    def burst_hold(self) -> float:
        """The hold after a burst in seconds (``burstHoldSeconds`` or its default)."""
        if self.burst_hold_seconds is not None:
            return self.burst_hold_seconds
        return BURST_HOLD_WINDOWS * self.stabilization_window_seconds


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
    forecast_seconds: float = Field(120.0, ge=0)
    """How far ahead a rising in-flight load is projected when sizing for concurrency:
    about one replica's cold start, so replicas are asked for the load they will meet."""
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


def query_window_seconds(config: PolicyConfig) -> float:
    """How far back the metrics source must read for one decision."""
    return config.stable_window_seconds
