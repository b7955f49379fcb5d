"""`kvpilot run` refuses bad configuration files at start-up, naming the file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("waiting: 3\n", "bad.yaml: waiting must be a non-empty string"),
        ("kvcache: x\n", "bad.yaml: unknown key 'kvcache'"),
        (None, "No such file or directory"),
    ],
)
def test_bad_promql_templates_stop_the_operator(
    tmp_path: Path, content: str | None, message: str
) -> None:
    _refused(tmp_path, "--promql-templates", content, message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("tolerance: 2\n", "bad.yaml: tolerance: Input should be less than 1"),
        ("scaleDown: {period: 5}\n", "bad.yaml: scaleDown.period: Extra inputs"),
        (None, "No such file or directory"),
    ],
)
def test_bad_scaling_defaults_stop_the_operator(
    tmp_path: Path, content: str | None, message: str
) -> None:
    _refused(tmp_path, "--scaling-defaults", content, message)


def _refused(tmp_path: Path, flag: str, content: str | None, message: str) -> None:
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "kvpilot.cli", "run", flag, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"KUBECONFIG": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
