"""What the policy remembers between decisions (`PolicyState`), and its stored form.

The state round-trips through a small JSON-able dict kept in the
InferenceService status, so it survives operator restarts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from kvpilot.autoscaling.policy.config import PolicyConfig


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

    def cleared(self) -> PolicyState:
        """Forget the windows and modes (after a gap in usable decisions)."""
        return replace(
            self,
            history=(),
            history_since=None,
            panic_since=None,
            panic_last_trigger_at=None,
            idle_since=None,
        )

    def after_change(self, now: float, spec: int, desired: int) -> PolicyState:
        """Remember what was applied; a change counts against the rate limits, and a
        scale-up starts the cold-start grace of the replicas it asks for."""
        events = self.scale_events
        cold = self.cold_start_at
        if desired != spec:
            events = (*events, (now, desired - spec))
        if desired > spec:
            cold = now
        return replace(self, last_applied=desired, scale_events=events, cold_start_at=cold)

    def recorded(self, now: float, recommendation: int) -> PolicyState:
        """This decision's recommendation added to the history."""
        return replace(
            self,
            history=(*self.history, (now, recommendation)),
            history_since=self.history_since if self.history_since is not None else now,
        )

    def lowest_since(self, start: float) -> int:
        """The lowest recommendation from ``start`` on (the history must reach now)."""
        return min(r for t, r in self.history if t >= start)

    def highest_since(self, start: float) -> int:
        """The highest recommendation from ``start`` on (the history must reach now)."""
        return max(r for t, r in self.history if t >= start)
