"""What the policy remembers between decisions (`PolicyState`), and its stored form.

The state round-trips through a small JSON-able dict kept in the
InferenceService status, so it survives operator restarts. A settled service
(same observations, replicas where the policy wants them) gets the very same
state from one decision to the next, so the controller has nothing to write:
the recommendation history is kept as change points, and the time of the last
decision only while a change is pending.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
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


def _change_points(history: tuple[tuple[float, int], ...]) -> tuple[tuple[float, int], ...]:
    """Per-decision (time, recommendation) pairs -> the first pair of each run."""
    out: list[tuple[float, int]] = []
    for t, r in history:
        if not out or out[-1][1] != r:
            out.append((t, r))
    return tuple(out)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between decisions.

    ``history``: the recommendation as change points, (time, r) meaning "r from
    this time until the next point", in time order. It reaches back to the
    point in effect at the start of the longest stabilization window.
    ``history_since``: when the history began (valid metrics since then).
    ``scale_events``: (time, replica delta) of the autoscaler's own changes within
    the longest rate-limit period.
    ``last_decision_at``: the time of the last decision, kept only while a change
    waits on the windows; a longer pause in decisions than the stable window
    then means the windows missed it.
    ``settled``: written by a decision that left nothing waiting (its latest
    recommendation, within bounds, is what was applied); no time is kept, so the
    state stays the same from tick to tick, and a pause changes nothing: any
    scale-down still needs the recommendation to drop for a full window. A state
    with neither (made by hand) counts as current as of its latest history point.
    ``panic_triggered``: the panic condition held at the last decision, which
    left no time (an overload at maxReplicas re-triggers on every tick);
    ``panic_last_trigger_at`` is then an earlier trigger, and panic mode lasts a
    stable window from the first decision that no longer sees the condition.
    ``bursting``: the last decision saw a burst (panic triggered, or a queue over its
    target in the panic window); ``burst_at``: when the last burst ended (the first
    decision that no longer saw it). Scale-down waits while bursting and
    ``scaleDown.burstHoldSeconds`` after ``burst_at``.
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
    last_decision_at: float | None = None
    settled: bool = False
    panic_triggered: bool = False
    burst_at: float | None = None
    bursting: bool = False

    _VERSION: ClassVar[int] = 2

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
            ("lastDecisionAt", self.last_decision_at),
            ("burstAt", self.burst_at),
        ):
            if value is not None:
                out[key] = _t(value)
        if self.settled:
            out["settled"] = True
        if self.panic_triggered:
            out["panicTriggered"] = True
        if self.bursting:
            out["bursting"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyState:
        """Parse `to_dict`'s output; raises ValueError on anything malformed.

        Version 1 (a history entry per decision) is converted: runs of equal
        recommendations become change points, and the last entry's time is the
        time of the last decision.
        """
        version = data.get("version")
        if version not in (1, cls._VERSION) or isinstance(version, bool):
            raise ValueError(f"unsupported autoscaler state version {version!r}")
        last = data.get("lastApplied")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise ValueError(f"lastApplied: expected a non-negative int, got {last!r}")
        history = _pairs(data.get("history"), "history")
        if any(b[0] < a[0] for a, b in pairwise(history)):
            raise ValueError("history: times must not go backwards")
        settled, triggered = data.get("settled", False), data.get("panicTriggered", False)
        bursting = data.get("bursting", False)
        for key, flag in (
            ("settled", settled),
            ("panicTriggered", triggered),
            ("bursting", bursting),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{key}: expected true or false, got {flag!r}")
        last_decision_at = _opt_time(data.get("lastDecisionAt"), "lastDecisionAt")
        if version == 1:
            last_decision_at = history[-1][0] if history else None
            history, settled = _change_points(history), False
        return cls(
            last_applied=last,
            history=history,
            history_since=_opt_time(data.get("historySince"), "historySince"),
            scale_events=_pairs(data.get("scaleEvents"), "scaleEvents"),
            cold_start_at=_opt_time(data.get("coldStartAt"), "coldStartAt"),
            panic_since=_opt_time(data.get("panicSince"), "panicSince"),
            panic_last_trigger_at=_opt_time(data.get("panicLastTriggerAt"), "panicLastTriggerAt"),
            manual_at=_opt_time(data.get("manualAt"), "manualAt"),
            idle_since=_opt_time(data.get("idleSince"), "idleSince"),
            last_decision_at=last_decision_at,
            settled=settled,
            panic_triggered=triggered,
            burst_at=_opt_time(data.get("burstAt"), "burstAt"),
            bursting=bursting,
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

    def as_of(self, config: PolicyConfig, now: float) -> PolicyState:
        """The stored state at ``now``: what is too old to matter dropped, and the
        windows forgotten after a pause in decisions longer than the stable window."""
        current_at = self.last_decision_at
        if current_at is None and not self.settled and self.history:
            current_at = self.history[-1][0]
        state = self.pruned(config, now)
        if state.history_since is not None and (
            not state.history
            or (current_at is not None and now - current_at > config.stable_window_seconds)
        ):
            # The operator was down: the windows saw nothing of that time.
            state = replace(state, history=(), history_since=None)
        return state

    def pruned(self, config: PolicyConfig, now: float) -> PolicyState:
        """Drop history and events too old to matter (keeps the stored dict small).

        The last change point at or before the start of the longest window stays:
        its recommendation is still in effect there.
        """
        start = now - max(
            config.scale_up.stabilization_window_seconds,
            config.scale_down.stabilization_window_seconds,
        )
        keep_events = max(config.scale_up.period_seconds, config.scale_down.period_seconds)
        burst_at = self.burst_at
        if burst_at is not None and now - burst_at >= config.scale_down.burst_hold():
            burst_at = None
        return replace(
            self,
            burst_at=burst_at,
            history=self.history[self._boundary(start) :],
            scale_events=tuple((t, d) for t, d in self.scale_events if t > now - keep_events),
        )

    def cleared(self) -> PolicyState:
        """Forget the windows and modes (after a gap in usable decisions); a burst is
        still remembered."""
        return replace(
            self,
            history=(),
            history_since=None,
            panic_since=None,
            panic_last_trigger_at=None,
            panic_triggered=False,
            idle_since=None,
            last_decision_at=None,
            settled=True,
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
        """This decision's recommendation added to the history (a new point only when
        it differs from the one in effect)."""
        history = self.history
        if not history or history[-1][1] != recommendation:
            history = (*history, (now, recommendation))
        return replace(
            self,
            history=history,
            history_since=self.history_since if self.history_since is not None else now,
        )

    def marked(self, now: float, *, settled: bool) -> PolicyState:
        """Keep the decision time only while a change is pending (see ``settled``)."""
        return replace(self, settled=settled, last_decision_at=None if settled else now)

    def lowest_since(self, start: float) -> int:
        """The lowest recommendation in effect from ``start`` on (history must reach now)."""
        return min(r for _, r in self.history[self._boundary(start) :])

    def highest_since(self, start: float) -> int:
        """The highest recommendation in effect from ``start`` on (history must reach now)."""
        return max(r for _, r in self.history[self._boundary(start) :])

    def _boundary(self, start: float) -> int:
        """Index of the change point in effect at ``start`` (0 if the history begins later)."""
        i = bisect_right(self.history, start, key=lambda p: p[0])
        return max(i - 1, 0)
