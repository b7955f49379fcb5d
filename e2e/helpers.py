"""Test helpers for the local control plane: kubectl, waiting on conditions."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: How long to wait for what the garbage collector removes after an InferenceService is
#: deleted. It walks the owner chain (InferenceService -> Deployment -> ReplicaSet -> Pod)
#: one step at a time, behind whatever namespaces earlier tests left it to delete; on a
#: shared two-core machine that has taken over a minute.
GC_TIMEOUT = 180.0


class WaitTimeoutError(AssertionError):
    """A condition did not hold in time; the message shows what was last observed."""


def wait_for(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """Poll ``observe()`` until ``done(value)``; fail with the last observation.

    Never a fixed sleep: returns as soon as the condition holds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = observe()
            last_exc = None
            if done(last):
                return last
        except Exception as exc:  # observation may fail transiently (object not yet there)
            last_exc = exc
        if time.monotonic() >= deadline:
            shown = f"error {last_exc!r}" if last_exc is not None else _show(last)
            raise WaitTimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}; last observed: {shown}"
            )
        time.sleep(interval)


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, indent=1, default=str)
    except TypeError:
        text = repr(value)
    return text if len(text) < 4000 else text[:4000] + "…"


@dataclass(frozen=True)
class Kube:
    """kubectl bound to the dev cluster's kubeconfig."""

    kubeconfig: Path
    bin_dir: Path

    def run(
        self, *args: str, input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def __call__(self, *args: str, input_text: str | None = None) -> str:
        return self.run(*args, input_text=input_text).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.run(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {kind}/{name}: {proc.stderr.strip()}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def apply(
        self, manifest: str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, input_text=manifest, check=False)


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    """The condition of type ``ctype`` in ``obj.status.conditions``, if any."""
    if not obj:
        return None
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def condition_true(obj: dict[str, Any] | None, ctype: str) -> bool:
    c = condition(obj, ctype)
    return c is not None and c.get("status") == "True"


def service_deployment(kube: Kube, namespace: str, service: str) -> dict[str, Any] | None:
    """The Deployment of an InferenceService's current revision (one per live revision,
    named `<service>-<revision>`); the newest when a rollout leaves two."""
    items = kube.json(
        "get", "deployments", "-n", namespace, "-l", f"kvpilot.io/inference-service={service}"
    )["items"]
    if not items:
        return None
    newest: dict[str, Any] = max(items, key=lambda d: d["metadata"]["creationTimestamp"])
    return newest


def steady_load(
    scrape_targets: Path, namespace: str, service: str, *, seed: int, stop: Callable[[], bool]
) -> tuple[threading.Thread, dict[str, Any]]:
    """A thread sending 2 requests/s (128-token prompts, 16 tokens out) to a service's live
    replicas until `stop`; once joined, `result["run"]` holds (records, summary)."""
    from kvpilot_runtime.loadgen import (
        LoadConfig,
        Segment,
        discover_targets,
        fixed_lengths,
        run,
        schedule_arrivals,
    )

    result: dict[str, Any] = {}
    arrivals = schedule_arrivals((Segment(600.0, 2.0, 2.0),), fixed_lengths(128, 16), seed=seed)

    def load() -> None:
        result["run"] = run(
            arrivals,
            lambda: discover_targets(scrape_targets, namespace, service),
            LoadConfig(balance="least-outstanding", drain_timeout=120, seed=seed),
            stop=stop,
        )

    return threading.Thread(target=load), result
