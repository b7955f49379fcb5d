"""`kvpilot tune`: the search on known objectives, the knob plumbing, the command end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kvpilot.autoscaling.policy import load_policy_defaults
from kvpilot.cli import main as kvpilot_main
from kvpilot.sim.trace import Request, write_trace
from kvpilot.sim.tune import (
    Evaluation,
    better,
    current_knobs,
    nested,
    resolve,
    scaling_block,
    search,
)

SPACE = (("a", (1, 2, 3, 4)), ("b", (10, 20, 30)))


def _objective(knobs: dict[str, Any]) -> tuple[float, float]:
    """GPU-hours fall with a and rise with b; attainment rises with b only (separable)."""
    a, b = knobs["a"], knobs["b"]
    return 10.0 - a + b / 10, min(1.0, 0.9 + b / 300)


def test_search_finds_the_cheapest_feasible_point() -> None:
    calls: list[dict[str, Any]] = []

    def evaluate(knobs: Any) -> tuple[float, float]:
        calls.append(dict(knobs))
        return _objective(dict(knobs))

    result = search(evaluate, {"a": 1, "b": 10}, SPACE, 0.95, budget=50)
    # Exhaustive check of the same grid.
    grid = [{"a": a, "b": b} for a in (1, 2, 3, 4) for b in (10, 20, 30)]
    feasible = [(g, *_objective(g)) for g in grid if _objective(g)[1] >= 0.95]
    best = min(feasible, key=lambda x: x[1])
    assert result.feasible
    assert dict(result.best.knobs) == best[0]
    assert result.best.gpu_hours == pytest.approx(best[1])
    # Memoised: no candidate simulated twice.
    assert len({tuple(sorted(c.items())) for c in calls}) == len(calls)


def test_search_respects_the_budget() -> None:
    result = search(lambda k: _objective(dict(k)), {"a": 1, "b": 10}, SPACE, 0.95, budget=3)
    assert len(result.evaluations) == 3
    assert result.budget_spent


def test_infeasible_target_returns_the_best_attainment() -> None:
    result = search(lambda k: _objective(dict(k)), {"a": 1, "b": 10}, SPACE, 1.5, budget=50)
    assert not result.feasible
    assert result.best.attainment == max(e.attainment for e in result.evaluations)


@pytest.mark.parametrize(
    ("a", "b", "target", "expected"),
    [
        ((5.0, 0.99), (4.0, 0.98), 0.99, True),  # feasible beats infeasible
        ((5.0, 0.995), (4.0, 0.991), 0.99, False),  # both feasible: fewer GPU-hours
        ((5.0, 0.97), (4.0, 0.96), 0.99, True),  # both infeasible: higher attainment
    ],
)
def test_better(
    a: tuple[float, float], b: tuple[float, float], target: float, expected: bool
) -> None:
    assert better(Evaluation((), *a), Evaluation((), *b), target) is expected


def test_pareto_front() -> None:
    evs = [(3.0, 0.9), (4.0, 0.95), (5.0, 0.94), (6.0, 0.99), (2.0, 0.5)]
    result = search(
        lambda k: evs[k["i"]], {"i": 0}, (("i", tuple(range(len(evs)))),), 0.99, budget=10
    )
    front = [(e.gpu_hours, e.attainment) for e in result.pareto()]
    assert front == [(2.0, 0.5), (3.0, 0.9), (4.0, 0.95), (6.0, 0.99)]


def test_knob_plumbing() -> None:
    knobs = {"targets.kvCacheUtilization": 0.7, "targets.timeToFirstTokenSeconds": "0.5slo"}
    assert resolve(knobs, 4.0) == {
        "targets.kvCacheUtilization": 0.7,
        "targets.timeToFirstTokenSeconds": 2.0,
    }
    assert nested({"targets.x": 1, "y": 2, "z": None}) == {"targets": {"x": 1}, "y": 2}
    scaling = {"minReplicas": 1, "maxReplicas": 4, "targets": {"queueDepthPerReplica": 4}}
    assert current_knobs(
        scaling, (("targets.queueDepthPerReplica", ()), ("panicThreshold", ()))
    ) == {
        "targets.queueDepthPerReplica": 4,
        "panicThreshold": None,
    }
    block = scaling_block(scaling, {"targets.queueDepthPerReplica": None, "panicThreshold": 3.0})
    assert block == {"minReplicas": 1, "maxReplicas": 4, "panicThreshold": 3.0}


SERVICE = """
apiVersion: kvpilot.io/v1alpha1
kind: InferenceService
metadata: {name: qwen, namespace: sim}
spec:
  model:
    source: hf://Qwen/Qwen2.5-7B-Instruct-AWQ
    quantization: awq
    dtype: float16
    maxModelLen: 8192
    shape: {parametersBillions: 7.62, layers: 28, hiddenSize: 3584, attentionHeads: 28,
            kvHeads: 4, headDim: 128, intermediateSize: 18944, vocabSize: 152064}
  runtime: {maxNumSeqs: 64}
  parallelism: {tensor: 1}
  placement: {gpuTypes: [L4-24GB]}
  scaling: {minReplicas: 1, maxReplicas: 4}
"""


def test_tune_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svc = tmp_path / "svc.yaml"
    svc.write_text(SERVICE)
    trace = tmp_path / "trace.csv"
    # A quiet minute, then a burst that one replica cannot serve within the SLO.
    reqs = [Request(i * 4.0, 300, 30) for i in range(15)]
    reqs += [Request(60.0 + i * 0.25, 600, 30) for i in range(360)]
    write_trace(trace, reqs)
    out = tmp_path / "out"
    policy = tmp_path / "site.yaml"
    rc = kvpilot_main(
        [
            "tune",
            "--trace", str(trace),
            "--service", str(svc),
            "--target-attainment", "0.9",
            "--ttft-slo", "5",
            "--cold-start", "20",
            "--budget", "4",
            "--out", str(out),
            "--write-policy", str(policy),
        ]
    )  # fmt: skip
    assert rc in (0, 1)
    printed = capsys.readouterr().out
    doc = yaml.safe_load(printed)
    scaling = doc["spec"]["scaling"]
    assert scaling["minReplicas"] == 1 and scaling["maxReplicas"] == 4
    report = yaml.safe_load((out / "tune.json").read_text())
    assert len(report["evaluations"]) == 4
    assert report["feasible"] == (rc == 0)
    # The recommendation is the best evaluation under the objective.
    best = report["recommended"]
    for e in report["evaluations"]:
        assert not better(
            Evaluation((), e["gpu_hours"], e["attainment"]),
            Evaluation((), best["gpu_hours"], best["attainment"]),
            0.9,
        )
    # The site policy file is one the operator accepts.
    load_policy_defaults(policy.read_text(), source=str(policy))
    png = out / "tradeoff.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
