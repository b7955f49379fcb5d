"""Run the operator as a user would (``kvpilot run``) against the dev cluster, for tests.

``service_account_kubeconfig`` gives a kubeconfig that authenticates as a ServiceAccount
(a token from ``kubectl create token``), so the operator can run from the checkout with
exactly the identity and permissions the Helm chart gives it in a cluster.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import yaml

from e2e.helpers import Kube, wait_for

ROOT = Path(__file__).resolve().parents[1]


def install_crds(kube: Kube) -> None:
    kube("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube("wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.kvpilot.io")


class OperatorProcess:
    """``kvpilot run`` as a user runs it, in its own process group; restartable.

    ``kubeconfig`` picks the identity it runs as (the cluster admin's, or a
    ServiceAccount's from ``service_account_kubeconfig``); ``namespaces`` makes it serve
    only those; ``env`` adds to its environment (``POD_NAMESPACE`` as in a pod).
    """

    #: Every started operator of this test process, so a test can pause the others.
    running: ClassVar[list[OperatorProcess]] = []

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
        health_port: int = 0,
        namespaces: Sequence[str] = (),
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        ready_marker: str = "Initial authentication has finished",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_file = log_file
        self.env = dict(env or {})
        self.argv = [
            sys.executable, "-m", "kvpilot.cli", "run",
            "--metrics-port", str(metrics_port), "--health-port", str(health_port),
            "--repair-interval", str(repair_interval),
            "--autoscale-interval", str(autoscale_interval),
            "--metrics-step", str(metrics_step),
            "--scheduler-name", "kvpilot-binpack",
        ]  # fmt: skip
        for ns in namespaces:
            self.argv += ["--namespace", ns]
        if prometheus_url:
            self.argv += ["--prometheus-url", prometheus_url]
        self.argv += list(extra_args)
        self.ready_marker = ready_marker
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextmanager
    def others_paused(cls) -> Iterator[None]:
        """Stop every running operator for the block, then start them again: a test of
        one operator's identity must not have another one act on its objects."""
        paused = [op for op in cls.running if op.proc is not None]
        for op in paused:
            op.stop()
        try:
            yield
        finally:
            for op in paused:
                op.start()

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        with self.log_file.open("ab") as fh:
            proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.proc = proc
        if self not in OperatorProcess.running:
            OperatorProcess.running.append(self)

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

    def forget(self) -> None:
        """Stop, and leave the list of running operators."""
        self.stop()
        if self in OperatorProcess.running:
            OperatorProcess.running.remove(self)

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
        op.forget()


def service_account_kubeconfig(
    kube: Kube, namespace: str, name: str, out: Path, duration: str = "2h"
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``namespace/name``.

    The token is what a pod of that ServiceAccount gets (``kubectl create token``, a
    bound token of the TokenRequest API); the server and its CA come from ``kube``'s
    kubeconfig. Nothing else of the admin's credentials is copied.
    """
    token = kube("create", "token", name, "-n", namespace, f"--duration={duration}").strip()
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    server = dict(cluster["cluster"])
    if "certificate-authority" in server:
        ca = Path(server.pop("certificate-authority")).read_bytes()
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "cluster", "user": user}}],
        "current-context": user,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config, indent=1))
    out.chmod(0o600)
    return out


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
