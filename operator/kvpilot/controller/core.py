"""The controller: watch caches in, one shared pool plan, reconciles out.

Watch events (kopf handlers in handlers.py) update the `ClusterView` and queue the
services they concern; a change that matters to placement marks the pool plan dirty.
One loop re-plans the pool (debounced), then reconciles the queued services on a
small thread pool. A reconcile reads only the caches, calls the pure
`plan_reconcile`, and writes only what differs, so a settled cluster sees no writes.
A second loop runs the autoscaler on its interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from urllib3.exceptions import HTTPError

from kvpilot.api.names import API_VERSION, KIND, POD_DELETION_COST
from kvpilot.api.parse import InferenceService, InvalidObjectError, parse_inference_service
from kvpilot.autoscaling.prometheus import PrometheusMetricsSource
from kvpilot.controller.analysis import analysis_config, run_analysis
from kvpilot.controller.cache import ClusterView, Key
from kvpilot.controller.kube import ApiError, Kube
from kvpilot.controller.metrics import OperatorMetrics
from kvpilot.controller.quality import PROBE_TIMEOUT_S, ProbeError, pod_base_url, run_gate
from kvpilot.controller.settings import Settings
from kvpilot.objects import merge_patch
from kvpilot.planning.inventory import build_inventory
from kvpilot.planning.pool import PoolPlanner
from kvpilot.reconcile import (
    CHILD_KINDS,
    Event,
    Observation,
    Pool,
    ReconcilePlan,
    plan_pool,
    plan_reconcile,
)
from kvpilot.reconcile.moves import (
    LEAVING_COST,
    TaintWrite,
    affected,
    taint_writes,
    with_reservation,
)
from kvpilot.reconcile.plan import target_revision
from kvpilot.reconcile.quality import gate_due, quality_config, quality_record, recorded
from kvpilot.reconcile.rollout import equivalent_ready, live_revisions
from kvpilot.reconcile.status import changed_fields, now_iso
from kvpilot.resources.deployment import QUALITY_GATE_CONDITION, deployment_name
from kvpilot.resources.labels import INFERENCE_SERVICE
from kvpilot.rollout.analysis import AnalysisStep

log = logging.getLogger("kvpilot.controller")

CHILD_API = {"Service": "v1", "PodDisruptionBudget": "policy/v1", "Deployment": "apps/v1"}


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


_locks: dict[Key, threading.Lock] = {}
_locks_guard = threading.Lock()


def lock_for(key: Key) -> threading.Lock:
    """One lock per InferenceService: reconcile and autoscaler never interleave."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class EventPoster:
    """core/v1 Events on InferenceServices, as `kubectl describe` shows them.

    Posted from a background thread in order, so a reconcile never waits on them.
    """

    def __init__(self, kube: Kube, component: str = "kvpilot", instance: str = "") -> None:
        self.kube = kube
        self.component = component
        self.instance = instance
        self._queue: queue.Queue[tuple[Mapping[str, Any], Event]] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None

    def post(self, body: Mapping[str, Any], event: Event) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((body, event))
        except queue.Full:
            log.warning("Dropping event reason=%s (queue full)", event.reason)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (a bounded time) until queued Events are posted; used on shutdown and in tests."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        while True:
            body, event = self._queue.get()
            self.post_now(body, event)

    def post_now(self, body: Mapping[str, Any], event: Event) -> None:
        meta = body["metadata"]
        stamp = now_iso()
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance or self.component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.kube.create(obj)
        except (ApiError, HTTPError, OSError) as exc:
            log.warning("Posting event failed reason=%s err=%s", event.reason, exc)


class Controller:
    """Owns the caches, the pool plan and the work queue of one operator process."""

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        *,
        metrics: OperatorMetrics | None = None,
        autoscaler: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.view = ClusterView()
        self.metrics = metrics or OperatorMetrics()
        self.autoscaler = autoscaler
        self.clock = clock
        self.events = EventPoster(kube, instance=settings.identity)
        self.pool: Pool | None = None
        #: held for the life of the process: re-plans incrementally (one thread at a time)
        self.planner = PoolPlanner()
        self.synced = False
        self._queue: set[Key] = set()
        self._pool_dirty = True
        self._dirty_since = 0.0
        self._free: dict[str, int] | None = None
        self._analysis_due: dict[Key, float] = {}
        #: services whose spec is newer than the pool plan: reconciled after the next one
        self._after_plan: set[Key] = set()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ events (loop thread)

    def upsert(self, kind: str, body: Mapping[str, Any]) -> None:
        """A watched object was listed, added or modified."""
        self._note(self.view.upsert(kind, body))

    def delete(self, kind: str, body: Mapping[str, Any]) -> None:
        self._note(self.view.delete(kind, body))

    def mark_synced(self) -> None:
        if not self.synced:
            self.synced = True
            log.info(
                "Caches synced nodes=%d gpu_pods=%d inferenceservices=%d",
                self.view.count("Node"), self.view.count("Pod"),
                self.view.count("InferenceService"),
            )  # fmt: skip
            self._poke()

    def _note(self, change: Any) -> None:
        if change.pool_changed:
            self._free = None
            self._note_pool_change()
        if change.owner is not None:
            self._queue.add(change.owner)
        self._poke()

    def _replan_soon(self) -> None:
        self._note_pool_change()
        self._poke()

    def _note_pool_change(self) -> None:
        if not self._pool_dirty:
            self._dirty_since = self.clock()
        self._pool_dirty = True

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def enqueue_all(self) -> None:
        self._queue.update(self.view.keys("InferenceService"))
        self._poke()

    # ------------------------------------------------------------------ loops

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Re-plan and reconcile until cancelled (or ``stop`` is set)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="kvpilot")
        tasks = [asyncio.create_task(self._reconcile_loop(executor))]
        if self.autoscaler is not None:
            tasks.append(asyncio.create_task(self._autoscale_loop(executor)))
        try:
            if stop is None:
                await asyncio.gather(*tasks)
            else:
                await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    async def _reconcile_loop(self, executor: ThreadPoolExecutor) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_repair = self.clock() + self.settings.repair_interval
        while True:
            now = self.clock()
            deadline = next_repair
            if self._pool_dirty:
                deadline = min(deadline, self._dirty_since + self.settings.replan_debounce)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, deadline - now))
            self._wake.clear()
            if not self.synced:
                continue
            now = self.clock()
            if now >= next_repair:
                next_repair = now + self.settings.repair_interval
                self.enqueue_all()
            if self._pool_dirty and (
                self.pool is None or now - self._dirty_since >= self.settings.replan_debounce
            ):
                self._pool_dirty = False
                try:
                    pool = await loop.run_in_executor(executor, self.replan)
                except Exception:
                    log.exception("Planning the pool failed")
                    self._pool_dirty, self._dirty_since = True, self.clock()
                    continue
                self._adopt(pool)
                writes = taint_writes(pool.plan, pool.reservations)
                if writes:
                    written = await loop.run_in_executor(executor, self.reserve, writes)
                    for node in written:
                        self.upsert("Node", node)
                    if len(written) < len(writes):  # plan again later: the writes follow
                        loop.call_later(10.0, self._replan_soon)
            if self.pool is None or not self._queue:
                continue
            # A chunk at a time, so the pool is re-planned between chunks when a burst of
            # new services arrives (services created meanwhile are not held back).
            queued = sorted(self._queue)
            keys = queued[: self.settings.workers * 4]
            self._queue.difference_update(keys)
            await asyncio.gather(
                *(loop.run_in_executor(executor, self.reconcile_safely, k) for k in keys)
            )
            if self._queue:
                self._poke()

    async def _autoscale_loop(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.0)
        while True:
            started = self.clock()
            if self.synced:
                keys = self.view.keys("InferenceService")
                await asyncio.gather(
                    *(loop.run_in_executor(executor, self.autoscale_safely, k) for k in keys)
                )
            spent = self.clock() - started
            await asyncio.sleep(max(0.1, self.settings.autoscale_interval - spent))

    # ------------------------------------------------------------------ planning (worker thread)

    def replan(self) -> Pool:
        """One plan of the whole pool from the caches."""
        started = time.perf_counter()
        services: list[InferenceService] = []
        for body in self.view.items("InferenceService"):
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            try:
                services.append(parse_inference_service(body))
            except InvalidObjectError:
                continue  # reported by its own reconcile; takes no GPUs meanwhile
        pool = plan_pool(
            services,
            self.view.items("Node"),
            self.view.items("Pod"),
            tenants=self.settings.tenants,
            planner=self.planner,
        )
        spent = time.perf_counter() - started
        self.metrics.plan_duration.observe(spent)
        log.debug("Planned pool services=%d seconds=%.3f", len(services), spent)
        return pool

    def _adopt(self, pool: Pool) -> None:
        """Take a new pool plan; queue the services whose slice changed."""
        old = self.pool
        self.pool = pool
        self._queue.update(self._after_plan)
        self._after_plan.clear()
        for key in affected(old.reservations if old else (), pool.reservations):
            ns, _, name = key.partition("/")
            self._queue.add((ns, name))
        for ns, name in self.view.keys("InferenceService"):
            before = old.slice(ns, name) if old is not None else None
            if old is None or before != pool.slice(ns, name):
                self._queue.add((ns, name))

    def reserve(self, writes: list[TaintWrite]) -> list[dict[str, Any]]:
        """Set or remove reservation taints (read, then write with the read's resourceVersion,
        so taints others write meanwhile are never lost); returns the nodes written."""
        out = []
        for w in writes:
            for _ in range(3):
                try:
                    node = self.kube.get("v1", "Node", None, w.node)
                    if node is None:
                        break
                    taints = (node.get("spec") or {}).get("taints") or []
                    new = with_reservation(taints, w.value)
                    if new == taints:
                        out.append(node)
                        break
                    body = {
                        "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                        "spec": {"taints": new},
                    }
                    out.append(self.kube.patch("v1", "Node", None, w.node, body))
                    self.metrics.decisions.labels("reserve" if w.value else "release", "Node").inc()
                    log.info(
                        "%s node=%s value=%s why=%s",
                        "Reserved" if w.value else "Released", w.node, w.value, w.message,
                    )  # fmt: skip
                    break
                except ApiError as exc:
                    if exc.status == 409:
                        continue
                    log.warning("Reservation write failed node=%s err=%s", w.node, exc)
                    break
                except (HTTPError, OSError) as exc:
                    log.warning("Reservation write failed node=%s err=%s", w.node, exc)
                    break
        return out

    # ------------------------------------------------------------------ reconcile (worker thread)

    def reconcile_safely(self, key: Key) -> ReconcilePlan | None:
        started = time.perf_counter()
        try:
            return self.reconcile(key)
        except ApiError as exc:
            reason = "conflict" if exc.status == 409 else "api_error"
            self.metrics.reconcile_errors.labels(reason).inc()
            log.warning(
                "Reconcile failed inferenceservice=%s/%s status=%d err=%s",
                *key,
                exc.status,
                exc.reason,
            )
        except (HTTPError, OSError) as exc:
            self.metrics.reconcile_errors.labels("unreachable").inc()
            log.warning("Reconcile failed inferenceservice=%s/%s err=%s", *key, exc)
        except Exception:
            self.metrics.reconcile_errors.labels("internal").inc()
            log.exception("Reconcile failed inferenceservice=%s/%s", *key)
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        self._retry_later(key)
        return None

    def _retry_later(self, key: Key, delay: float = 5.0) -> None:
        loop = self._loop
        if loop is None:
            return

        def requeue() -> None:
            self._queue.add(key)
            self._poke()

        loop.call_soon_threadsafe(lambda: loop.call_later(delay, requeue))

    def reconcile(self, key: Key) -> ReconcilePlan | None:
        with lock_for(key):
            body = self.view.get("InferenceService", *key)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                self.metrics.forget(*key)
                return None
            if self._planned_before(body):
                # The spec changed after the pool plan was made: its slice (TP, GPU type)
                # belongs to the old spec, and a revision rendered from both would be one
                # nobody asked for. Reconciled again once the pool is re-planned.
                self._after_plan.add(key)
                self._pool_dirty = True
                self._poke_threadsafe()
                return None
            obs = self.observe(body)
            plan = plan_reconcile(obs)
            self.execute(body, obs, plan)
            if plan.rollout is not None and plan.rollout.recheck_s is not None:
                self._retry_later(key, plan.rollout.recheck_s)
            return plan

    def _planned_before(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        if self.pool is None:
            return False
        planned = self.pool.planned_from(meta.get("namespace", ""), meta.get("name", ""))
        generation = meta.get("generation")
        return planned is not None and generation is not None and planned < int(generation)

    def _poke_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._poke)

    def observe(self, body: Mapping[str, Any]) -> Observation:
        """Everything the pure plan needs, from the caches (one GET per missing child)."""
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        common: dict[str, Any] = {
            "namespace": ns,
            "name": name,
            "generation": int(meta.get("generation", 1)),
            "previous": body.get("status") or {},
            "now": now_iso(),
        }
        try:
            isvc = parse_inference_service(body)
        except InvalidObjectError as err:
            return Observation(
                **common, invalid=str(err), children=self._children(ns, name, uid)[0]
            )
        placement = self.pool.slice(ns, name) if self.pool is not None else None
        product = None
        if placement is not None and placement.option is not None and self.pool is not None:
            product = self.pool.product(placement.option.gpu_type)
        children, foreign = self._children(
            ns, name, uid, check_missing=placement is not None and placement.option is not None
        )
        deployments = tuple(self._deployments_of(ns, name, uid))
        rev = target_revision(isvc, placement, product)
        # A revision with an owned Deployment (one taken over has another name) needs no check.
        if rev is not None and rev not in live_revisions(deployments):
            taken = self._foreign_deployment(ns, uid, deployment_name(name, rev))
            if taken is not None:
                foreign["Deployment"] = taken
        analysis = self._analyse(body, isvc, deployments)
        pods = tuple(self._pods_of(ns, name))
        return Observation(
            **common,
            isvc=isvc,
            placement=placement,
            gpu_product=product,
            children=children,
            foreign=foreign,
            scheduler_name=self.settings.scheduler_name,
            pods=pods,
            draining_nodes=self.pool.draining if self.pool is not None else frozenset(),
            deployments=deployments,
            free_gpus=self.free_gpus(),
            analysis=analysis.decision if analysis is not None else None,
            analysis_message=analysis.message if analysis is not None else "",
            analysis_state=analysis.state.to_dict() if analysis is not None else None,
            analysis_events=tuple(
                Event(e.type, e.reason, e.message) for e in (analysis.events if analysis else ())
            ),
            reservations=self.pool.reservations if self.pool is not None else (),
            **self._quality_gate((ns, name), isvc, common["previous"], pods, common["now"]),
        )

    def _analyse(
        self,
        body: Mapping[str, Any],
        isvc: InferenceService,
        deployments: Sequence[Mapping[str, Any]],
    ) -> AnalysisStep | None:
        """The canary analysis step while a canary rolls out (Prometheus read when due),
        and a reconcile scheduled for the next window."""
        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        revs: Mapping[str, Any] = (body.get("status") or {}).get("revisions") or {}
        canary, stable = revs.get("canary"), revs.get("stable")
        spec = isvc.spec.rollout.analysis
        if not canary or not stable or canary == stable or not spec.enabled:
            return None
        live = live_revisions(deployments)
        dep = live[canary].deployment if canary in live else {}
        ready = int((dep.get("status") or {}).get("readyReplicas") or 0) >= 1
        source = getattr(self.autoscaler, "source", None)
        cfg = analysis_config(spec)
        result = run_analysis(
            source if isinstance(source, PrometheusMetricsSource) else None,
            revs.get("analysis"), cfg, key[0], key[1], str(stable), str(canary),
            canary_ready=ready, rollout_step=revs.get("step"),
        )  # fmt: skip
        self._analyse_later(key, cfg.interval_s)
        return result

    def _analyse_later(self, key: Key, delay: float) -> None:
        """One pending reconcile per service for its next analysis window (watch-driven
        reconciles in between must not start more timers)."""
        due = self.clock() + delay
        if self._analysis_due.get(key, math.inf) <= due:
            return
        self._analysis_due[key] = due
        loop = self._loop
        if loop is None:
            return

        def requeue() -> None:
            self._analysis_due.pop(key, None)
            self._queue.add(key)
            self._poke()

        loop.call_soon_threadsafe(lambda: loop.call_later(delay, requeue))

    def _quality_gate(
        self,
        key: Key,
        isvc: InferenceService,
        previous: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        now: str,
    ) -> dict[str, Any]:
        """The quality gate's Observation fields: the verdict status holds for the canary,
        or a run's when one is due now (the probe blocks this service's reconcile only)."""
        spec = isvc.spec.rollout.quality_gate
        canary = (previous.get("revisions") or {}).get("canary")
        done = recorded(previous, canary) if spec.enabled and canary else None
        if done is not None:
            return {"quality": done[0], "quality_message": done[1]}
        run = gate_due(spec.enabled, previous, pods)
        if run is None:
            return {}
        stable_url, canary_url = pod_base_url(run.stable_pod), pod_base_url(run.canary_pod)
        if stable_url is None or canary_url is None:
            return {}
        started = time.perf_counter()
        try:
            result = run_gate(
                stable_url, canary_url, isvc.served_name, quality_config(spec), PROBE_TIMEOUT_S
            )
        except ProbeError as exc:
            log.warning(
                "Quality gate probe failed inferenceservice=%s/%s canary=%s err=%s",
                *key, run.canary, exc,
            )  # fmt: skip
            self._retry_later(key, 10.0)
            return {"quality_message": f"quality probe failed: {exc}"}
        log.info(
            "Quality gate inferenceservice=%s/%s canary=%s stable=%s passed=%s agreement=%.3f "
            "divergence=%s seconds=%.1f",
            *key, run.canary, run.stable, result.passed, result.token_agreement,
            "-" if result.logprob_divergence is None else f"{result.logprob_divergence:.3f}",
            time.perf_counter() - started,
        )  # fmt: skip
        return {
            "quality": result.passed,
            "quality_message": result.message,
            "quality_record": quality_record(result, run, now),
        }

    def free_gpus(self) -> dict[str, int]:
        """Free GPUs per GPU type now, counting every pod (kvpilot's included): what a
        rollout can surge onto. Recomputed after nodes or GPU pods change."""
        free = self._free
        if free is None:
            free = build_inventory(self.view.items("Node"), self.view.items("Pod")).free_by_type()
            self._free = free
        return free

    def _deployments_of(self, ns: str, name: str, uid: str) -> list[dict[str, Any]]:
        """The service's Deployments: one per live revision (owned, from the cache)."""
        return [
            d
            for d in self.view.items("Deployment")
            if (d.get("metadata") or {}).get("namespace") == ns
            and ((d.get("metadata") or {}).get("labels") or {}).get(INFERENCE_SERVICE) == name
            and owned_by(d, uid)
        ]

    def _pods_of(self, ns: str, name: str) -> list[dict[str, Any]]:
        """The service's pods (kvpilot pods all hold GPUs, so the GPU-pod cache has them)."""
        return [
            p
            for p in self.view.items("Pod")
            if (p.get("metadata") or {}).get("namespace") == ns
            and ((p.get("metadata") or {}).get("labels") or {}).get(INFERENCE_SERVICE) == name
        ]

    def _foreign_deployment(self, ns: str, uid: str, dep_name: str) -> str | None:
        """`dep_name` when a Deployment of that name exists that this service does not own
        (never applied over: server-side apply would take it over)."""
        obj = self.view.get("Deployment", ns, dep_name)
        if obj is None:
            obj = self.kube.get("apps/v1", "Deployment", ns, dep_name)
        return None if obj is None or owned_by(obj, uid) else dep_name

    def _children(
        self, ns: str, name: str, uid: str, *, check_missing: bool = False
    ) -> tuple[dict[str, Mapping[str, Any] | None], dict[str, str]]:
        children: dict[str, Mapping[str, Any] | None] = {}
        foreign: dict[str, str] = {}
        for kind in CHILD_KINDS:
            obj = self.view.get(kind, ns, name)
            # Deployments are named per revision; the one named after the service is an
            # older Deployment taken over, never created, so no conflict check for it.
            if obj is None and check_missing and kind != "Deployment":
                # Not ours (not in the owned-objects cache): is the name taken by someone else?
                obj = self.kube.get(CHILD_API[kind], kind, ns, name)
            if obj is None:
                children[kind] = None
            elif owned_by(obj, uid):
                children[kind] = obj
            else:
                foreign[kind] = name
                children[kind] = None
        return children, foreign

    def execute(self, body: Mapping[str, Any], obs: Observation, plan: ReconcilePlan) -> None:
        """Apply, patch status, post Events: only what the plan says differs."""
        ns, name = obs.namespace, obs.name
        if plan.apply:
            try:
                # All or nothing: when several objects change, validate the Deployment (the
                # one built from user-tunable fields) before anything is written.
                if len(plan.apply) > 1:
                    for obj in plan.apply:
                        if obj["kind"] == "Deployment":
                            self.kube.apply(obj, dry_run=True)
            except ApiError as exc:
                if exc.status not in (400, 422):
                    raise
                refused = plan_reconcile(
                    Observation(
                        namespace=ns, name=name, generation=obs.generation,
                        previous=obs.previous, now=obs.now, children=obs.children,
                        invalid=f"the API server refused the rendered objects: {_api_message(exc)}",
                    )
                )  # fmt: skip
                self.metrics.reconcile_errors.labels("invalid").inc()
                self.execute(body, obs, refused)
                return
            for obj in plan.apply:
                result = self.kube.apply(obj)
                self.view.note_written(obj["kind"], result)
                self.metrics.decisions.labels("apply", obj["kind"]).inc()
                log.info(
                    "Applied %s/%s/%s revision=%s replicas=%d",
                    obj["kind"], ns, name, plan.revision, plan.target_replicas,
                )  # fmt: skip
        ro = plan.rollout
        if ro is not None and ro.canary is not None and (plan.scale or plan.apply or plan.delete):
            log.info(
                "Rollout inferenceservice=%s/%s phase=%s reason=%s replicas=%s ready_capacity=%.0f "
                "baseline=%.0f free_gpus=%s",
                ns, name, ro.phase, ro.reason, ro.replicas, ro.ready_capacity, ro.baseline or 0,
                dict(obs.free_gpus),
            )  # fmt: skip
        for dep_name, replicas in plan.scale:
            result = self.kube.scale_deployment(ns, dep_name, replicas)
            self.view.note_written("Deployment", result)
            self.metrics.decisions.labels("scale", "Deployment").inc()
            log.info("Scaled Deployment/%s/%s replicas=%d (rollout)", ns, dep_name, replicas)
        for dep_name in plan.delete:
            self.kube.delete("apps/v1", "Deployment", ns, dep_name)
            self.metrics.decisions.labels("delete", "Deployment").inc()
            log.info("Deleted Deployment/%s/%s (retired revision)", ns, dep_name)
        for pod in plan.mark_leaving:
            # The ReplicaSet removes the lowest-cost pods first: exactly these, on scale-down.
            result = self.kube.patch(
                "v1", "Pod", ns, pod,
                {"metadata": {"annotations": {POD_DELETION_COST: LEAVING_COST}}},
            )  # fmt: skip
            self.view.note_written("Pod", result)
            log.info("Marked pod=%s/%s leaving (moved replica)", ns, pod)
        if plan.status is not None:
            log.info(
                "Patched status inferenceservice=%s/%s by=reconcile changed=%s",
                ns, name, ",".join(changed_fields(obs.previous, plan.status)),
            )  # fmt: skip
            try:
                result = self.kube.patch_status(ns, name, merge_patch(obs.previous, plan.status))
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
            self.view.note_written("InferenceService", result)
            self.metrics.decisions.labels("status", "changed").inc()
            gpus = 0
            if obs.placement is not None:
                gpus = obs.placement.gpus_used
            self.metrics.service(ns, name, plan.status, gpus)
        # After the status: the admissions are derived from it, so a restart in between
        # admits the same pods.
        for adm in plan.admit:
            try:
                result = self.kube.patch_pod_condition(
                    ns, adm.pod,
                    {"type": QUALITY_GATE_CONDITION, "status": "True", "reason": adm.reason,
                     "message": adm.message[:1024], "lastTransitionTime": obs.now},
                )  # fmt: skip
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            self.view.note_written("Pod", result)
            self.metrics.decisions.labels("admit", "Pod").inc()
            log.info("Set %s=True on pod=%s/%s reason=%s", QUALITY_GATE_CONDITION, ns,
                     adm.pod, adm.reason)  # fmt: skip
        for event in plan.events:
            self.events.post(body, event)
            self.metrics.decisions.labels("event", event.reason).inc()

    # ------------------------------------------------------------------ autoscaling

    def autoscale_safely(self, key: Key) -> None:
        if self.autoscaler is None:
            return
        try:
            with lock_for(key):
                body = self.view.get("InferenceService", *key)
                if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                    self.autoscaler.metrics.forget(*key)
                    return
                uid = (body.get("metadata") or {}).get("uid", "")
                deps = self._deployments_of(*key, uid)
                dep = None
                if deps:
                    # Mid-rollout, replicas of every revision count, weighed by capacity.
                    revision = (body.get("status") or {}).get("revision")
                    ready, existing = equivalent_ready(deps, revision)
                    dep = {"status": {"readyReplicas": ready, "replicas": existing}}
                outcome = self.autoscaler.tick(body, dep)
                if outcome.status_result is not None:
                    self.view.note_written("InferenceService", outcome.status_result)
                if outcome.scaled:
                    self.metrics.decisions.labels("scale", outcome.scaled).inc()
                for event in outcome.events:
                    self.events.post(body, event)
                    self.metrics.decisions.labels("event", event.reason).inc()
        except ApiError as exc:
            self.metrics.reconcile_errors.labels("api_error").inc()
            log.warning(
                "Autoscaling failed inferenceservice=%s/%s status=%d err=%s",
                *key,
                exc.status,
                exc.reason,
            )
        except (HTTPError, OSError) as exc:
            self.metrics.reconcile_errors.labels("unreachable").inc()
            log.warning("Autoscaling failed inferenceservice=%s/%s err=%s", *key, exc)
        except Exception:
            self.metrics.reconcile_errors.labels("internal").inc()
            log.exception("Autoscaling failed inferenceservice=%s/%s", *key)


def _api_message(exc: ApiError) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except ValueError:
        return exc.reason


def new_identity() -> str:
    import os
    import socket

    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
