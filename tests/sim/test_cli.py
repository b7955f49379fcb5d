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
