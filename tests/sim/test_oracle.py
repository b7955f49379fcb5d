"""The clairvoyant oracle on small cases checked by hand, and its capacity probe on the engine."""

from __future__ import annotations

import pytest

from kvpilot.sim.oracle import (
    Slo,
    arrival_rates,
    oracle,
    plan,
    probe,
    replica_capacity,
    replicas_needed,
)
from kvpilot_runtime.engine import Engine, EngineConfig
from kvpilot_runtime.latency import ModelShape, load_profile


def test_arrival_rates_bin_by_bin() -> None:
    # 3 arrivals in [0, 10), none in [10, 20), 1 in [20, 30); the last bin is partial.
    assert arrival_rates([0.0, 1.0, 9.9, 20.0], 10.0, 25.0) == [0.3, 0.0, 0.1]


@pytest.mark.parametrize(
    ("rates", "capacity", "floor", "expected"),
    [
        ([0.0, 1.0, 2.0, 2.01], 1.0, 0, [0, 1, 2, 3]),
        ([0.0, 0.5], 1.0, 1, [1, 1]),
        ([9.0], 4.0, 1, [3]),
    ],
)
def test_replicas_needed(
    rates: list[float], capacity: float, floor: int, expected: list[int]
) -> None:
    assert replicas_needed(rates, capacity, floor) == expected


@pytest.mark.parametrize(
    ("needed", "cold", "replicas", "starts", "gpu_s"),
    [
        # Flat: one warm replica all along, no start.
        ([1, 1, 1], 30.0, [1, 1, 1], 0, 180.0),
        # A one-bin spike to 2: 4 replica-minutes and one cold start (30 s).
        ([1, 2, 1], 30.0, [1, 2, 1], 1, 240.0 + 30.0),
        # Two spikes 60 s apart, cold start 90 s: keeping the replica over the
        # 60 s gap (60) is cheaper than a second start (90): 1 start, 3 bins on.
        ([1, 2, 1, 2], 90.0, [1, 2, 2, 2], 1, 7 * 60.0 + 90.0),
        # Same spikes, cold start 30 s: stopping and restarting (30) beats idling (60).
        ([1, 2, 1, 2], 30.0, [1, 2, 1, 2], 2, 6 * 60.0 + 60.0),
        # Gap of exactly one cold start: either choice costs the same; the oracle idles.
        ([2, 1, 2], 60.0, [2, 2, 2], 0, 360.0),
        # Layers: needs 3 at the peak; layer 2 fills a 1-bin gap, layer 3 is a single start.
        ([1, 2, 3, 1, 2], 60.0, [1, 2, 3, 2, 2], 2, 10 * 60.0 + 120.0),
    ],
)
def test_plan_hand_checked(
    needed: list[int], cold: float, replicas: list[int], starts: int, gpu_s: float
) -> None:
    p = plan(needed, 60.0, cold)
    assert list(p.replicas) == replicas
    assert p.starts == starts
    assert p.gpu_seconds == pytest.approx(gpu_s)
    assert all(r >= n for r, n in zip(p.replicas, p.needed, strict=True))


def test_plan_beats_every_alternative_on_small_cases() -> None:
    """Exhaustive check: no schedule meeting the need is cheaper than the oracle's."""
    import itertools

    bin_s, cold = 60.0, 90.0
    for needed in itertools.product(range(3), repeat=4):
        best = plan(list(needed), bin_s, cold)
        warm = needed[0]
        for sched in itertools.product(range(3), repeat=4):
            if any(s < n for s, n in zip(sched, needed, strict=True)):
                continue
            starts = max(0, sched[0] - warm) + sum(
                max(0, b - a) for a, b in itertools.pairwise(sched)
            )
            cost = sum(sched) * bin_s + starts * cold
            assert best.gpu_seconds <= cost + 1e-9, (needed, sched)


def test_cold_replicas_at_time_zero_pay_a_start() -> None:
    p = plan([2, 2], 60.0, 45.0, initial_replicas=1)
    assert p.starts == 1
    assert p.gpu_seconds == pytest.approx(240.0 + 45.0)


def test_warm_replica_idle_at_first_stays_up_when_cheaper() -> None:
    # Warm replica, needed only from bin 1: idling 60 s beats a 90 s cold start.
    p = plan([0, 1], 60.0, 90.0, initial_replicas=1)
    assert p.replicas == (1, 1)
    assert p.starts == 0


def test_oracle_end_to_end_from_arrivals() -> None:
    # 2 req/s for a minute, 6 req/s for a minute, capacity 2.5 req/s per replica.
    arrivals = [i / 2 for i in range(120)] + [60 + i / 6 for i in range(360)]
    p = oracle(arrivals, 2.5, duration_s=120.0, cold_start_s=30.0, bin_s=60.0)
    assert p.needed == (1, 3)
    assert p.starts == 2
    assert p.gpu_seconds == pytest.approx(4 * 60.0 + 2 * 30.0)


# --------------------------------------------------------------------------- capacity


def _tiny_engine() -> Engine:
    shape = ModelShape(
        parameters=8.03e9, layers=32, hidden_size=4096, attention_heads=32, kv_heads=8, head_dim=128
    )
    config = EngineConfig(num_blocks=4000, max_model_len=4096, max_num_seqs=64)
    return Engine(config, load_profile("h100-80gb"), shape)


def test_probe_attainment_falls_with_load() -> None:
    lengths = [(256, 32)] * 200
    slo = Slo(ttft_s=0.5, itl_s=0.1, attainment=0.99)
    light = probe(_tiny_engine, lengths, 1.0, slo)
    heavy = probe(_tiny_engine, lengths, 500.0, slo)
    assert light.ok
    assert light.ttft_attainment == 1.0
    assert not heavy.ok
    assert heavy.ttft_attainment < light.ttft_attainment


def test_replica_capacity_separates_ok_and_failing_rates() -> None:
    lengths = [(256, 32)] * 200
    slo = Slo(ttft_s=0.5, itl_s=0.1, attainment=0.99)
    best, probes = replica_capacity(_tiny_engine, lengths, slo, iterations=6)
    cap = best.rate_rps
    assert best.ok
    assert best.concurrency > 0
    assert probe(_tiny_engine, lengths, cap, slo).ok
    failing = [p.rate_rps for p in probes if not p.ok]
    assert failing
    assert min(failing) > cap
