"""Calibration fit, probe parsing and the fidelity error definition (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvpilot_runtime.calibrate import Measurement, fit, predict, read_csv, write_csv
from kvpilot_runtime.fidelity import (
    MAX_TOKENS,
    PROMPT_LEN,
    TARGET,
    compare,
    load_plan,
    medians,
    rel_error,
    speed_factor,
    spreads,
    steady_throughput,
)
from kvpilot_runtime.latency import Batch, PrefillChunk, load_profile
from kvpilot_runtime.models import TINY_LLAMA
from kvpilot_runtime.probe import parse_gauges, parse_sums, poisson_plan


def test_fit_recovers_a_known_profile() -> None:
    truth = load_profile("cpu")
    frontend = 0.007
    points = [Measurement("decode", c, p, 0.0) for c in (1, 2, 4) for p in (16, 512)] + [
        Measurement("prefill", 1, p, 0.0) for p in (32, 128, 256, 512, 900)
    ]
    data = [
        Measurement(m.kind, m.concurrency, m.prompt_len, predict(truth, TINY_LLAMA, m, frontend))
        for m in points
    ]
    start = truth.with_effective(step_overhead_s=0.02, matmul_flops_per_s=1e10)
    fitted, fitted_frontend, rms = fit(start, TINY_LLAMA, data)
    assert rms < 0.03
    for m in data:
        assert predict(fitted, TINY_LLAMA, m, fitted_frontend) == pytest.approx(m.seconds, rel=0.05)


def test_fit_recovers_costs_that_add_up() -> None:
    """Weight reads and matmuls that do not overlap (q = 1), fitted with the exponent free."""
    truth = load_profile("cpu").with_effective(
        overlap_exponent=1.0, weight_bandwidth_bytes_per_s=1e10, matmul_flops_per_s=2e10
    )
    points = [Measurement("decode", c, p, 0.0, 24) for c in (1, 4) for p in (16, 176)] + [
        Measurement(k, 1, p, 0.0) for p in (32, 96, 192) for k in ("prefill", "ttft")
    ]
    data = [
        Measurement(m.kind, m.concurrency, m.prompt_len, predict(truth, TINY_LLAMA, m, 0.01), 24)
        for m in points
    ]
    fitted, frontend, rms = fit(load_profile("cpu"), TINY_LLAMA, data, fit_overlap=True)
    assert rms < 0.03
    assert fitted.effective.overlap_exponent is not None
    for m in data:
        assert predict(fitted, TINY_LLAMA, m, frontend) == pytest.approx(m.seconds, rel=0.05)


@pytest.mark.parametrize(
    ("sim", "real", "floor", "expected"),
    [
        (1.1, 1.0, 0.001, 0.1),
        (0.3, 0.0, 1.0, 0.3),  # a queue under the floor is compared in absolute terms
        (0.06, 0.05, 0.05, 0.2),
    ],
)
def test_rel_error(sim: float, real: float, floor: float, expected: float) -> None:
    assert rel_error(sim, real, floor) == pytest.approx(expected)


def test_compare_reports_goals() -> None:
    row = {
        "median_ttft_s": 0.1,
        "median_itl_s": 0.01,
        "mean_queue_depth": 2.0,
        "mean_kv_usage": 0.5,
    }
    worse = {**row, "median_ttft_s": 0.125}
    report = compare({"a": row}, {"a": worse})
    assert report["ratios"]["a"]["median_ttft_s"] == 1.25
    assert report["errors"] == {
        "a": {
            "median_ttft_s": 0.25,
            "median_itl_s": 0.0,
            "mean_queue_depth": 0.0,
            "mean_kv_usage": 0.0,
        }
    }
    assert report["goals"][-1] == {
        "name": "fidelity_max_rel_error",
        "value": 0.25,
        "target": TARGET,
        "better": "lower",
        "unit": "ratio",
    }


def test_the_goal_is_ten_percent() -> None:
    assert TARGET == 0.10


def test_compare_takes_the_metrics_each_regime_has() -> None:
    real = {"capacity": {"saturation_rps": 2.0}}
    report = compare(real, {"capacity": {"saturation_rps": 1.9}})
    assert report["errors"] == {"capacity": {"saturation_rps": 0.05}}
    assert [g["name"] for g in report["goals"]] == [
        "fidelity_capacity_saturation_rps_rel_error",
        "fidelity_max_rel_error",
    ]


def test_medians_over_repeats() -> None:
    runs = {"light": [{"x": 3.0}, {"x": 1.0}, {"x": 100.0}]}
    assert medians(runs, ("x",)) == {"light": {"x": 3.0}}


@pytest.mark.parametrize(
    ("finishes", "concurrency", "expected"),
    [
        # 4 completions after the 2nd, in the 2 s from t=1 to t=3.
        ([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], 2, 2.0),
        # Order does not matter; the ramp-up before the 1st completion is left out.
        ([9.0, 5.0, 7.0], 1, 0.5),
    ],
)
def test_steady_throughput(finishes: list[float], concurrency: int, expected: float) -> None:
    assert steady_throughput(finishes, concurrency) == pytest.approx(expected)


def test_steady_throughput_needs_a_window() -> None:
    with pytest.raises(ValueError, match="more than 4"):
        steady_throughput([1.0, 2.0, 3.0, 4.0], 4)


def test_load_plan_is_the_same_regime_at_any_rate() -> None:
    """A slow machine gets the same arrivals as a fast one, stretched in time."""
    fast, slow = load_plan(10.0, 24, seed=3), load_plan(0.5, 24, seed=3)
    assert len(fast) == len(slow) == 24
    for f, s in zip(fast, slow, strict=True):
        assert s.at == pytest.approx(f.at * 20)
        assert s.prompt_token_ids == f.prompt_token_ids
        assert s.max_tokens == f.max_tokens == MAX_TOKENS
        assert PROMPT_LEN[0] <= len(f.prompt_token_ids) <= PROMPT_LEN[1]
    assert [p.at for p in fast] == sorted(p.at for p in fast)
    assert load_plan(10.0, 24, seed=4) != fast


def test_measurement_context_follows_its_decode_tokens(tmp_path: Path) -> None:
    m = Measurement("decode", 2, 100, 0.05, decode_tokens=24)
    assert m.batch() == Batch(decode_contexts=(112, 112))
    path = tmp_path / "m.csv"
    write_csv(path, [m, Measurement("prefill", 1, 32, 0.01)])
    assert read_csv(path) == [m, Measurement("prefill", 1, 32, 0.01)]


def test_mixed_measurement_is_a_prefill_beside_decodes(tmp_path: Path) -> None:
    m = Measurement("mixed", 3, 192, 1.9, 0, decode_context=20)
    assert m.batch() == Batch(decode_contexts=(20, 20, 20), prefill_chunks=(PrefillChunk(192),))
    path = tmp_path / "m.csv"
    write_csv(path, [m])
    assert read_csv(path) == [m]


def test_fit_with_mixed_steps_recovers_a_known_profile() -> None:
    """Mixed steps constrain the fit like the pure ones: a model that makes them is recovered."""
    truth = load_profile("cpu").with_effective(overlap_exponent=4.0)
    points = [
        *(Measurement("decode", c, p, 0.0, 24) for c in (1, 4) for p in (16, 176)),
        *(Measurement(k, 1, p, 0.0) for p in (32, 96, 192) for k in ("prefill", "ttft")),
        *(Measurement("mixed", c, p, 0.0, 0, decode_context=20) for c, p in ((1, 192), (3, 96))),
    ]
    data = [
        Measurement(
            m.kind,
            m.concurrency,
            m.prompt_len,
            predict(truth, TINY_LLAMA, m, 0.01),
            m.decode_tokens,
            m.decode_context,
        )
        for m in points
    ]
    fitted, frontend, rms = fit(load_profile("cpu"), TINY_LLAMA, data, fit_overlap=True)
    assert rms < 0.03
    for m in data:
        assert predict(fitted, TINY_LLAMA, m, frontend) == pytest.approx(m.seconds, rel=0.05)


@pytest.mark.parametrize(
    ("reference", "before", "after", "expected"),
    [
        (1.0, 1.0, 1.0, 1.0),  # as fast as at the calibration
        (1.0, 2.0, 2.0, 2.0),  # twice as slow throughout
        (0.5, 0.5, 2.0, 2.0),  # slowed down during the load: the geometric mean
        (2.0, 1.0, 1.0, 0.5),  # faster than at the calibration
    ],
)
def test_speed_factor(reference: float, before: float, after: float, expected: float) -> None:
    assert speed_factor(reference, before, after) == pytest.approx(expected)


EXPOSITION = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 4.5
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 3.0
"""


def test_parse_exposition() -> None:
    assert parse_gauges(EXPOSITION, ["vllm:num_requests_waiting"]) == {
        "vllm:num_requests_waiting": 3.0
    }
    assert parse_sums(EXPOSITION, ["vllm:e2e_request_latency_seconds"]) == {
        "vllm:e2e_request_latency_seconds": (4.5, 3.0)
    }


def test_poisson_plan_is_deterministic_and_bounded() -> None:
    a = poisson_plan(10, 5, prompt_len=(4, 8), max_tokens=3, vocab=50, seed=1)
    assert a == poisson_plan(10, 5, prompt_len=(4, 8), max_tokens=3, vocab=50, seed=1)
    assert all(0 < p.at < 5 and 4 <= len(p.prompt_token_ids) <= 8 for p in a)
    assert 20 < len(a) < 90


@pytest.mark.parametrize(
    ("outcomes", "expected", "tokens_asked"),
    [
        ([0.9], 0.9, [16]),
        # Decoders finished before the prompt (a busy machine): longer decoders.
        ([None, 0.8], 0.8, [16, 64]),
        ([None, None, 0.7], 0.7, [16, 64, 256]),
    ],
)
def test_mixed_step_is_remeasured_with_longer_decoders(
    monkeypatch: pytest.MonkeyPatch,
    outcomes: list[float | None],
    expected: float,
    tokens_asked: list[int],
) -> None:
    import asyncio

    from kvpilot_runtime import calibrate

    asked: list[int] = []

    async def fake_round(*args: object, decode_tokens: int, **kwargs: object) -> float | None:
        asked.append(decode_tokens)
        return outcomes[len(asked) - 1]

    monkeypatch.setattr(calibrate, "_mixed_round", fake_round)
    t = asyncio.run(calibrate._mixed_time("http://x", "tiny", 3, 16, 96, seed=1))
    assert t == expected and asked == tokens_asked


def test_mixed_step_gives_up_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from kvpilot_runtime import calibrate

    async def always_late(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(calibrate, "_mixed_round", always_late)
    with pytest.raises(RuntimeError, match="3 decoders of up to 256 tokens finished before a 96"):
        asyncio.run(calibrate._mixed_time("http://x", "tiny", 3, 16, 96, seed=1))


def test_real_repeat_spread_is_range_over_median_with_the_floor() -> None:
    runs = {
        "moderate": [
            {"median_ttft_s": 0.30, "median_itl_s": 0.068, "mean_queue_depth": 0.0,
             "mean_kv_usage": 0.12},
            {"median_ttft_s": 0.20, "median_itl_s": 0.043, "mean_queue_depth": 0.3,
             "mean_kv_usage": 0.08},
            {"median_ttft_s": 0.25, "median_itl_s": 0.056, "mean_queue_depth": 0.1,
             "mean_kv_usage": 0.13},
        ]
    }  # fmt: skip
    out = spreads(runs)["moderate"]
    assert out["median_ttft_s"] == pytest.approx(0.10 / 0.25)
    assert out["median_itl_s"] == pytest.approx(0.025 / 0.056, abs=1e-4)
    assert out["mean_queue_depth"] == pytest.approx(0.3)  # floor of 1 request
    assert out["mean_kv_usage"] == pytest.approx(0.05 / 0.12, abs=1e-4)
