"""A seeded chaos harness: SIGKILL the operator in the middle of changes, then check
that the cluster converges and that nothing went wrong meanwhile.

Each trial makes one change (create, ``kubectl scale``, a spec edit of the bounds or the
model, deletion, or a priority change that makes the pool plan move replicas between
services competing for a full GPU pool), kills the operator with SIGKILL after a random
delay (so the kill lands before, during or after its writes), sometimes makes a second
change while it is down, restarts it and waits for convergence.

An `InvariantWatch` follows the namespace's InferenceServices, Deployments and all Pods
through watches the whole time and records every violation the moment it is visible:

- a Deployment written with replicas outside [minReplicas, maxReplicas] of the spec;
- two Deployments for one InferenceService;
- more GPUs requested by the pods bound to a node than the node has allocatable;
- Ready=True (for the current generation) while its Deployment has no ready replica.

`converged` checks the settled state after each restart: one owned Deployment per
service, no orphaned children, status equal to what the children show
(observedGeneration, desired/ready replicas, Ready), the pool used as the plan's rules
say (no idle GPU while a service wants more, priority respected) and one pod per replica.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from e2e.helpers import GC_TIMEOUT, Kube, WaitTimeoutError, wait_for

GROUP, VERSION, PLURAL = "kvpilot.io", "v1alpha1", "inferenceservices"
SERVICE_LABEL = "kvpilot.io/inference-service"
MANAGED = "app.kubernetes.io/managed-by=kvpilot"

#: The chaos pool: its own kwok nodes of a GPU type nothing else on the dev cluster asks
#: for, so the trials compete only with each other. 3 nodes x 2 L40S = 6 GPUs; an 8B model
#: at 4k context takes one GPU per replica.
GPU_TYPE = "L40S-48GB"
POOL: dict[str, Any] = {
    "podReadyDelaySeconds": 1,
    "nodes": [
        {
            "name": "chaos-l40s",
            "count": 3,
            "gpuType": GPU_TYPE,
            "gpuProduct": "NVIDIA-L40S",
            "gpuMemoryMiB": 46068,
            "gpus": 2,
        },
        {
            "name": "chaos-a100",
            "count": 1,
            "gpuType": "A100-40GB",
            "gpuProduct": "NVIDIA-A100-SXM4-40GB",
            "gpuMemoryMiB": 40960,
            "gpus": 2,
        },
    ],
}
#: Rollouts go to one service of its own on the A100 node, which keeps a GPU free for the
#: surge replica: the Deployment rolls with maxSurge 1 / maxUnavailable 0 and the pool plan
#: reserves no GPU for the surge, so on a full pool a rollout waits for a GPU forever.
ROLL = "chaos-roll"
ROLL_GPU_TYPE = "A100-40GB"
MAX_SERVICES = 4
ACTIONS = ("create", "scale", "edit", "rollout", "delete", "priority")


def service_manifest(
    name: str,
    *,
    replicas: int,
    lo: int,
    hi: int,
    priority: int,
    max_len: int = 4096,
    gpu_type: str = GPU_TYPE,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": max_len},
            "placement": {"gpuTypes": [gpu_type], "priority": priority},
            "scaling": {"minReplicas": lo, "maxReplicas": hi},
        },
    }


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def _bounds(obj: dict[str, Any]) -> tuple[int, int]:
    s = (obj.get("spec") or {}).get("scaling") or {}
    lo = int(s.get("minReplicas", 1))
    return lo, max(lo, int(s.get("maxReplicas", lo)))


def _gpus(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        req = ((c.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu")
        total += int(req or 0)
    return total


def add_pool(kube: Kube, inventory: dict[str, Any] = POOL) -> list[str]:
    """Create the kwok GPU nodes of ``inventory`` and wait until they are Ready."""
    from e2e.devcluster import node_manifests

    nodes = node_manifests(inventory)
    doc = "\n---\n".join(yaml.safe_dump(n) for n in nodes)
    kube("apply", "--server-side", "--field-manager=kvpilot-e2e", "-f", "-", input_text=doc)
    names = [n["metadata"]["name"] for n in nodes]

    def ready() -> set[str]:
        out = set()
        for n in kube.json("get", "nodes")["items"]:
            for c in n.get("status", {}).get("conditions", []):
                if c["type"] == "Ready" and c["status"] == "True":
                    out.add(n["metadata"]["name"])
        return out

    wait_for(ready, lambda r: set(names) <= r, timeout=60, what=f"nodes {names} Ready")
    return names


def remove_pool(kube: Kube, names: list[str]) -> None:
    if names:
        kube.run("delete", "node", *names, "--wait=false", check=False)


# --------------------------------------------------------------------------- watching


@dataclass
class Violation:
    at: float
    what: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 2), "what": self.what}


@dataclass
class InvariantWatch:
    """Watches that check the continuous invariants on every event (see the module doc)."""

    kubeconfig: Path
    namespace: str
    violations: list[Violation] = field(default_factory=list)
    events_seen: int = 0
    _bounds: dict[str, set[tuple[int, int]]] = field(default_factory=lambda: defaultdict(set))
    _deps: dict[str, dict[str, Any]] = field(default_factory=dict)
    _pods: dict[str, tuple[str, int]] = field(default_factory=dict)
    _alloc: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    # -- lifecycle

    def start(self) -> None:
        streams: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
            ("nodes", self.core.list_node, {}),
            (
                "isvcs",
                self.custom.list_namespaced_custom_object,
                {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL},
            ),
            ("deployments", self.apps.list_namespaced_deployment, {"namespace": self.namespace}),
            ("pods", self.core.list_pod_for_all_namespaces, {}),
        ]
        for name, fn, kwargs in streams:
            t = threading.Thread(
                target=self._run, args=(name, fn, kwargs), daemon=True, name=f"chaos-{name}"
            )
            t.start()
            self._threads.append(t)
        # the node and pod lists must be in before pods are judged
        wait_for(lambda: len(self._alloc), lambda n: n > 0, timeout=30, what="node list")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def settle(self) -> None:
        """After convergence only the current bounds of each service are allowed."""
        with self._lock:
            self._bounds.clear()
        for obj in self._list_isvcs():
            with self._lock:
                self._bounds[obj["metadata"]["name"]].add(_bounds(obj))

    def _run(self, name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{name}")
        while not self._stop.is_set():
            try:
                listing = fn(_preload_content=False, **kwargs)
                data = json.loads(listing.data)
                for item in data.get("items") or []:
                    handler("ADDED", item)
                rv = data["metadata"]["resourceVersion"]
                w = kubernetes.watch.Watch()
                for ev in w.stream(
                    fn, resource_version=rv, timeout_seconds=30, _request_timeout=40, **kwargs
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = ev["raw_object"]
                    handler(ev["type"], obj)
            except Exception:  # a cut stream or 410 Gone: list again
                time.sleep(0.5)

    def _violation(self, what: str) -> None:
        with self._lock:
            self.violations.append(Violation(time.time(), what))

    # -- handlers (one thread each)

    def _on_nodes(self, kind: str, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._alloc.pop(name, None)
            else:
                alloc = (node.get("status") or {}).get("allocatable") or {}
                self._alloc[name] = int(alloc.get("nvidia.com/gpu", 0) or 0)

    def _on_isvcs(self, kind: str, obj: dict[str, Any]) -> None:
        self.events_seen += 1
        name = obj["metadata"]["name"]
        with self._lock:
            self._bounds[name].add(_bounds(obj))
        if kind == "DELETED":
            return
        ready = _conditions(obj).get("Ready") or {}
        status = obj.get("status") or {}
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        if ready.get("status") == "True" and current and int(status.get("desiredReplicas") or 0):
            dep = self._fresh_deployment(name)
            if not dep or not int((dep.get("status") or {}).get("readyReplicas") or 0):
                self._violation(
                    f"{name}: Ready=True ({ready.get('reason')}) at generation "
                    f"{obj['metadata'].get('generation')} with no ready replica"
                )

    def _on_deployments(self, kind: str, dep: dict[str, Any]) -> None:
        self.events_seen += 1
        meta = dep["metadata"]
        owner = (meta.get("labels") or {}).get(SERVICE_LABEL)
        with self._lock:
            if kind == "DELETED" or meta.get("deletionTimestamp"):
                self._deps.pop(meta["name"], None)
            else:
                self._deps[meta["name"]] = dep
            same = sorted(
                n
                for n, d in self._deps.items()
                if (d["metadata"].get("labels") or {}).get(SERVICE_LABEL) == owner
            )
        if owner and len(same) > 1:
            self._violation(f"{owner}: duplicated Deployments {same}")
        if kind == "DELETED" or owner is None:
            return
        replicas = int((dep.get("spec") or {}).get("replicas") or 0)
        allowed = self._allowed(owner)
        if allowed and not any(lo <= replicas <= hi for lo, hi in allowed):
            # The service's watch may lag the Deployment's: read it fresh once.
            obj = self._fresh_isvc(owner)
            if obj is not None:
                with self._lock:
                    self._bounds[owner].add(_bounds(obj))
                allowed = self._allowed(owner)
            if not any(lo <= replicas <= hi for lo, hi in allowed):
                self._violation(
                    f"{owner}: Deployment written with {replicas} replicas, "
                    f"bounds {sorted(allowed)}"
                )

    def _on_pods(self, kind: str, pod: dict[str, Any]) -> None:
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        with self._lock:
            if kind == "DELETED" or not node or phase in ("Succeeded", "Failed"):
                self._pods.pop(key, None)
                return
            self._pods[key] = (node, _gpus(pod))
            used = sum(g for n, g in self._pods.values() if n == node)
            alloc = self._alloc.get(node)
        if alloc is not None and used > alloc:
            self._violation(f"node {node}: pods request {used} GPUs, allocatable {alloc}")

    # -- reads

    def _allowed(self, name: str) -> set[tuple[int, int]]:
        with self._lock:
            return set(self._bounds.get(name, set()))

    def _fresh_isvc(self, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(kubernetes.client.ApiException):
            resp = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _preload_content=False
            )
            obj: dict[str, Any] = json.loads(resp.data)
            return obj
        return None

    def _fresh_deployment(self, name: str) -> dict[str, Any] | None:
        """The service's Deployments (one per live revision), ready replicas summed."""
        with contextlib.suppress(kubernetes.client.ApiException):
            resp = self.apps.list_namespaced_deployment(
                self.namespace,
                label_selector=f"{SERVICE_LABEL}={name}",
                _preload_content=False,
            )
            items: list[dict[str, Any]] = json.loads(resp.data)["items"]
            if not items:
                return None
            ready = sum(int((d.get("status") or {}).get("readyReplicas") or 0) for d in items)
            return {"status": {"readyReplicas": ready}}
        return None

    def _list_isvcs(self) -> list[dict[str, Any]]:
        resp = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items


# --------------------------------------------------------------------------- convergence


def converged(kube: Kube, namespace: str, capacity: int) -> list[str]:
    """What still differs from a settled cluster (empty: converged)."""
    problems: list[str] = []
    isvcs = {o["metadata"]["name"]: o for o in kube.json("get", PLURAL, "-n", namespace)["items"]}
    uids = {o["metadata"]["uid"] for o in isvcs.values()}
    deps = kube.json("get", "deployments", "-n", namespace, "-l", MANAGED)["items"]
    pods = [
        p
        for p in kube.json("get", "pods", "-n", namespace)["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]
    for kind in ("services", "poddisruptionbudgets"):
        for o in kube.json("get", kind, "-n", namespace, "-l", MANAGED)["items"]:
            refs = {r.get("uid") for r in o["metadata"].get("ownerReferences") or []}
            if not refs & uids:
                problems.append(f"orphaned {kind} {o['metadata']['name']}")
    by_owner: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in deps:
        refs = {r.get("uid") for r in d["metadata"].get("ownerReferences") or []}
        if not refs & uids:
            problems.append(f"orphaned Deployment {d['metadata']['name']}")
            continue
        by_owner[d["metadata"]["labels"].get(SERVICE_LABEL, "")].append(d)
    placed: dict[str, int] = {}
    for name, obj in sorted(isvcs.items()):
        own = by_owner.get(name, [])
        if len(own) != 1:
            problems.append(f"{name}: {len(own)} Deployments")
            continue
        dep = own[0]
        spec_r = int(dep["spec"].get("replicas") or 0)
        dstat = dep.get("status") or {}
        status = obj.get("status") or {}
        lo, hi = _bounds(obj)
        wanted = int(obj["spec"].get("replicas") or lo)
        placed[name] = spec_r
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            problems.append(f"{name}: observedGeneration {status.get('observedGeneration')}")
        if not lo <= spec_r <= hi:
            problems.append(f"{name}: Deployment replicas {spec_r} outside [{lo}, {hi}]")
        if spec_r > wanted:
            problems.append(f"{name}: {spec_r} replicas placed, {wanted} wanted")
        if status.get("desiredReplicas") != spec_r:
            problems.append(f"{name}: desiredReplicas {status.get('desiredReplicas')} != {spec_r}")
        ready_n = int(dstat.get("readyReplicas") or 0)
        if ready_n != spec_r or int(dstat.get("updatedReplicas") or 0) != spec_r:
            problems.append(f"{name}: Deployment {ready_n}/{spec_r} ready")
        if int(status.get("readyReplicas") or 0) != ready_n:
            problems.append(f"{name}: status readyReplicas {status.get('readyReplicas')}")
        ready = _conditions(obj).get("Ready") or {}
        if ready.get("status") != "True":
            problems.append(f"{name}: Ready={ready.get('status')} {ready.get('reason')}")
        mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(SERVICE_LABEL) == name]
        if len(mine) != spec_r:
            problems.append(f"{name}: {len(mine)} pods for {spec_r} replicas")
    for p in pods:
        owner = (p["metadata"].get("labels") or {}).get(SERVICE_LABEL)
        if owner and owner not in isvcs:
            problems.append(f"orphaned pod {p['metadata']['name']}")
    if problems:
        return problems
    # The pool: no GPU idle while a service wants more; higher priority grows first.
    isvcs = {n: o for n, o in isvcs.items() if GPU_TYPE in o["spec"]["placement"]["gpuTypes"]}
    placed = {n: placed[n] for n in isvcs}
    wants = {n: int(o["spec"].get("replicas") or _bounds(o)[0]) for n, o in isvcs.items()}
    short = [n for n in isvcs if placed[n] < wants[n]]
    if short and sum(placed.values()) < capacity:
        problems.append(f"GPUs idle ({sum(placed.values())}/{capacity}) while {short} want more")
    for n in short:
        prio = int(isvcs[n]["spec"]["placement"].get("priority") or 0)
        for m, o in isvcs.items():
            if (
                int(o["spec"]["placement"].get("priority") or 0) < prio
                and placed[m] > _bounds(o)[0]
            ):
                problems.append(
                    f"{m} holds {placed[m]} replicas while higher-priority {n} is short"
                )
    return problems


# --------------------------------------------------------------------------- trials


@dataclass
class TrialResult:
    trial: int
    action: str
    kill_after_s: float
    while_down: str | None
    restart_s: float
    converge_s: float
    problems: list[str]
    violations: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.violations


@dataclass
class Chaos:
    """The trials of one seed against one namespace; `operator` is an OperatorProcess."""

    kube: Kube
    namespace: str
    operator: Any
    watch: InvariantWatch
    seed: int
    capacity: int
    converge_timeout: float = GC_TIMEOUT
    rng: random.Random = field(init=False)
    counter: int = 0
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def services(self) -> dict[str, dict[str, Any]]:
        """The services that compete for the L40S pool (the rollout service is apart)."""
        items = self.kube.json("get", PLURAL, "-n", self.namespace)["items"]
        return {o["metadata"]["name"]: o for o in items if o["metadata"]["name"] != ROLL}

    def _apply(self, obj: dict[str, Any]) -> None:
        self.kube(
            "apply", "-n", self.namespace, "-f", "-", input_text=yaml.safe_dump(obj)
        )  # fmt: skip

    def _patch(self, name: str, patch: dict[str, Any]) -> None:
        self.kube(
            "patch", PLURAL, name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch)
        )  # fmt: skip

    def create(self) -> str:
        self.counter += 1
        name = f"chaos-{self.seed}-{self.counter}"
        hi = self.rng.randint(2, 3)
        self._apply(
            service_manifest(
                name, replicas=self.rng.randint(1, hi), lo=1, hi=hi,
                priority=self.rng.choice((0, 100)),
            )
        )  # fmt: skip
        return f"create {name}"

    def act(self, action: str) -> str:
        """Make one change of kind ``action``; returns what it did."""
        if action == "rollout":
            return self._rollout()
        svcs = self.services()
        if action == "create" or not svcs:
            if len(svcs) >= MAX_SERVICES:
                action = "delete"
            else:
                return self.create()
        name = self.rng.choice(sorted(svcs))
        obj = svcs[name]
        lo, hi = _bounds(obj)
        if action == "scale":
            r = self.rng.randint(lo, hi)
            self.kube("scale", f"{PLURAL}/{name}", f"--replicas={r}", "-n", self.namespace)
            return f"kubectl scale {name} --replicas={r}"
        if action == "edit":
            new_hi = self.rng.randint(2, 4)
            new_lo = self.rng.randint(1, min(2, new_hi))
            r = self.rng.randint(new_lo, new_hi)
            patch = {
                "spec": {"replicas": r, "scaling": {"minReplicas": new_lo, "maxReplicas": new_hi}}
            }
            self._patch(name, patch)
            return f"edit {name} bounds [{new_lo}, {new_hi}] replicas {r}"
        if action == "priority":
            cur = int(obj["spec"]["placement"].get("priority") or 0)
            new = 0 if cur else 100
            patch = {"spec": {"placement": {"priority": new}, "replicas": hi}}
            self._patch(name, patch)
            return f"priority {name} {cur} -> {new}, replicas {hi}"
        if len(svcs) <= 1:
            return self.create()
        self.kube("delete", PLURAL, name, "-n", self.namespace, "--wait=false")
        return f"delete {name}"

    def _rollout(self) -> str:
        roll = self.kube.json("get", PLURAL, ROLL, "-n", self.namespace)
        cur = int(roll["spec"]["model"].get("maxModelLen") or 4096)
        new = 8192 if cur == 4096 else 4096
        self._patch(ROLL, {"spec": {"model": {"maxModelLen": new}}})
        return f"rollout {ROLL} maxModelLen {cur} -> {new}"

    def trial(self, i: int) -> TrialResult:
        action = self.rng.choice(ACTIONS)
        kill_after = round(self.rng.uniform(0.0, 3.0), 2)
        second = self.rng.random() < 0.3
        seen = len(self.watch.violations)
        did = self.act(action)
        time.sleep(kill_after)
        self.operator.kill()
        while_down = None
        if second:
            while_down = self.act(self.rng.choice(ACTIONS))
        time.sleep(self.rng.uniform(0.0, 1.0))
        down_at = time.monotonic()
        self.operator.start()
        restart = time.monotonic() - down_at
        started = time.monotonic()
        try:
            wait_for(
                lambda: converged(self.kube, self.namespace, self.capacity),
                lambda p: not p,
                timeout=self.converge_timeout,
                what="convergence",
                interval=1.0,
            )
            problems: list[str] = []
        except WaitTimeoutError as exc:
            problems = [str(exc)[-2000:]]
        took = time.monotonic() - started
        self.watch.settle()
        result = TrialResult(
            trial=i, action=did, kill_after_s=kill_after, while_down=while_down,
            restart_s=round(restart, 2), converge_s=round(took, 2), problems=problems,
            violations=[v.as_dict() for v in self.watch.violations[seen:]],
        )  # fmt: skip
        self.log(
            f"trial {i}: {did}; killed after {kill_after}s; while down: {while_down}; "
            f"converged in {took:.1f}s; {'ok' if result.ok else 'FAILED'}"
        )
        return result

    def run(self, trials: int) -> Iterator[TrialResult]:
        # a starting population, settled, so every action has something to act on
        for _ in range(2):
            self.create()
        self._apply(
            service_manifest(ROLL, replicas=1, lo=1, hi=1, priority=0, gpu_type=ROLL_GPU_TYPE)
        )
        wait_for(
            lambda: converged(self.kube, self.namespace, self.capacity),
            lambda p: not p,
            timeout=self.converge_timeout,
            what="the starting services to converge",
            interval=1.0,
        )
        self.watch.settle()
        for i in range(trials):
            yield self.trial(i)


def summary(results: list[TrialResult]) -> dict[str, Any]:
    times = sorted(r.converge_s for r in results)
    return {
        "trials": len(results),
        "failed": sum(not r.ok for r in results),
        "violations": sum(len(r.violations) for r in results),
        "converge_s_median": times[len(times) // 2] if times else None,
        "converge_s_max": times[-1] if times else None,
        "restart_s_median": sorted(r.restart_s for r in results)[len(results) // 2]
        if results
        else None,
        "actions": sorted({r.action.split()[0] for r in results}),
    }


def run_chaos(
    kube: Kube, kubeconfig: Path, logs: Path, namespace: str, *, trials: int, seed: int
) -> dict[str, Any]:
    """Add the chaos pool, run ``trials`` seeded trials with a fresh operator, take the pool
    away again; returns the summary, the goals and every trial."""
    from e2e.operator import OperatorProcess

    nodes = add_pool(kube)
    capacity = sum(
        int(p["count"]) * int(p["gpus"]) for p in POOL["nodes"] if p["gpuType"] == GPU_TYPE
    )
    log_file = logs / f"operator-chaos-{seed}.log"
    log_file.write_text("")
    op = OperatorProcess(kubeconfig, log_file, repair_interval=10.0)
    watch = InvariantWatch(kubeconfig, namespace)
    watch.start()
    results: list[TrialResult] = []
    try:
        op.start()
        chaos = Chaos(kube, namespace, op, watch, seed=seed, capacity=capacity)
        for r in chaos.run(trials):
            results.append(r)
    finally:
        op.stop()
        watch.stop()
        kube.run("delete", PLURAL, "--all", "-n", namespace, "--wait=false", check=False)
        remove_pool(kube, nodes)
    figures = summary(results)
    goals = [
        {"name": "trials", "value": figures["trials"], "target": trials, "better": "higher"},
        {"name": "failed_trials", "value": figures["failed"], "target": 0, "better": "lower"},
        {"name": "invariant_violations", "value": figures["violations"], "target": 0,
         "better": "lower"},
    ]  # fmt: skip
    met = all(
        g["value"] <= g["target"] if g["better"] == "lower" else g["value"] >= g["target"]
        for g in goals
    )
    return {
        "benchmark": "chaos",
        "seed": seed,
        "pool": POOL,
        "figures": figures,
        "goals": goals,
        "goals_met": met,
        "watch_events": watch.events_seen,
        "trials": [{**r.__dict__, "ok": r.ok} for r in results],
    }
