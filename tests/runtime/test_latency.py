"""Step-time model and profile loading."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvpilot_runtime.latency import (
    Batch,
    Effective,
    ModelShape,
    PrefillChunk,
    Profile,
    StepTerms,
    available_profiles,
    load_profile,
    profile_from_dict,
    step_terms,
    step_time,
)

EFF = Effective(
    step_overhead_s=0.001,
    weight_bandwidth_bytes_per_s=1e12,
    kv_bandwidth_bytes_per_s=1e12,
    matmul_flops_per_s=1e14,
    attention_flops_per_s=1e14,
    allreduce_latency_s=1e-5,
    allreduce_bandwidth_bytes_per_s=1e11,
)
PROFILE = Profile(name="test", gpu="TEST", memory_gib=80, effective=EFF)
# 1e9 parameters at 2 bytes: 2 GB of weights, 2 ms per step at 1 TB/s.
SHAPE = ModelShape(
    parameters=1e9, layers=10, hidden_size=1000, attention_heads=10, kv_heads=2, head_dim=100
)
KV_TOKEN = 2 * 10 * 2 * 100 * 2  # bytes per token, all layers


@pytest.mark.parametrize(
    ("batch", "tp", "expected"),
    [
        (Batch(), 1, StepTerms(0.001, 0.002, 0.0, 0.0, 0.0)),
        # One decode at context 1000: weights bound; KV read of 1000 tokens.
        (
            Batch(decode_contexts=(1000,)),
            1,
            StepTerms(0.001, 0.002, 1000 * KV_TOKEN / 1e12, 0.0, 0.0),
        ),
        # 1000 tokens of prefill: 2e12 FLOPs / 1e14 = 20 ms beats the 2 ms weight read.
        (
            Batch(prefill_chunks=(PrefillChunk(1000, 0),)),
            1,
            StepTerms(
                0.001,
                0.02,
                1000 * KV_TOKEN / 1e12,
                4 * 10 * 10 * 100 * (1000 * 1001 / 2) / 1e14,
                0.0,
            ),
        ),
        # TP 2 halves weights and KV heads and adds two all-reduces per layer.
        (
            Batch(decode_contexts=(1000,)),
            2,
            StepTerms(
                0.001,
                0.001,
                1000 * KV_TOKEN / 2 / 1e12,
                0.0,
                2 * 10 * (1e-5 + 2 * 1 / 2 * 1 * 1000 * 2 / 1e11),
            ),
        ),
    ],
)
def test_step_terms(batch: Batch, tp: int, expected: StepTerms) -> None:
    got = step_terms(PROFILE, SHAPE, tp, batch)
    for name in ("overhead", "weights_or_matmul", "kv_read", "prefill_attention", "allreduce"):
        assert math.isclose(
            getattr(got, name), getattr(expected, name), rel_tol=1e-9, abs_tol=1e-15
        ), name


def test_empty_batch_costs_nothing() -> None:
    assert step_time(PROFILE, SHAPE, 1, Batch()) == 0.0


def test_step_time_grows_with_batch_past_the_ridge() -> None:
    times = [
        step_time(PROFILE, SHAPE, 1, Batch(decode_contexts=(10,) * n)) for n in (1, 10, 100, 1000)
    ]
    assert times[0] == pytest.approx(times[1], rel=0.01)  # weight-bound
    assert times[3] > 5 * times[1]  # compute-bound


def test_shipped_profiles_load() -> None:
    names = available_profiles()
    assert {"h100-80gb", "a100-80gb", "l4-24gb", "cpu"} <= set(names)
    for name in names:
        prof = load_profile(name)
        assert prof.sources, name
        assert prof.memory_gib > 0


def test_cpu_profile_is_calibrated() -> None:
    cal = load_profile("cpu").calibration
    assert cal is not None and cal.csv.endswith(".csv")


BASE_DOC = {
    "gpu": "X",
    "memory_gib": 10,
    "effective": {
        "step_overhead_s": 0.001,
        "weight_bandwidth_bytes_per_s": "2.6e12",  # PyYAML leaves unsigned exponents as strings
        "kv_bandwidth_bytes_per_s": 1e12,
        "matmul_flops_per_s": 1e14,
        "attention_flops_per_s": 1e14,
        "allreduce_latency_s": 1e-5,
        "allreduce_bandwidth_bytes_per_s": 1e11,
    },
    "sources": ["a datasheet"],
}


def test_profile_accepts_calibration_block_and_extras() -> None:
    doc = {
        **BASE_DOC,
        "calibration": {
            "date": "2026-01-01",
            "device": "H100",
            "driver": "550",
            "torch": "2.5",
            "method": "fit",
            "csv": "data/h100.csv",
            "points": 42,
        },
        "block_size": 16,
    }
    prof = profile_from_dict("x", doc)
    assert prof.effective.weight_bandwidth_bytes_per_s == 2.6e12
    assert prof.calibration is not None
    assert prof.calibration.device == "H100"
    assert prof.calibration.extra == {"points": 42}
    assert prof.extra == {"block_size": 16}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"effective": {"step_overhead_s": 0.001}}, "effective is missing"),
        ({"memory_gib": "lots"}, "must be a number"),
        ({"gpu": None, "memory_gib": -1}, "must not be negative"),
    ],
)
def test_profile_errors(change: dict[str, object], message: str) -> None:
    doc = {**BASE_DOC, **change}
    with pytest.raises(ValueError, match=message):
        profile_from_dict("x", doc)


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown latency profile"):
        load_profile("tpu-v9")


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (None, 0.002),  # max(2 ms weights, 1 ms matmul)
        (1.0, 0.003),  # fully serialized
        (2.0, math.sqrt(0.002**2 + 0.001**2)),
        (5000.0, 0.002),  # a fitted exponent may grow large: no overflow, the maximum
    ],
)
def test_overlap_exponent(q: float | None, expected: float) -> None:
    # 50 tokens: 2 x 1e9 x 50 = 1e11 FLOPs at 1e14 FLOP/s = 1 ms of matmul.
    prof = Profile("q", "Q", 80, dataclasses.replace(EFF, overlap_exponent=q))
    terms = step_terms(prof, SHAPE, 1, Batch(prefill_chunks=(PrefillChunk(50, 0),)))
    assert terms.weights_or_matmul == pytest.approx(expected)


def test_overlap_exponent_is_read_from_profiles() -> None:
    doc = {**BASE_DOC, "effective": {**BASE_DOC["effective"], "overlap_exponent": 1.75}}  # type: ignore[dict-item]
    assert profile_from_dict("x", doc).effective.overlap_exponent == 1.75


@pytest.mark.parametrize(
    ("batch", "layer", "sequence", "expected"),
    [
        # Absent keys add nothing: profiles without them behave as before.
        (Batch(decode_contexts=(10,) * 4), 0.0, 0.0, (0.0, 0.0)),
        # 10 layers x 50 us; 4 decoding sequences x 5 us.
        (Batch(decode_contexts=(10,) * 4), 50e-6, 5e-6, (500e-6, 20e-6)),
        # A prefill chunk is one sequence, however many tokens it carries.
        (
            Batch(decode_contexts=(10, 20), prefill_chunks=(PrefillChunk(500, 100),)),
            50e-6,
            5e-6,
            (500e-6, 15e-6),
        ),
    ],
)
def test_layer_and_sequence_overheads(
    batch: Batch, layer: float, sequence: float, expected: tuple[float, float]
) -> None:
    eff = dataclasses.replace(EFF, layer_overhead_s=layer, sequence_overhead_s=sequence)
    prof = Profile("o", "O", 80, eff)
    got = step_terms(prof, SHAPE, 1, batch)
    assert (got.layer_overhead, got.sequence_overhead) == pytest.approx(expected)
    base = step_terms(PROFILE, SHAPE, 1, batch)
    assert got.total == pytest.approx(base.total + sum(expected))


def test_overheads_are_read_from_profiles() -> None:
    doc = {
        **BASE_DOC,
        "effective": {
            **BASE_DOC["effective"],  # type: ignore[dict-item]
            "layer_overhead_s": "7e-05",
            "sequence_overhead_s": 5e-06,
        },
    }
    eff = profile_from_dict("x", doc).effective
    assert (eff.layer_overhead_s, eff.sequence_overhead_s) == (7e-05, 5e-06)
    plain = profile_from_dict("x", BASE_DOC).effective
    assert (plain.overlap_exponent, plain.layer_overhead_s, plain.sequence_overhead_s) == (
        None,
        0.0,
        0.0,
    )


def test_negative_overhead_is_refused() -> None:
    doc = {**BASE_DOC, "effective": {**BASE_DOC["effective"], "layer_overhead_s": -1e-6}}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="must not be negative"):
        profile_from_dict("x", doc)
