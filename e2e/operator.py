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
from typing import Any

from e2e.helpers import Kube, wait_for

ROOT = Path(__file__).resolve().parents[1]


def install_crds(kube: Kube) -> None:
    kube("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube("wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.kvpilot.io")


class OperatorProcess:
    """``kvpilot run`` as a user runs it, in its own process group; restartable."""

    def __init__(
        self,
        kubeconfig: Path,
        log_file: Path,
        *,
        prometheus_url: str | None = None,
        repair_interval: float = 5.0,
        autoscale_interval: float = 2.0,
        metrics_step: float = 2.0,
        metrics_port: int = 0,
        extra_args: tuple[str, ...] = (),
        ready_marker: str = "Initial authentication has finished",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_file = log_file
        self.argv = [
            sys.executable, "-m", "kvpilot.cli", "run",
            "--metrics-port", str(metrics_port), "--health-port", "0",
            "--repair-interval", str(repair_interval),
            "--autoscale-interval", str(autoscale_interval),
            "--metrics-step", str(metrics_step),
            "--scheduler-name", "kvpilot-binpack",
        ]  # fmt: skip
        if prometheus_url:
            self.argv += ["--prometheus-url", prometheus_url]
        self.argv += list(extra_args)
        self.ready_marker = ready_marker
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_file.open("ab") as fh:
            proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.proc = proc

        def new_log() -> str:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")

        wait_for(
            new_log,
            lambda text: self.ready_marker in text or proc.poll() is not None,
            timeout=60,
            what="the operator to start",
        )
        if proc.poll() is not None:
            raise AssertionError(f"operator exited with {proc.returncode}; see {self.log_file}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a node failure or the OOM killer would: no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def running_operator(kubeconfig: Path, log_file: Path, **kwargs: Any) -> Iterator[OperatorProcess]:
    """Start the operator; stop it on exit."""
    op = OperatorProcess(kubeconfig, log_file, **kwargs)
    op.start()
    try:
        yield op
    finally:
        op.stop()


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
