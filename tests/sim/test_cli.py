"""`kvpilot simulate` end to end on a small generic trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kvpilot.cli import main
from kvpilot.sim.trace import Request, write_trace

SERVICE = {
    "apiVersion": "kvpilot.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "llama"},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
        "placement": {"gpuTypes": ["H100-80GB"]},
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
    },
}


def test_simulate_writes_result_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.csv"
    write_trace(trace, [Request(i * 0.5, 200, 20) for i in range(40)])
    svc = tmp_path / "svc.yaml"
    svc.write_text(yaml.safe_dump(SERVICE))
    policy = tmp_path / "site.yaml"
    policy.write_text("targets: {queueDepthPerReplica: 3}\n")
    out = tmp_path / "out"
    rc = main(
        [
            "simulate", "--trace", str(trace), "--service", str(svc), "--policy", str(policy),
            "--rate-scale", "2", "--report", str(out), "--no-html", "--no-progress",
            "--ttft-slo", "1.5",
        ]
    )  # fmt: skip
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["requests"] == result["finished"] == 40
    assert result["slo"] == {"ttft_s": 1.5, "itl_s": 0.1}
    assert result["attainment"]["ttft"] == 1.0  # a light load on one H100
    assert result["gpu"]["type"] == "H100-80GB"
    assert result["duration_s"] >= 19.5 / 2  # the trace's 19.5 s at twice the rate
    assert result["gpu_hours"] > 0
    assert "TTFT attainment 100.00 %" in capsys.readouterr().out
    assert not (out / "report.html").exists()


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--policy", "minReplicas: 2\n", "belong to each service"),
        ("--trace", "a,b\n1,2\n", "not an Azure trace"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, text: str, message: str
) -> None:
    trace = tmp_path / "trace.csv"
    write_trace(trace, [Request(0.0, 10, 2)])
    svc = tmp_path / "svc.yaml"
    svc.write_text(yaml.safe_dump(SERVICE))
    bad = tmp_path / "bad"
    bad.write_text(text)
    args = {"--trace": str(trace), "--service": str(svc)}
    args[flag] = str(bad)
    argv = ["simulate", *[x for kv in args.items() for x in kv], "--report", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        # A zero period never advances simulated time: refused, not a hang.
        ("simulate", ["--scrape-interval", "0"], "--scrape-interval: must be positive"),
        ("simulate", ["--autoscale-interval", "0"], "--autoscale-interval: must be positive"),
        ("simulate", ["--metrics-step", "0"], "--metrics-step: must be positive"),
        ("simulate", ["--ttft-slo", "0"], "--ttft-slo: must be positive"),
        ("simulate", ["--itl-slo", "-0.1"], "--itl-slo: must be positive"),
        ("simulate", ["--cold-start", "-5"], "--cold-start: must not be negative"),
        ("simulate", ["--query-delay", "-1"], "--query-delay: must not be negative"),
        ("simulate", ["--drain-timeout", "-1"], "--drain-timeout: must not be negative"),
        ("simulate", ["--start", "-5"], "--start: must not be negative"),
        ("simulate", ["--duration", "0"], "--duration: must be positive"),
        ("simulate", ["--rate-scale", "abc"], "--rate-scale: not a number"),
        ("tune", ["--target-attainment", "1.5"], "--target-attainment: must be a fraction"),
        ("tune", ["--target-attainment", "0"], "--target-attainment: must be a fraction"),
        ("tune", ["--ttft-slo", "-2"], "--ttft-slo: must be positive"),
        ("tune", ["--cold-start", "-1"], "--cold-start: must not be negative"),
    ],
)
def test_bad_numbers_are_refused_before_any_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    argv: list[str],
    message: str,
) -> None:
    trace = tmp_path / "trace.csv"
    write_trace(trace, [Request(0.0, 10, 2)])
    svc = tmp_path / "svc.yaml"
    svc.write_text(yaml.safe_dump(SERVICE))
    out = ["--report", str(tmp_path / "o")] if command == "simulate" else ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main([command, "--trace", str(trace), "--service", str(svc), *out, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_initial_replicas_below_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    write_trace(trace, [Request(0.0, 10, 2)])
    svc = tmp_path / "svc.yaml"
    svc.write_text(yaml.safe_dump(SERVICE))
    argv = ["simulate", "--trace", str(trace), "--service", str(svc)]
    rc = main([*argv, "--report", str(tmp_path / "o"), "--initial-replicas", "0", "--no-progress"])
    assert rc == 2
    assert "initial replicas must be at least 1, got 0" in capsys.readouterr().err
