"""A clairvoyant, cold-start-aware lower bound on the GPU-seconds a trace needs.

The oracle knows every future arrival. It sizes the fleet bin by bin from the
arrival rate and the rate one replica sustains within the SLO, and then picks
*when* replicas run so that replica-seconds plus cold starts are smallest:

* a replica that is needed from time t is started ``cold_start_s`` earlier and
  holds its GPU while it loads (a cold start costs ``cold_start_s`` GPU-seconds);
* between two busy spells a replica stays up when the idle gap costs less than
  a fresh cold start (gap <= ``cold_start_s``), and is stopped otherwise.

The cost splits exactly into "layers" (layer k is on while the fleet has at
least k replicas): replica-seconds are the sum of the layers' on-times and
the cold starts the sum of their switch-ons, and the constraint "at least
n(t) replicas" is "layer k on wherever n(t) >= k". Each layer's best schedule
fills exactly its interior gaps no longer than a cold start; the filled layers
stay nested (a gap of layer k+1 contains only busy or shorter-gap time of
layer k), so the per-layer optima form one feasible, optimal fleet schedule.

Assumptions (what makes it a *lower bound* rather than a schedule to run):

* fluid demand within a bin: a bin needs ceil(arrival rate / capacity)
  replicas, with the trace-wide mix of prompt and output lengths;
* the capacity of a replica is measured on the engine model at steady
  Poisson load with that mix (:func:`replica_capacity`): the largest arrival
  rate at which the TTFT and inter-token SLOs are met for the target fraction
  of requests; the router spreads load perfectly, requests never migrate and
  a stopped replica has no requests left to drain;
* replicas running at time 0 are warm (no cold start), as the simulated fleet
  starts with its initial replicas Ready; every later start pays a full cold start.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvpilot_runtime.engine import Engine, RequestSpec, simulate


@dataclass(frozen=True)
class Slo:
    """Latency objectives: a request meets the SLO when its TTFT (and mean ITL) are within."""

    ttft_s: float
    itl_s: float | None = None
    attainment: float = 0.99


@dataclass(frozen=True)
class OraclePlan:
    """The oracle's fleet: replicas per bin, their cost and how it splits."""

    bin_s: float
    needed: tuple[int, ...]
    replicas: tuple[int, ...]
    starts: int
    replica_seconds: float
    cold_start_seconds: float

    @property
    def gpu_seconds(self) -> float:
        """Replica-seconds plus the GPU time spent loading (per GPU of one replica)."""
        return self.replica_seconds + self.cold_start_seconds

    @property
    def peak(self) -> int:
        return max(self.replicas, default=0)


def arrival_rates(arrivals_s: Sequence[float], bin_s: float, duration_s: float) -> list[float]:
    """Arrivals per second in each bin of ``bin_s`` covering [0, duration_s)."""
    if bin_s <= 0:
        raise ValueError("bin_s must be positive")
    n = max(1, math.ceil(duration_s / bin_s - 1e-9))
    counts = [0] * n
    for t in arrivals_s:
        if 0 <= t < n * bin_s:
            counts[min(n - 1, int(t // bin_s))] += 1
    return [c / bin_s for c in counts]


def replicas_needed(
    rates: Sequence[float], capacity_rps: float, min_replicas: int = 0
) -> list[int]:
    """Per bin, the fewest replicas that serve its arrival rate within capacity."""
    if capacity_rps <= 0:
        raise ValueError("capacity_rps must be positive")
    return [max(min_replicas, math.ceil(r / capacity_rps - 1e-9)) for r in rates]


def plan(
    needed: Sequence[int],
    bin_s: float,
    cold_start_s: float,
    initial_replicas: int | None = None,
) -> OraclePlan:
    """The cheapest schedule with at least ``needed[i]`` replicas serving in bin i.

    ``initial_replicas`` replicas are up and warm at time 0 (default: ``needed[0]``);
    see the module docstring for why filling short gaps layer by layer is optimal.
    """
    if bin_s <= 0 or cold_start_s < 0:
        raise ValueError("bin_s must be positive and cold_start_s non-negative")
    n = len(needed)
    warm = needed[0] if (initial_replicas is None and n) else (initial_replicas or 0)
    replicas = [0] * n
    starts = 0
    top = max(needed, default=0)
    for k in range(1, top + 1):
        on = [x >= k for x in needed]
        busy = [i for i in range(n) if on[i]]
        if not busy:
            continue
        # Fill interior gaps that cost no more than a restart.
        prev = busy[0]
        for i in busy[1:]:
            gap = i - prev - 1
            if gap > 0 and gap * bin_s <= cold_start_s:
                for j in range(prev + 1, i):
                    on[j] = True
            prev = i
        # A warm layer idle at first stays up if that is cheaper than a cold start later.
        if k <= warm and busy[0] > 0 and busy[0] * bin_s <= cold_start_s:
            for j in range(busy[0]):
                on[j] = True
        # A layer warm at time 0 starts without a cold start only if it is on at once.
        for i in range(n):
            if on[i]:
                replicas[i] += 1
                if i == 0 and k <= warm:
                    continue
                if i == 0 or not on[i - 1]:
                    starts += 1
    replica_seconds = sum(replicas) * bin_s
    return OraclePlan(
        bin_s=bin_s,
        needed=tuple(needed),
        replicas=tuple(replicas),
        starts=starts,
        replica_seconds=replica_seconds,
        cold_start_seconds=starts * cold_start_s,
    )


def oracle(
    arrivals_s: Sequence[float],
    capacity_rps: float,
    *,
    duration_s: float,
    cold_start_s: float,
    bin_s: float = 60.0,
    min_replicas: int = 1,
    initial_replicas: int | None = None,
) -> OraclePlan:
    """The lower bound for a trace: bin the arrivals, size each bin, schedule the layers."""
    rates = arrival_rates(arrivals_s, bin_s, duration_s)
    return plan(
        replicas_needed(rates, capacity_rps, min_replicas),
        bin_s,
        cold_start_s,
        initial_replicas=initial_replicas,
    )


# --------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class CapacityProbe:
    """One steady-load run of a single replica."""

    rate_rps: float
    ttft_attainment: float
    itl_attainment: float
    ok: bool
    concurrency: float = 0.0
    """Mean requests in the replica (Little's law: rate x mean end-to-end latency)."""


def slo_attainment(
    ttfts: Sequence[float], itls: Sequence[float | None], slo: Slo
) -> tuple[float, float]:
    """Fractions of requests within the TTFT SLO and within the (mean) ITL SLO."""
    if not ttfts:
        return 1.0, 1.0
    ttft_ok = sum(1 for t in ttfts if t <= slo.ttft_s) / len(ttfts)
    if slo.itl_s is None:
        return ttft_ok, 1.0
    itl_ok = sum(1 for x in itls if x is None or x <= slo.itl_s) / len(itls)
    return ttft_ok, itl_ok


def probe(
    make_engine: Callable[[], Engine],
    lengths: Sequence[tuple[int, int]],
    rate_rps: float,
    slo: Slo,
    *,
    seed: int = 0,
    frontend_latency_s: float = 0.0,
) -> CapacityProbe:
    """Runs one replica at a steady Poisson ``rate_rps`` with the given (prompt, output) mix.

    ``frontend_latency_s`` is added to every TTFT (the replica's HTTP front end).
    """
    rng = random.Random(seed)
    t = 0.0
    specs = []
    for i, (prompt, output) in enumerate(lengths):
        t += rng.expovariate(1.0) / rate_rps
        ids = tuple(rng.randrange(1, 30000) for _ in range(prompt))
        specs.append(RequestSpec(f"p{i}", ids, output, arrival_time=t))
    result = simulate(make_engine(), specs)
    ttfts = [r.ttft + frontend_latency_s for r in result.records]
    e2es = [r.e2e + frontend_latency_s for r in result.records]
    itls: list[float | None] = []
    for r in result.records:
        gaps = r.itls
        itls.append(sum(gaps) / len(gaps) if gaps else None)
    # A request that never finished within the run counts as missing the SLO.
    missing = len(specs) - len(ttfts)
    ttfts += [math.inf] * missing
    itls += [math.inf] * missing
    ttft_ok, itl_ok = slo_attainment(ttfts, itls, slo)
    concurrency = rate_rps * (sum(e2es) / len(e2es)) if e2es else 0.0
    return CapacityProbe(
        rate_rps,
        ttft_ok,
        itl_ok,
        ttft_ok >= slo.attainment and itl_ok >= slo.attainment,
        concurrency,
    )


def replica_capacity(
    make_engine: Callable[[], Engine],
    lengths: Sequence[tuple[int, int]],
    slo: Slo,
    *,
    low_rps: float = 0.05,
    high_rps: float = 200.0,
    iterations: int = 12,
    seed: int = 0,
    frontend_latency_s: float = 0.0,
) -> tuple[CapacityProbe, list[CapacityProbe]]:
    """The largest steady arrival rate one replica serves within the SLO (bisection).

    Returns the probe at that rate (its ``rate_rps`` is the capacity) and every probe run.

    The same exponential draws are scaled for every rate, so the probes differ
    only in the rate and attainment falls with it as the bisection expects.
    """
    probes: list[CapacityProbe] = []
    lo, hi = low_rps, high_rps
    first = probe(make_engine, lengths, lo, slo, seed=seed, frontend_latency_s=frontend_latency_s)
    probes.append(first)
    if not first.ok:
        raise ValueError(
            f"one replica misses the SLO even at {lo:g} requests/s "
            f"(TTFT attainment {first.ttft_attainment:.3f}); the SLO is out of reach"
        )
    best = first
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        p = probe(make_engine, lengths, mid, slo, seed=seed, frontend_latency_s=frontend_latency_s)
        probes.append(p)
        if p.ok:
            lo, best = mid, p
        else:
            hi = mid
    return best, probes
