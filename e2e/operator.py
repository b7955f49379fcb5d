"""Run the operator as a user would (``kvpilot run``) against the dev cluster, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from e2e.helpers import Kube, wait_for

ROOT = Path(__file__).resolve().parents[1]


def install_crds(kube: Kube) -> None:
    kube("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube("wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.kvpilot.io")


@contextmanager
def running_operator(
    kubeconfig: Path,
    log_file: Path,
    *,
    repair_interval: float = 5.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``kvpilot run`` in its own process group; stop it on exit."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KVPILOT_REPAIR_INTERVAL": str(repair_interval),
        **(extra_env or {}),
    }
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvpilot.cli",
                "run",
                "--metrics-port",
                "0",
                "--health-port",
                "0",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: log_file.read_text(errors="replace"),
            lambda text: "Initial authentication has finished" in text or proc.poll() is not None,
            timeout=60,
            what="the operator to start",
        )
        if proc.poll() is not None:
            raise AssertionError(f"operator exited with {proc.returncode}; see {log_file}")
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
