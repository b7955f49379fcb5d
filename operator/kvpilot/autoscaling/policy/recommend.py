"""Recommendations: one window's statistics -> a replica count per signal.

KV cache sizes both ways; the queue and TTFT are saturation signals that can
add replicas or veto removing them, never remove them. The largest
recommendation wins (ties go to the signal that explains saturation best).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from kvpilot.autoscaling.policy.config import PolicyConfig
from kvpilot.autoscaling.policy.contract import Signal
from kvpilot.autoscaling.policy.signals import Evaluation, Stats


@dataclass(frozen=True)
class Rec:
    """One signal's recommended replicas, with the text that explains it."""

    signal: Signal
    replicas: int
    text: str


_EPS = 1e-9


def ceil_replicas(x: float) -> int:
    """Replicas for a fractional need (a hair over an integer is float noise, not demand)."""
    return max(0, math.ceil(x - _EPS))


def recommend(
    config: PolicyConfig, st: Stats, recent: Stats, spec: int, cold_start: bool
) -> tuple[list[Rec], bool]:
    """Per-signal recommendations over one window (signals without an opinion are left out).

    `recent` is the panic window, for the queue's current trend. Returns whether
    the cold start held a signal back. While replicas load, a growing backlog
    is expected: the queue level and TTFT may then hold but not add replicas,
    and the arrival-rate queue need leaves out draining the backlog (the
    replicas in flight will drain it).
    """
    tol = config.tolerance
    targets = config.targets
    recs: list[Rec] = []
    held_back = False

    busy = st.running_per_replica > 0 or st.waiting_per_replica > 0 or st.kv_per_replica > 0
    kv_text = (
        f"KV cache {st.kv_per_replica:.0%}, target {targets.kv_cache_utilization:.0%}"
        if busy
        else "no requests running or waiting"
    )
    kv_ratio = st.kv_need / spec
    kv_rec = spec if abs(kv_ratio - 1) <= tol else ceil_replicas(st.kv_need)
    recs.append(Rec(Signal.KV_CACHE, kv_rec, kv_text))

    c_target = targets.concurrency_per_replica
    if c_target is not None:
        recs.append(_concurrency(config, c_target, st, recent, spec))

    q_target = targets.queue_depth_per_replica
    q_ratio = st.waiting_per_replica / q_target
    q_text = f"queue {st.waiting_per_replica:.1f} waiting/replica, target {q_target:g}"
    if q_ratio > 1 + tol:
        if st.arrival_rate is not None and st.service_rate is not None:
            drain = 0.0 if cold_start else st.excess_backlog / config.stable_window_seconds
            need = (st.arrival_rate + drain) / st.service_rate
            q_text += f"; arrivals {st.arrival_rate:.2f}/s, {st.service_rate:.2f}/s per replica"
            q_rec = max(spec, ceil_replicas(need))
            # Saturated replicas show a full KV cache while they work off a backlog;
            # the arrival rate is the better measure of demand, so KV may not exceed it.
            # Requests in flight are sized against a target below saturation, so they
            # still count: a lagging arrival estimate must not hold them back.
            recs = [
                r if r.signal is Signal.CONCURRENCY else replace(r, replicas=min(r.replicas, q_rec))
                for r in recs
            ]
            recs.append(Rec(Signal.QUEUE, q_rec, q_text))
        else:
            # Without completion rates only the level is known; a backlog that the
            # current replicas clear within a stable window needs no more of them.
            shrink = -recent.in_system_trend
            draining = shrink > 0 and recent.excess_backlog <= shrink * config.stable_window_seconds
            rec = spec if draining else max(spec, ceil_replicas(st.queue_need))
            if draining:
                q_text += f"; draining {shrink:.2f}/s"
            if cold_start and rec > spec:
                rec, held_back = spec, True
            recs.append(Rec(Signal.QUEUE, rec, q_text))
    elif q_ratio > tol:
        recs.append(Rec(Signal.QUEUE, spec, q_text))

    ttft_target = targets.time_to_first_token_seconds
    if ttft_target is not None and st.ttft is not None:
        ratio = st.ttft / ttft_target
        text = f"TTFT {st.ttft:.2f}s, target {ttft_target:g}s"
        if ratio > 1 + tol:
            grow = min(ratio, config.panic_threshold)
            rec = max(spec, ceil_replicas(spec * grow))
            if cold_start and rec > spec:
                rec, held_back = spec, True
            recs.append(Rec(Signal.TTFT, rec, text))
        elif ratio >= 1 - tol:
            recs.append(Rec(Signal.TTFT, spec, text))
    return recs, held_back


_DOWN_EXPONENT = 3.0
"""How fast requests in flight per replica are taken to grow with the load per replica
when replicas are removed: in a batching engine near its SLO capacity a third fewer
replicas about doubles them (measured on the simulator's L4 engine model)."""


def _concurrency(config: PolicyConfig, target: float, st: Stats, recent: Stats, spec: int) -> Rec:
    """Replicas for the requests in flight, at ``target`` per replica, ahead of a rise.

    The level is the larger of the stable and the panic window's mean (a rise
    shows in the short window first); a rising load is projected
    ``forecastSeconds`` ahead, so the replicas asked for now are Ready for the
    load they will meet. Down, it is cautious: requests in flight grow faster than
    the load per replica (a larger batch also runs every step slower), so the
    fewest replicas kept are those at which in flight per replica, grown with
    the cube of the load per replica, stays within tolerance below the target.
    """
    rise = max(0.0, recent.in_flight_slope, st.in_flight_slope)
    level = max(st.in_flight, recent.in_flight)
    n = max(spec, 1)
    need = (level + rise * config.forecast_seconds) / target
    text = f"{level / n:.1f} requests in flight/replica, target {target:g}"
    if rise > 0:
        text += f"; rising {rise:.2f}/s"
    if need > n * (1 + config.tolerance):
        return Rec(Signal.CONCURRENCY, ceil_replicas(need), text)
    per_replica, bound = need * target / n, target * (1 - config.tolerance)
    keep = n
    while keep > 1 and per_replica * (n / (keep - 1)) ** _DOWN_EXPONENT <= bound:
        keep -= 1
    return Rec(Signal.CONCURRENCY, keep, text)


_PRIORITY = {
    Signal.QUEUE: 3,
    Signal.CONCURRENCY: 2,
    Signal.TTFT: 1,
    Signal.KV_CACHE: 0,
    Signal.NONE: -1,
}


def best(recs: Iterable[Rec]) -> Rec:
    return max(recs, key=lambda r: (r.replicas, _PRIORITY[r.signal]))


@dataclass(frozen=True)
class Choice:
    """The recommendation a decision goes by, and the mode it was made in."""

    best: Rec
    window: str
    """Which window the winning recommendation came from: "stable" or "panic"."""
    panic: bool
    """Panic mode: scale up at once, never down."""
    triggered: bool
    """The panic window asked for at least panicThreshold times the capacity now."""
    cold_capped: bool
    """The cold start held a signal back."""


def choose(
    config: PolicyConfig,
    ev: Evaluation,
    *,
    spec: int,
    capacity: int,
    cold_start: bool,
    may_panic: bool,
    panic_last_trigger_at: float | None,
    now: float,
) -> Choice:
    """The winning recommendation, from the stable window or, in panic mode, either.

    Panic mode starts when the panic window asks for ``panicThreshold`` times the
    capacity and lasts a stable window after the last such tick; a manual change
    being held (``may_panic`` False) is never overridden by it.
    """
    recs_stable, held_s = recommend(config, ev.stable, ev.panic, spec, cold_start)
    recs_panic, held_p = recommend(config, ev.panic, ev.panic, spec, cold_start)
    peak = best(recs_panic)
    triggered = (
        may_panic and peak.replicas > spec and peak.replicas >= config.panic_threshold * capacity
    )
    panic_mode = triggered or (
        may_panic
        and panic_last_trigger_at is not None
        and now - panic_last_trigger_at < config.stable_window_seconds
    )
    if panic_mode:
        top = best([*recs_stable, *recs_panic])
        window = "panic" if any(top is r for r in recs_panic) else "stable"
        if top.replicas < spec:
            top = replace(top, replicas=spec)
    else:
        top, window = best(recs_stable), "stable"
    return Choice(top, window, panic_mode, triggered, held_s or held_p)
