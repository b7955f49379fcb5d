"""kvpilot-launch: from the rendered container to the exec of vLLM or the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvpilot_runtime.launcher import (
    Container,
    LaunchPlan,
    container_from_spec,
    plan_launch,
    redact,
)

RENDERED = (
    "python3",
    "-m",
    "vllm.entrypoints.openai.api_server",
    "--model",
    "meta-llama/Llama-3.1-8B-Instruct",
    "--served-model-name",
    "llama-8b",
    "--tensor-parallel-size",
    "1",
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
)
ARGS = RENDERED[3:]
VLLM = ("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")
SIM = ("/py", "-m", "kvpilot_runtime.server")


@pytest.mark.parametrize(
    ("command", "kwargs", "expected"),
    [
        pytest.param(
            RENDERED, {"mode": "vllm", "python": VLLM[0]}, (*VLLM, *ARGS), id="vllm-as-is"
        ),
        pytest.param(
            RENDERED,
            {"mode": "sim", "python": "/py", "host": "127.0.0.1", "port": 18001},
            (*SIM, *ARGS[:-4], "--host", "127.0.0.1", "--port", "18001"),
            id="sim-override-host-port",
        ),
        pytest.param(
            ("vllm", "serve", "org/m", "--port=8000", "--max-num-seqs", "4"),
            {"mode": "vllm", "python": VLLM[0], "port": 9000},
            (*VLLM, "--model", "org/m", "--max-num-seqs", "4", "--port", "9000"),
            id="vllm-serve-form",
        ),
        pytest.param(
            ("python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "hf://org/m"),
            {"mode": "vllm", "python": VLLM[0]},
            (*VLLM, "--model", "org/m"),
            id="hf-scheme",
        ),
        pytest.param(
            ("--model", "m"),
            {"mode": "sim", "python": "/py", "sim_args": ["--profile", "cpu"]},
            (*SIM, "--model", "m", "--profile", "cpu"),
            id="bare-args-with-sim-args",
        ),
    ],
)
def test_plan(command: tuple[str, ...], kwargs: dict[str, Any], expected: tuple[str, ...]) -> None:
    plan = plan_launch(Container(command, {"HF_HOME": "/c"}), **kwargs)
    assert plan == LaunchPlan(expected, {"HF_HOME": "/c"})


def test_refuses_other_programs() -> None:
    with pytest.raises(ValueError, match="not a vLLM command line"):
        plan_launch(Container(("bash", "-c", "rm -rf /"), {}), mode="vllm", python="p")


def test_refuses_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        plan_launch(Container(RENDERED, {}), mode="docker", python="p")


def pod(containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": containers}}


VLLM_CONTAINER = {
    "name": "vllm",
    "command": list(RENDERED[:3]),
    "args": list(ARGS),
    "env": [
        {"name": "HF_HOME", "value": "/model-cache"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
}


@pytest.mark.parametrize(
    "doc",
    [
        pod([{"name": "sidecar", "command": ["sleep"]}, VLLM_CONTAINER]),
        {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [VLLM_CONTAINER]}}}},
        {"containers": [VLLM_CONTAINER]},
    ],
    ids=["pod", "deployment", "podspec"],
)
def test_container_from_spec(doc: dict[str, Any]) -> None:
    assert container_from_spec(doc) == Container(RENDERED, {"HF_HOME": "/model-cache"})


def test_container_missing() -> None:
    with pytest.raises(ValueError, match="no container named"):
        container_from_spec(pod([{"name": "a"}, {"name": "b"}]))


def test_cli_dry_run_from_pod_spec(tmp_path: Path) -> None:
    spec = tmp_path / "pod.json"
    spec.write_text(json.dumps(pod([VLLM_CONTAINER])))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvpilot_runtime.launcher",
            "--mode",
            "sim",
            "--pod-spec",
            str(spec),
            "--port",
            "18005",
            "--host",
            "127.0.0.1",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    plan = json.loads(out.stdout)
    assert plan["argv"][1:3] == ["-m", "kvpilot_runtime.server"]
    assert plan["argv"][-4:] == ["--host", "127.0.0.1", "--port", "18005"]
    assert plan["env"] == {"HF_HOME": "/model-cache"}


def test_cli_execs_the_simulator(tmp_path: Path) -> None:
    """The launcher replaces itself: the exec'd simulator prints its help and exits 0."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvpilot_runtime.launcher",
            "--mode",
            "sim",
            "--",
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "kvpilot-sim" in out.stdout


@pytest.mark.parametrize("python", ["/bin/sh", "bash", "/usr/bin/env"])
def test_refuses_a_shell_as_interpreter(python: str) -> None:
    with pytest.raises(ValueError, match="not the shell"):
        plan_launch(Container(RENDERED, {}), mode="vllm", python=python)


def test_refuses_nul_in_arguments() -> None:
    with pytest.raises(ValueError, match="NUL"):
        plan_launch(Container((*RENDERED, "--seed", "1\0"), {}), mode="vllm", python="p")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["p", "--api-key", "k", "--port", "1"], ["p", "--api-key", "***", "--port", "1"]),
        (["p", "--api_key=k", "--hf-token=t"], ["p", "--api_key=***", "--hf-token=***"]),
        (["p", "--model", "m"], ["p", "--model", "m"]),
    ],
)
def test_redact_hides_credential_values(argv: list[str], expected: list[str]) -> None:
    assert redact(argv) == expected


def test_shell_syntax_reaches_the_program_as_plain_text(tmp_path: Path) -> None:
    """Arguments go to exec as a list: shell syntax in one is never run."""
    marker = tmp_path / "ran"
    hostile = f"$(touch {marker});touch {marker}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvpilot_runtime.launcher",
            "--mode",
            "sim",
            "--",
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--served-model-name",
            hostile,
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert hostile in out.stderr  # logged verbatim, as one argument
    assert not marker.exists()
