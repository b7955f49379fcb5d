"""Calibration fit, probe parsing and the fidelity error definition (pure parts)."""

from __future__ import annotations

import pytest

from kvpilot_runtime.calibrate import Measurement, fit, predict
from kvpilot_runtime.fidelity import compare, rel_error
from kvpilot_runtime.latency import load_profile
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
    report = compare({"a": row}, {"a": worse}, rates=(("a", 1.0),))
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
        "target": 0.2,
        "better": "lower",
        "unit": "ratio",
    }


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
