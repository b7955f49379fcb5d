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


def test_compare_adds_every_baseline_and_the_oracle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    reqs = [Request(i * 2.0, 400, 40) for i in range(60)]
    reqs += [Request(120 + i * 0.2, 400, 40) for i in range(900)]
    reqs += [Request(300 + i * 2.0, 400, 40) for i in range(60)]
    write_trace(trace, reqs)
    svc = tmp_path / "svc.yaml"
    svc.write_text(yaml.safe_dump(SERVICE))
    out = tmp_path / "out"
    argv = ["simulate", "--trace", str(trace), "--service", str(svc), "--report", str(out)]
    rc = main([*argv, "--compare", "--ttft-slo", "5", "--cold-start", "30", "--no-progress"])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    cmp_ = result["comparison"]
    names = [r["policy"] for r in cmp_["rows"]]
    assert names == [
        "kvpilot", "static-peak", "hpa-concurrency", "keda-waiting", "kubeai-active",
        "aibrix-kpa", "dynamo-throughput", "oracle-schedule",
    ]  # fmt: skip
    assert cmp_["slo"] == {"ttft_s": 5.0, "itl_s": None, "attainment": 0.99}
    oracle = cmp_["oracle"]
    assert 0 < oracle["gpu_hours"] <= min(r["gpu_hours"] for r in cmp_["rows"]) * 1.0001
    assert 1 <= oracle["peak_replicas"] <= 3
    # The report's headline figures are kvpilot's run of the comparison.
    ours = cmp_["rows"][0]
    assert ours["gpu_hours"] == pytest.approx(result["gpu_hours"], rel=1e-3)
    assert ours["ttft_attainment"] == pytest.approx(result["attainment"]["ttft"], abs=1e-4)
    assert ours["scale_events"] == result["scale_event_count"]
    assert result["simulation"]["initial_replicas"] >= 1
    for row in cmp_["rows"]:
        assert row["vs_oracle"] == pytest.approx(row["gpu_hours"] / oracle["gpu_hours"], rel=1e-3)
    printed = capsys.readouterr().out
    assert "policy" in printed and "vs oracle" in printed
    assert all(name in printed for name in names) and "(bound)" in printed
    page = (out / "report.html").read_text()
    assert "Policies compared" in page and page.count("data:image/png;base64,") == 6
    assert "Replicas by policy" in page and "GPU-hours against attainment" in page


def test_progress_writes_periodic_lines_off_a_terminal() -> None:
    import io

    from kvpilot.sim.cli import policy_progress

    stream = io.StringIO()
    show = policy_progress(stream)
    for policy in ("kvpilot", "static-peak"):
        for k in range(1, 201):
            show(policy, k / 200)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 2 * 11  # its start, then a line per tenth of each policy's run
    assert lines[10].startswith("kvpilot") and "100.0%" in lines[10]
    assert lines[-1].startswith("static-peak") and "100.0%" in lines[-1]


@pytest.mark.parametrize(("uncapped", "warned"), [(3, False), (5, True)])
def test_comparison_says_when_max_replicas_caps_every_policy(uncapped: int, warned: bool) -> None:
    from kvpilot.sim.baselines import Comparison
    from kvpilot.sim.oracle import CapacityProbe, OraclePlan, Slo
    from kvpilot.sim.report import _comparison_html

    plan = OraclePlan(15.0, (1, 3), (1, 3), 1, 60.0, 30.0)
    cmp_ = Comparison(
        rows=(),
        oracle=plan,
        oracle_gpu_hours=0.025,
        capacity=CapacityProbe(1.0, 1.0, 1.0, True),
        slo=Slo(ttft_s=5.0),
        uncapped_peak=uncapped,
        max_replicas=3,
    )
    warning = cmp_.capped_warning()
    page = _comparison_html(cmp_.as_dict())
    if warned:
        assert warning is not None
        assert "needs 5 replicas" in warning and "maxReplicas is 3" in warning
        assert "needs 5 replicas; maxReplicas caps every policy" in page
    else:
        assert warning is None and "caps every policy" not in page
