"""Local Kubernetes control plane with fake GPU nodes, run as plain processes.

The test world and the demo's cluster: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok (the kubelet of fake GPU
nodes), Prometheus and helm, all on loopback. No container engine is needed.
Binaries that are not packaged are built from their Go modules once per
machine and cached under ``${XDG_CACHE_HOME:-~/.cache}/kvpilot/``.

Every process started here carries the cluster directory in its command
line; that is how ``status`` and ``down`` find them (and any stray one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUBE_VERSION = "v1.35.4"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.22.0"

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

#: Loopback ports; chosen away from the usual defaults so a real cluster
#: on the same machine does not collide. KVPILOT_DEV_CLUSTER_PORT_OFFSET shifts
#: them all, so that two checkouts can each run a cluster side by side.
PORT_OFFSET = int(os.environ.get("KVPILOT_DEV_CLUSTER_PORT_OFFSET", "0"))
PORTS = {
    name: port + PORT_OFFSET
    for name, port in {
        "etcd": 23790,
        "etcd-peer": 23800,
        "kube-apiserver": 16443,
        "kube-controller-manager": 20257,
        "kube-scheduler": 20259,
        "kwok": 20247,
        "prometheus": 19090,
    }.items()
}
#: Pod IPs that kwok hands out: a /16 inside 127.0.0.0/8, one per port offset
#: (distinct for offsets below 254 and for multiples of 100 up to 12,700), so
#: the pod runner can bind each replica to its pod's IP and container port and
#: the operator reaches pods at ``status.podIP`` as on a real cluster. The API
#: server refuses loopback addresses in Endpoints and EndpointSlices, so the
#: controllers that write them are off (the dev cluster has no kube-proxy:
#: nothing routes through a Service's endpoints here).
POD_CIDR = f"127.{1 + PORT_OFFSET % 254}.0.0/16"
#: The bin-packing kube-scheduler profile the dev cluster runs (deploy/scheduler/).
BINPACK_SCHEDULER = "kvpilot-binpack"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "prometheus",
)
SCRAPE_INTERVAL = "2s"


class DevClusterError(RuntimeError):
    """A piece of the dev cluster could not be obtained or started."""


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays free for machine-readable output)."""
    print(f"[dev-cluster] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvpilot"


def repo_root() -> Path:
    """The checkout that holds e2e/devcluster (the scripts and inventories live there)."""
    env = os.environ.get("KVPILOT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[2]  # e2e/devcluster/__init__.py
    if (here / "e2e" / "devcluster").is_dir():
        return here
    cwd = Path.cwd().resolve()
    for cand in (cwd, *cwd.parents):
        if (cand / "e2e" / "devcluster").is_dir():
            return cand
    raise DevClusterError("cannot find the kvpilot checkout (e2e/devcluster); set KVPILOT_ROOT")


@dataclass(frozen=True)
class Layout:
    """Where the cluster keeps its files (``.dev-cluster/`` in the checkout)."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "prometheus"

    @property
    def scrape_targets(self) -> Path:
        """File-based service discovery directory for serving replicas."""
        return self.prometheus_dir / "targets"

    @property
    def operator_targets(self) -> Path:
        return self.prometheus_dir / "operator"

    @classmethod
    def default(cls) -> Layout:
        env = os.environ.get("KVPILOT_DEV_CLUSTER_DIR")
        return cls(Path(env).resolve() if env else repo_root() / ".dev-cluster")


# --------------------------------------------------------------------------- binaries


def _run_script(script: str, *args: str) -> None:
    path = repo_root() / "e2e" / "devcluster" / script
    proc = subprocess.run(["bash", str(path), *args], check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"{script} {' '.join(args)} failed (exit {proc.returncode})")


def _require_go(what: str) -> None:
    if shutil.which("go") is None:
        raise DevClusterError(
            f"{what} is not built yet and 'go' is not on PATH; install Go >= 1.25 "
            "(https://go.dev/dl/ or your distribution's golang package) and run again"
        )


def kube_bin_dir() -> Path:
    return cache_dir() / "k8s" / KUBE_VERSION / "bin"


def ensure_kubernetes() -> Path:
    d = kube_bin_dir()
    if all((d / b).is_file() for b in KUBE_BINARIES):
        log(f"Kubernetes {KUBE_VERSION} binaries cached in {d}")
        return d
    _require_go(f"Kubernetes {KUBE_VERSION}")
    log(f"building Kubernetes {KUBE_VERSION} from the k8s.io/kubernetes Go module (first run only)")
    t0 = time.monotonic()
    _run_script("build-k8s.sh", KUBE_VERSION, str(d))
    log(f"built Kubernetes {KUBE_VERSION} in {time.monotonic() - t0:.0f}s")
    return d


def ensure_go_tool(tool: str, version: str) -> Path:
    d = cache_dir() / "tools" / f"{tool}-{version}"
    if (d / tool).is_file():
        log(f"{tool} {version} cached in {d}")
        return d / tool
    _require_go(f"{tool} {version}")
    log(f"building {tool} {version} from its Go module (first run only)")
    t0 = time.monotonic()
    env_minor = KUBE_VERSION.split(".")[1]
    os.environ.setdefault("KUBE_MINOR", env_minor)
    _run_script("build-tools.sh", tool, version, str(d))
    log(f"built {tool} {version} in {time.monotonic() - t0:.0f}s")
    return d / tool


def _system_which(name: str, own_bin: Path) -> Path | None:
    """``name`` on PATH, skipping ``own_bin`` (the cluster's links point back here) and
    resolved, so a link is never made to itself."""
    own = own_bin.resolve()
    dirs = [
        d
        for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if d and Path(d).resolve() != own
    ]
    found = shutil.which(name, path=os.pathsep.join(dirs))
    return Path(found).resolve() if found else None


def ensure_debian_packages(binaries: dict[str, str], own_bin: Path) -> dict[str, Path]:
    """Find packaged binaries, installing their Debian packages when we are root."""
    missing = {b: p for b, p in binaries.items() if _system_which(b, own_bin) is None}
    if missing:
        pkgs = sorted(set(missing.values()))
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"installing Debian packages: {' '.join(pkgs)}")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
            proc = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
                check=False,
                env=env,
            )
            if proc.returncode != 0:
                raise DevClusterError(f"apt-get install {' '.join(pkgs)} failed")
        else:
            raise DevClusterError(
                f"missing {', '.join(missing)}; install the Debian packages "
                f"{' '.join(pkgs)} (sudo apt-get install {' '.join(pkgs)})"
            )
    out: dict[str, Path] = {}
    for b, pkg in binaries.items():
        found = _system_which(b, own_bin)
        if found is None:
            raise DevClusterError(f"{b} still not found after installing {pkg}")
        out[b] = found
    return out


def ensure_binaries(layout: Layout) -> dict[str, Path]:
    """Obtain every binary and link it into ``.dev-cluster/bin``."""
    kube = ensure_kubernetes()
    tools: dict[str, Path] = {b: kube / b for b in KUBE_BINARIES}
    tools["kwok"] = ensure_go_tool("kwok", KWOK_VERSION)
    tools["helm"] = ensure_go_tool("helm", HELM_VERSION)
    tools.update(
        ensure_debian_packages(
            {"etcd": "etcd-server", "prometheus": "prometheus", "openssl": "openssl"}, layout.bin
        )
    )
    layout.bin.mkdir(parents=True, exist_ok=True)
    for name, target in tools.items():
        link = layout.bin / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return {name: layout.bin / name for name in tools}


# --------------------------------------------------------------------------- PKI


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def ensure_pki(layout: Layout) -> None:
    """A cluster CA, the API server's serving cert, an admin client cert, SA keys."""
    pki = layout.pki
    if (pki / "admin.crt").is_file():
        return
    pki.mkdir(parents=True, exist_ok=True)
    days = "3650"
    _openssl("genrsa", "-out", str(pki / "ca.key"), "2048")
    _openssl(
        "req", "-x509", "-new", "-nodes", "-key", str(pki / "ca.key"), "-days", days,
        "-subj", "/CN=kvpilot-dev-ca", "-out", str(pki / "ca.crt"),
    )  # fmt: skip
    ext = pki / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    for name, subj, extfile in (
        ("apiserver", "/CN=kube-apiserver", ext),
        ("admin", "/O=system:masters/CN=kvpilot-dev-admin", None),
    ):
        _openssl("genrsa", "-out", str(pki / f"{name}.key"), "2048")
        _openssl(
            "req", "-new", "-key", str(pki / f"{name}.key"), "-subj", subj,
            "-out", str(pki / f"{name}.csr"),
        )  # fmt: skip
        sign = [
            "x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", days,
            "-out", str(pki / f"{name}.crt"),
        ]  # fmt: skip
        if extfile is not None:
            sign += ["-extfile", str(extfile)]
        _openssl(*sign)
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def write_kubeconfig(layout: Layout) -> None:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kvpilot-dev",
                "cluster": {
                    "server": f"https://127.0.0.1:{PORTS['kube-apiserver']}",
                    "certificate-authority-data": b64(layout.pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "kvpilot-dev-admin",
                "user": {
                    "client-certificate-data": b64(layout.pki / "admin.crt"),
                    "client-key-data": b64(layout.pki / "admin.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "kvpilot-dev",
                "context": {"cluster": "kvpilot-dev", "user": "kvpilot-dev-admin"},
            }
        ],
        "current-context": "kvpilot-dev",
    }
    layout.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
    layout.kubeconfig.chmod(0o600)


# --------------------------------------------------------------------------- processes


@dataclass
class Component:
    """One process of the cluster: how to start it and how to tell it is healthy."""

    name: str
    argv: list[str]
    health: Callable[[], bool]
    timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)


def _client_ssl(layout: Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    ctx.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    return ctx


def _http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def apiserver_url(path: str = "") -> str:
    return f"https://127.0.0.1:{PORTS['kube-apiserver']}{path}"


def prometheus_url(path: str = "") -> str:
    return f"http://127.0.0.1:{PORTS['prometheus']}{path}"


def load_inventory(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise DevClusterError(f"{path}: an inventory needs a 'nodes' list")
    return data


def node_manifests(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """kwok Node objects for an inventory: GPU capacity, GFD labels, the GPU taint."""
    out: list[dict[str, Any]] = []
    for pool in inventory["nodes"]:
        for key in ("name", "count", "gpus", "gpuProduct", "gpuMemoryMiB"):
            if key not in pool:
                raise DevClusterError(f"inventory node pool {pool!r} lacks '{key}'")
        for i in range(int(pool["count"])):
            name = f"{pool['name']}-{i}"
            resources = {
                "cpu": str(pool.get("cpu", "32")),
                "memory": str(pool.get("memory", "256Gi")),
                "pods": "110",
                "ephemeral-storage": "1Ti",
                "nvidia.com/gpu": str(pool["gpus"]),
            }
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "kvpilot.io/node-pool": str(pool["name"]),
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": str(pool["gpuProduct"]),
                "nvidia.com/gpu.memory": str(pool["gpuMemoryMiB"]),
                "nvidia.com/gpu.count": str(pool["gpus"]),
            }
            if "instanceType" in pool:
                labels["node.kubernetes.io/instance-type"] = str(pool["instanceType"])
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {"kwok.x-k8s.io/node": "fake"},
                    },
                    "spec": {
                        "taints": [
                            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
                        ]
                    },
                    "status": {"capacity": resources, "allocatable": resources},
                }
            )
    return out


def components(layout: Layout, bins: dict[str, Path], inventory: dict[str, Any]) -> list[Component]:
    pki, data, logs = layout.pki, layout.data, layout.logs
    kcfg = str(layout.kubeconfig)
    api_ssl = _client_ssl(layout)
    ready_ms = int(float(inventory.get("podReadyDelaySeconds", 3)) * 1000)
    stages = (repo_root() / "e2e" / "devcluster" / "kwok-stages.yaml").read_text()
    sched = yaml.safe_load(
        (repo_root() / "deploy" / "scheduler" / f"{BINPACK_SCHEDULER}.yaml").read_text()
    )
    # client QPS with room for a thousand Deployments (bench/scale.py)
    sched["clientConnection"] = {"kubeconfig": kcfg, "qps": 200, "burst": 400}
    sched["leaderElection"] = {"leaderElect": False}
    scheduler_config = layout.root / "scheduler.yaml"
    scheduler_config.write_text(yaml.safe_dump(sched))
    stages_file = layout.root / "kwok-stages.yaml"
    stages_file.write_text(stages.replace("__READY_DELAY_MS__", str(ready_ms)))
    prom_cfg = layout.prometheus_dir / "prometheus.yml"
    layout.scrape_targets.mkdir(parents=True, exist_ok=True)
    layout.operator_targets.mkdir(parents=True, exist_ok=True)
    prom_cfg.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": SCRAPE_INTERVAL,
                    "evaluation_interval": SCRAPE_INTERVAL,
                },
                "scrape_configs": [
                    {
                        "job_name": "vllm",
                        "file_sd_configs": [
                            {"files": [f"{layout.scrape_targets}/*.json"], "refresh_interval": "1s"}
                        ],
                    },
                    {
                        "job_name": "kvpilot-operator",
                        "file_sd_configs": [
                            {
                                "files": [f"{layout.operator_targets}/*.json"],
                                "refresh_interval": "1s",
                            }
                        ],
                    },
                    {
                        "job_name": "prometheus",
                        "static_configs": [{"targets": [f"127.0.0.1:{PORTS['prometheus']}"]}],
                    },
                ],
            },
            sort_keys=False,
        )
    )
    del logs
    return [
        Component(
            "etcd",
            [
                str(bins["etcd"]),
                "--name=kvpilot-dev",
                f"--data-dir={data / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{PORTS['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{PORTS['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{PORTS['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{PORTS['etcd-peer']}",
                f"--initial-cluster=kvpilot-dev=http://127.0.0.1:{PORTS['etcd-peer']}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
            ],
            lambda: _http_ok(f"http://127.0.0.1:{PORTS['etcd']}/health"),
            timeout_s=30,
        ),
        Component(
            "kube-apiserver",
            [
                str(bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{PORTS['etcd']}",
                "--advertise-address=127.0.0.1",
                "--bind-address=127.0.0.1",
                f"--secure-port={PORTS['kube-apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/16",  # room for thousands of Services
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--storage-media-type=application/json",
                "--event-ttl=1h",
                # etcd 3.4 cannot serve watch-progress requests, so streaming
                # lists (WatchList) end in errors and informers miss updates.
                "--feature-gates=WatchList=false",
                "--shutdown-delay-duration=0s",
                "--shutdown-watch-termination-grace-period=0s",
            ],
            lambda: _http_ok(apiserver_url("/readyz"), api_ssl),
            timeout_s=120,
        ),
        Component(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}",
                f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={PORTS['kube-controller-manager']}",
                f"--cert-dir={data / 'kcm-certs'}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                # endpoints off: pod IPs are loopback addresses (see POD_CIDR)
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route,"
                "-endpoints-controller,-endpointslice-controller",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--concurrent-gc-syncs=20",
                "--concurrent-namespace-syncs=10",
                # room for a thousand Deployments (bench/scale.py) without client throttling
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
            lambda: _http_ok(
                f"https://127.0.0.1:{PORTS['kube-controller-manager']}/healthz", _insecure()
            ),
            timeout_s=60,
        ),
        Component(
            "kube-scheduler",
            [
                str(bins["kube-scheduler"]),
                f"--config={scheduler_config}",
                f"--authentication-kubeconfig={kcfg}",
                f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={PORTS['kube-scheduler']}",
                f"--cert-dir={data / 'scheduler-certs'}",
            ],
            lambda: _http_ok(f"https://127.0.0.1:{PORTS['kube-scheduler']}/healthz", _insecure()),
            timeout_s=60,
        ),
        Component(
            "kwok",
            [
                str(bins["kwok"]),
                f"--kubeconfig={kcfg}",
                f"--config={stages_file}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.240.0.1",
                f"--server-address=127.0.0.1:{PORTS['kwok']}",
            ],
            lambda: _http_ok(f"http://127.0.0.1:{PORTS['kwok']}/healthz"),
            timeout_s=60,
        ),
        Component(
            "prometheus",
            [
                str(bins["prometheus"]),
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                "--storage.tsdb.retention.time=6h",
                f"--web.listen-address=127.0.0.1:{PORTS['prometheus']}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            lambda: _http_ok(prometheus_url("/-/ready")),
            timeout_s=60,
        ),
    ]


def _proc_cmdlines() -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.replace(b"\0", b" ").decode(errors="replace")


def cluster_processes(layout: Layout) -> dict[int, str]:
    """Every live process started for this cluster (found by its directory in argv)."""
    marker = str(layout.root)
    me = os.getpid()
    out: dict[int, str] = {}
    for pid, cmd in _proc_cmdlines():
        if pid == me or marker not in cmd:
            continue
        if _component_of(cmd) in COMPONENTS:
            out[pid] = cmd
    return out


def _component_of(cmd: str) -> str:
    return Path(cmd.split(" ", 1)[0]).name


def _wait(what: str, check: Callable[[], bool], timeout_s: float, logfile: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = ""
    if logfile is not None and logfile.exists():
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-25:])
    raise DevClusterError(f"{what} did not become healthy within {timeout_s:.0f}s\n{tail}")


def kubectl(layout: Layout, *args: str, input_text: str | None = None) -> str:
    proc = subprocess.run(
        [str(layout.bin / "kubectl"), f"--kubeconfig={layout.kubeconfig}", *args],
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DevClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def is_up(layout: Layout) -> bool:
    """True when every component answers its health check."""
    if not layout.kubeconfig.exists() or not (layout.pki / "admin.crt").exists():
        return False
    checks = status(layout)
    return all(c["healthy"] for c in checks.values())


def up(inventory_path: Path | None = None, layout: Layout | None = None) -> Layout:
    """Start the cluster (building or installing whatever is missing first)."""
    layout = layout or Layout.default()
    inv_path = inventory_path or repo_root() / "e2e" / "clusters" / "default.yaml"
    inventory = load_inventory(inv_path)
    t_start = time.monotonic()
    if is_up(layout):
        log("already running")
        apply_nodes(layout, inventory)
        return layout
    # Keep what still runs healthily (a partial restart keeps etcd's data and the
    # API server's state); stop only leftovers that do not answer.
    healthy_now: set[str] = set()
    if (layout.pki / "admin.crt").exists() and layout.kubeconfig.exists():
        current = status(layout)
        healthy_now = {name for name, st in current.items() if st["healthy"]}
        for name, st in current.items():
            if st["pid"] and name not in healthy_now:
                log(f"stopping unhealthy {name} (pid {st['pid']})")
                stop_component(name, layout)
    else:
        stray = cluster_processes(layout)
        if stray:
            log(f"stopping {len(stray)} leftover process(es) of an earlier run")
            down(layout)
    layout.root.mkdir(parents=True, exist_ok=True)
    (layout.root / ".gitignore").write_text("*\n")
    for d in (layout.data, layout.logs):
        d.mkdir(parents=True, exist_ok=True)
    bins = ensure_binaries(layout)
    ensure_pki(layout)
    write_kubeconfig(layout)
    started: dict[str, Any] = {}
    for comp in components(layout, bins, inventory):
        if comp.name in healthy_now:
            continue
        logfile = layout.logs / f"{comp.name}.log"
        log(f"starting {comp.name}")
        with logfile.open("ab") as fh:
            proc = subprocess.Popen(
                comp.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **comp.env},
            )
        started[comp.name] = {"pid": proc.pid}
        layout.state.write_text(json.dumps({"components": started}, indent=2))

        def healthy(
            p: subprocess.Popen[bytes] = proc, c: Component = comp, logfile: Path = logfile
        ) -> bool:
            if p.poll() is not None:
                raise DevClusterError(
                    f"{c.name} exited with code {p.returncode}; see {logfile}\n"
                    + "\n".join(logfile.read_text(errors="replace").splitlines()[-25:])
                )
            return c.health()

        _wait(comp.name, healthy, comp.timeout_s, logfile)
        log(f"{comp.name} is healthy")
    apply_nodes(layout, inventory)
    log(
        f"cluster is up in {time.monotonic() - t_start:.0f}s; "
        f"export KUBECONFIG={layout.kubeconfig} PATH={layout.bin}:$PATH"
    )
    return layout


def apply_nodes(layout: Layout, inventory: dict[str, Any]) -> None:
    nodes = node_manifests(inventory)
    doc = "\n---\n".join(yaml.safe_dump(n, sort_keys=False) for n in nodes)
    kubectl(
        layout,
        "apply",
        "--server-side",
        "--field-manager=kvpilot-dev-cluster",
        "-f",
        "-",
        input_text=doc,
    )
    names = [n["metadata"]["name"] for n in nodes]

    def all_ready() -> bool:
        out = kubectl(layout, "get", "nodes", "-o", "json")
        ready = {
            n["metadata"]["name"]
            for n in json.loads(out)["items"]
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        }
        return set(names) <= ready

    _wait(f"{len(names)} kwok GPU nodes", all_ready, 60, layout.logs / "kwok.log")
    log(f"{len(names)} GPU nodes Ready ({', '.join(names)})")


def status(layout: Layout | None = None) -> dict[str, dict[str, Any]]:
    """Per component: pid (if running) and whether its health check passes."""
    layout = layout or Layout.default()
    procs = cluster_processes(layout)
    by_name: dict[str, int] = {}
    for pid, cmd in procs.items():
        by_name.setdefault(_component_of(cmd), pid)
    api_ssl: ssl.SSLContext | None = None
    if (layout.pki / "admin.crt").exists():
        api_ssl = _client_ssl(layout)
    health: dict[str, Callable[[], bool]] = {
        "etcd": lambda: _http_ok(f"http://127.0.0.1:{PORTS['etcd']}/health"),
        "kube-apiserver": lambda: (
            api_ssl is not None and _http_ok(apiserver_url("/readyz"), api_ssl)
        ),
        "kube-controller-manager": lambda: _http_ok(
            f"https://127.0.0.1:{PORTS['kube-controller-manager']}/healthz", _insecure()
        ),
        "kube-scheduler": lambda: _http_ok(
            f"https://127.0.0.1:{PORTS['kube-scheduler']}/healthz", _insecure()
        ),
        "kwok": lambda: _http_ok(f"http://127.0.0.1:{PORTS['kwok']}/healthz"),
        "prometheus": lambda: _http_ok(prometheus_url("/-/ready")),
    }
    out: dict[str, dict[str, Any]] = {}
    for name in COMPONENTS:
        found = by_name.get(name)
        out[name] = {"pid": found, "healthy": found is not None and health[name]()}
    return out


def down(layout: Layout | None = None, keep_data: bool = False, timeout_s: float = 20.0) -> int:
    """Stop every process of the cluster; returns how many were stopped."""
    layout = layout or Layout.default()
    procs = cluster_processes(layout)
    order = {name: i for i, name in enumerate(reversed(COMPONENTS))}
    pids = sorted(procs, key=lambda p: order.get(_component_of(procs[p]), -1))
    for pid in pids:
        log(f"stopping {_component_of(procs[pid])} (pid {pid})")
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and cluster_processes(layout):
        time.sleep(0.2)
    for pid in cluster_processes(layout):
        log(f"killing pid {pid}")
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and cluster_processes(layout):
        time.sleep(0.1)
    left = cluster_processes(layout)
    if left:
        raise DevClusterError(f"processes still running: {sorted(left)}")
    if not keep_data:
        shutil.rmtree(layout.data, ignore_errors=True)
    if layout.state.exists():
        layout.state.unlink()
    log(f"stopped {len(pids)} process(es)")
    return len(pids)


def stop_component(name: str, layout: Layout | None = None, timeout_s: float = 20.0) -> bool:
    """Stop one component (e.g. Prometheus, to test how clients cope); ``up`` restarts it."""
    layout = layout or Layout.default()
    pids = [p for p, cmd in cluster_processes(layout).items() if _component_of(cmd) == name]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
        _component_of(c) == name for c in cluster_processes(layout).values()
    ):
        time.sleep(0.1)
    for pid, cmd in cluster_processes(layout).items():
        if _component_of(cmd) == name:
            _signal(pid, signal.SIGKILL)
    return bool(pids)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: Sequence[str]) -> int:
    """``python -m e2e.devcluster up|down|status`` (what ``make dev-cluster`` runs)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m e2e.devcluster")
    sub = p.add_subparsers(dest="action", required=True)
    up_p = sub.add_parser("up", help="build what is missing and start the cluster")
    up_p.add_argument(
        "--inventory", type=Path, help="node inventory (default e2e/clusters/default.yaml)"
    )
    down_p = sub.add_parser("down", help="stop every process of the cluster")
    down_p.add_argument("--keep-data", action="store_true", help="keep etcd and Prometheus data")
    st = sub.add_parser("status", help="which components are up")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = p.parse_args(argv)
    try:
        if args.action == "up":
            up(args.inventory)
            return 0
        if args.action == "down":
            down(keep_data=args.keep_data)
            return 0
        result = status()
        if args.output == "json":
            print(json.dumps(result, indent=2))
        else:
            print(f"{'COMPONENT':<26}{'PID':<10}STATUS")
            for name, s in result.items():
                state = "up" if s["healthy"] else ("unhealthy" if s["pid"] else "down")
                print(f"{name:<26}{s['pid'] or '-'!s:<10}{state}")
        return 0 if all(s["healthy"] for s in result.values()) else 1
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
