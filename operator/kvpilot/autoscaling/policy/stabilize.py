"""Stabilization: the recommendation -> a target the windows agree with.

As the HPA's behavior: scale up to the lowest recommendation of the scale-up
window, down to the highest of the scale-down window. Scale-down also needs a
full scale-down window of valid metrics and every Ready replica reporting. A
manual change being held and panic mode take precedence over the windows.
"""

from __future__ import annotations

from kvpilot.autoscaling.policy.config import PolicyConfig
from kvpilot.autoscaling.policy.contract import Constraint
from kvpilot.autoscaling.policy.reason import Hold
from kvpilot.autoscaling.policy.state import PolicyState


def stabilised(
    config: PolicyConfig,
    state: PolicyState,
    *,
    now: float,
    spec: int,
    rec: int,
    panic: bool,
    manual_left: float | None,
    reporting: int,
    ready: int,
    burst_left: float | None = None,
) -> tuple[int, list[Hold]]:
    """The target before rate limits and bounds; ``state`` has this decision recorded.

    ``burst_left``: seconds the hold after a burst still forbids scaling down.
    """
    if manual_left is not None:
        note = f"manual scale to {spec} is held for {manual_left:.0f}s more (recommendation {rec})"
        return spec, [Hold(Constraint.MANUAL_OVERRIDE, note)]
    if panic:
        return max(rec, spec), []
    up_window = config.scale_up.stabilization_window_seconds
    down_window = config.scale_down.stabilization_window_seconds
    up_rec = state.lowest_since(now - up_window)
    down_rec = state.highest_since(now - down_window)
    if up_rec > spec:
        if up_rec < rec:
            note = f"lowest recommendation in the {up_window:g}s scale-up window is {up_rec}"
            return up_rec, [Hold(Constraint.STABILIZATION, note)]
        return up_rec, []
    if down_rec < spec and burst_left is not None:
        note = f"a burst {config.scale_down.burst_hold() - burst_left:.0f}s ago holds "
        note += f"replicas for {burst_left:.0f}s more (recommendation {rec})"
        return spec, [Hold(Constraint.STABILIZATION, note)]
    if down_rec < spec:
        return _scale_down(
            down_window,
            state,
            now=now,
            spec=spec,
            rec=rec,
            down_rec=down_rec,
            reporting=reporting,
            ready=ready,
        )
    if rec != spec:
        window = up_window if rec > spec else down_window
        note = f"recommendation {rec} waits out the {window:g}s window"
        return spec, [Hold(Constraint.STABILIZATION, note)]
    return spec, []


def _scale_down(
    window: float,
    state: PolicyState,
    *,
    now: float,
    spec: int,
    rec: int,
    down_rec: int,
    reporting: int,
    ready: int,
) -> tuple[int, list[Hold]]:
    """Never down on partial data or before a full window of valid metrics."""
    if reporting < ready:
        note = f"only {reporting} of {ready} ready replicas report metrics; not scaling down"
        return spec, [Hold(Constraint.PARTIAL_METRICS, note)]
    assert state.history_since is not None
    covered = now - state.history_since
    if covered < window:
        note = f"scale-down needs {window:g}s of valid metrics ({covered:.0f}s so far)"
        return spec, [Hold(Constraint.WINDOW_NOT_COVERED, note)]
    if down_rec > rec:
        note = f"highest recommendation in the {window:g}s scale-down window is {down_rec}"
        return down_rec, [Hold(Constraint.STABILIZATION, note)]
    return down_rec, []
