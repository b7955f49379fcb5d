"""Discrete-event simulation of one InferenceService's fleet under an autoscaler.

Events, in simulated seconds from the trace's start:

* arrivals from the trace, routed to the Ready replica with the fewest
  outstanding requests (ties: the older replica); with no Ready replica they
  wait at the router;
* engine steps: every replica is the runtime's vLLM V1 engine model
  (`kvpilot_runtime.engine.Engine`) configured exactly as the simulated replica
  of a pod would be (`kvpilot_runtime.serveargs.setup_from_args` over the vLLM
  arguments the operator renders for the service), stepping back to back while
  it has work; a request reaches the engine ``frontend_latency_s`` (from the
  latency profile) after it arrives, as in the replica's HTTP front end;
* scrapes of every replica every ``scrape_interval_s`` (`kvpilot.sim.prom`);
* autoscaler decisions every ``scaler.interval_s`` (the first at
  ``decision_phase_s``), from a `FleetView`;
* scale-up creates replicas that become Ready ``cold_start_s`` later, or the
  measured ``cold_starts_s`` of the replicas created in turn (GPUs are
  held from creation); scale-down deletes starting replicas first, then the
  newest Ready ones (the ReplicaSet's order); a deleted replica gets no new
  requests, leaves Prometheus at once, finishes what it holds for up to
  ``drain_timeout_s`` (then aborts the rest) and frees its GPUs when empty.

Costs: replica-seconds from creation to removal; GPU-seconds = replica-seconds x
GPUs per replica (the planner's choice of GPU type and tensor parallelism for the
service). Wasted GPU-seconds: GPU time of replicas that hold no request (loading
the model, idle while Ready, or empty while draining).
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvpilot.api.parse import InferenceService, dump
from kvpilot.planning.gpus import GPU_TYPES
from kvpilot.planning.gpus import gpu_type as lookup_gpu_type
from kvpilot.planning.service import service_from_manifest
from kvpilot.planning.tp import ModelFits, fit_model
from kvpilot.resources.deployment import vllm_args
from kvpilot.resources.plan import render_plan
from kvpilot.sim.prom import ScrapeLog, range_query
from kvpilot.sim.scaler import OPERATOR_METRICS_STEP_S, FleetView, Scaler
from kvpilot.sim.trace import Request
from kvpilot_runtime.engine import DecodeRun, Engine, RequestSpec
from kvpilot_runtime.latency import available_profiles
from kvpilot_runtime.serveargs import SimSetup, parse_args, setup_from_args

DEFAULT_COLD_START_S = 120.0
DEFAULT_SCRAPE_INTERVAL_S = 15.0
DEFAULT_QUERY_DELAY_S = 1.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_SAMPLE_INTERVAL_S = 10.0

# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class FleetSetup:
    """How every replica of the service runs: GPU type, TP, GPUs, engine configuration."""

    gpu_type: str
    tensor_parallel: int
    gpus_per_replica: int
    profile: str
    argv: tuple[str, ...]
    engine: SimSetup

    @property
    def frontend_latency_s(self) -> float:
        return float(self.engine.profile.extra.get("frontend_latency_s", 0.0))


def _manifest(service: InferenceService) -> dict[str, Any]:
    return {
        "metadata": {"name": service.name, "namespace": service.namespace},
        "spec": dump(service.spec),
    }


def fleet_setup(
    service: InferenceService,
    *,
    gpu_type: str | None = None,
    profile: str | None = None,
    sim_args: Sequence[str] = (),
    gpus_per_node: int | None = None,
) -> FleetSetup:
    """The planner's GPU type and TP for the service and the engine each replica runs.

    ``gpu_type`` picks one of the planner's options instead of its first; ``profile``
    overrides the latency profile (default: the one named after the GPU type);
    ``sim_args`` are extra simulator arguments (``--slowdown 2``, ``--model-shape``...);
    ``gpus_per_node`` caps tensor parallelism as the pool's node size does (the planner
    allows up to 8 without it). Raises ValueError when the model fits no GPU type or no
    latency profile matches.
    """
    spec = service_from_manifest(_manifest(service))
    node_max = None
    if gpus_per_node is not None:
        node_max = {name: gpus_per_node for name in spec.gpu_types or [g.name for g in GPU_TYPES]}
    fit = fit_model(
        spec.source,
        spec.serving,
        shape=spec.shape,
        tensor=spec.tensor,
        gpu_types=spec.gpu_types,
        max_gpus_per_node=node_max,
    )
    if not isinstance(fit, ModelFits):
        raise ValueError(f"{service.name}: {fit.message}")
    options = fit.options
    if gpu_type is not None:
        options = tuple(o for o in options if o.gpu_type.lower() == gpu_type.lower())
        if not options:
            known = ", ".join(o.gpu_type for o in fit.options)
            raise ValueError(f"{service.name}: GPU type {gpu_type} is not an option ({known})")
    option = options[0]
    gpu = lookup_gpu_type(option.gpu_type)
    product = gpu.products[0] if gpu is not None else option.gpu_type
    name = profile or option.gpu_type.lower()
    if profile is None and name not in available_profiles():
        raise ValueError(
            f"no latency profile for {option.gpu_type} (shipped: "
            f"{', '.join(available_profiles())}); pass one"
        )
    plan = render_plan(
        service,
        tensor_parallel=option.tensor_parallel,
        gpu_product=product,
        gpus_per_replica=option.gpus_per_replica,
    )
    argv = (*vllm_args(service, plan), "--profile", name, *sim_args)
    setup = setup_from_args(parse_args(list(argv)))
    return FleetSetup(
        gpu_type=option.gpu_type,
        tensor_parallel=option.tensor_parallel,
        gpus_per_replica=option.gpus_per_replica,
        profile=name,
        argv=argv,
        engine=setup,
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScaleEvent:
    """One change of the desired replica count, with the scaler's reason."""

    time: float
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass(frozen=True)
class TimeSeries:
    """The fleet every ``interval`` seconds (columns of equal length)."""

    interval: float
    t: tuple[float, ...]
    desired: tuple[int, ...]
    ready: tuple[int, ...]
    starting: tuple[int, ...]
    draining: tuple[int, ...]
    waiting: tuple[int, ...]
    """Requests waiting in the engines plus at the router."""
    running: tuple[int, ...]
    kv_usage: tuple[float, ...]
    """Mean KV-cache usage over Ready replicas (0 with none)."""
    arrivals: tuple[int, ...]
    """Requests that arrived in the interval ending at ``t``."""


@dataclass(frozen=True)
class RequestResults:
    """Per request, in trace order (seconds; NaN where the request did not finish)."""

    arrival: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    ttft: tuple[float, ...]
    e2e: tuple[float, ...]
    itl_mean: tuple[float, ...]
    """Mean inter-token latency of the request (NaN with a single output token)."""
    itl_max: tuple[float, ...]
    replica: tuple[int, ...]
    """Index of the replica that served the request (-1: never routed)."""
    clipped: int
    """Requests shortened to fit maxModelLen (prompt, then output)."""
    aborted: int
    """Requests cut off by a replica's deletion after the drain timeout."""


@dataclass(frozen=True)
class SimResult:
    """Everything one simulation measured."""

    setup: FleetSetup
    duration_s: float
    requests: RequestResults
    token_gaps: tuple[float, ...]
    """The inter-token latencies of all requests, each seen ``token_gap_counts`` times."""
    token_gap_counts: tuple[int, ...]
    series: TimeSeries
    scale_events: tuple[ScaleEvent, ...]
    replica_seconds: float
    wasted_replica_seconds: float
    peak_replicas: int

    @property
    def gpus_per_replica(self) -> int:
        return self.setup.gpus_per_replica

    @property
    def gpu_seconds(self) -> float:
        return self.replica_seconds * self.setup.gpus_per_replica

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def wasted_gpu_hours(self) -> float:
        return self.wasted_replica_seconds * self.setup.gpus_per_replica / 3600.0


# --------------------------------------------------------------------------- simulation

_ARRIVE, _ENTER, _STEP_END, _RUN_END, _READY, _SCRAPE, _DECIDE, _SAMPLE, _DRAIN_DEADLINE = range(9)


@dataclass(eq=False)
class _Replica:
    index: int
    pod: str
    engine: Engine
    created: float
    ready_at: float
    log: ScrapeLog
    ready: bool = False
    draining: bool = False
    gone: bool = False
    stepping: bool = False
    pending_enters: int = 0
    next_scrape: float = 0.0
    outstanding: int = 0
    success: int = 0
    waste_since: float | None = None
    wasted: float = 0.0
    held: set[int] = field(default_factory=set)
    reported: tuple[int, int, float] = (0, 0, 0.0)

    def start_waste(self, now: float) -> None:
        if self.waste_since is None:
            self.waste_since = now

    def stop_waste(self, now: float) -> None:
        if self.waste_since is not None:
            self.wasted += now - self.waste_since
            self.waste_since = None


def _prompt(i: int, n: int) -> tuple[int, ...]:
    # A first token unique to the request keeps prefix caching from matching
    # across requests (a trace carries lengths, not text).
    return (i + 2, *range(1, n))


class _Fleet:
    def __init__(
        self,
        requests: Sequence[Request],
        setup: FleetSetup,
        service: InferenceService,
        scaler: Scaler,
        *,
        cold_start_s: float,
        scrape_interval_s: float,
        query_delay_s: float,
        metrics_step_s: float,
        drain_timeout_s: float | None,
        sample_interval_s: float,
        initial_replicas: int,
        until: float | None,
        progress: Callable[[float], None] | None,
        cold_starts_s: Sequence[float] = (),
        decision_phase_s: float | None = None,
    ) -> None:
        self.requests = requests
        self.setup = setup
        self.service = service
        self.scaler = scaler
        self.cold_start_s = cold_start_s
        self.cold_starts_s = deque(cold_starts_s)
        self.decision_phase_s = decision_phase_s
        self.scrape_interval_s = scrape_interval_s
        self.query_delay_s = query_delay_s
        self.metrics_step_s = metrics_step_s
        self.drain_timeout_s = drain_timeout_s
        self.sample_interval_s = sample_interval_s
        self.until = until
        self.progress = progress
        self.frontend = setup.frontend_latency_s
        n = len(requests)
        self.ttft = [math.nan] * n
        self.finish = [math.nan] * n
        self.last_tok = [math.nan] * n
        self.ntok = [0] * n
        self.itl_max = [math.nan] * n
        self.served_by = [-1] * n
        self.gaps: list[float] = []
        self.gap_counts: list[int] = []
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.replicas: list[_Replica] = []
        self.active: list[_Replica] = []  # not draining, not gone
        self.router: deque[int] = deque()
        self.spec = initial_replicas
        self.events: list[ScaleEvent] = []
        self.replica_seconds = 0.0
        self.peak = 0
        self.remaining = n
        self.aborted = 0
        self.clipped = 0
        self.max_len = setup.engine.config.max_model_len
        self.lens: list[tuple[int, int]] = []
        for r in requests:
            p, o = r.prompt_tokens, r.output_tokens
            if p + o > self.max_len:
                o = min(o, self.max_len // 2)
                p = min(p, self.max_len - o)
                self.clipped += 1
            self.lens.append((p, o))
        self.arrivals_seen = 0
        self.next_arrival = 0
        self.next_sample = 0.0
        self.series: dict[str, list[Any]] = {
            k: []
            for k in (
                "t", "desired", "ready", "starting", "draining", "waiting", "running",
                "kv_usage", "arrivals",
            )
        }  # fmt: skip
        self.last_sample_arrivals = 0
        self.horizon = requests[-1].arrival_s if requests else 0.0

    # -- events ----------------------------------------------------------------

    def push(self, t: float, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj))

    def next_cold_start(self) -> float:
        """The next measured cold start while there are some, then ``cold_start_s``."""
        return self.cold_starts_s.popleft() if self.cold_starts_s else self.cold_start_s

    def new_replica(self, now: float, ready_now: bool) -> _Replica:
        i = len(self.replicas)
        pod = f"{self.service.name}-{i:04d}"
        es = self.setup.engine
        engine = Engine(es.config, es.profile, es.shape)
        rep = _Replica(
            index=i,
            pod=pod,
            engine=engine,
            created=now,
            ready_at=now if ready_now else now + self.next_cold_start(),
            log=ScrapeLog(pod),
        )
        self.replicas.append(rep)
        self.active.append(rep)
        rep.start_waste(now)
        if ready_now:
            self.on_ready(now, rep)
        else:
            self.push(rep.ready_at, _READY, rep)
        # Prometheus spreads its targets over the interval; a stable per-pod phase.
        phase = (zlib.crc32(pod.encode()) % 1000) / 1000.0 * self.scrape_interval_s
        rep.next_scrape = now + phase
        self.push(rep.next_scrape, _SCRAPE, rep)
        self.peak = max(self.peak, sum(1 for r in self.replicas if not r.gone))
        return rep

    def on_ready(self, now: float, rep: _Replica) -> None:
        if rep.gone or rep.draining:
            return
        rep.ready = True
        while self.router:
            self.dispatch(now, self.router.popleft())

    def ready_replicas(self) -> list[_Replica]:
        return [r for r in self.active if r.ready]

    def dispatch(self, now: float, i: int) -> None:
        best: _Replica | None = None
        for r in self.active:
            if r.ready and (best is None or r.outstanding < best.outstanding):
                best = r
        if best is None:
            self.router.append(i)
            return
        best.outstanding += 1
        best.held.add(i)
        self.served_by[i] = best.index
        best.stop_waste(now)
        if self.frontend > 0:
            best.pending_enters += 1
            self.push(now + self.frontend, _ENTER, (best, i))
        else:
            self.enter(now, best, i)

    def enter(self, now: float, rep: _Replica, i: int) -> None:
        if self.frontend > 0:
            rep.pending_enters -= 1
        if rep.gone:
            return
        p, o = self.lens[i]
        rep.engine.add_request(RequestSpec(str(i), _prompt(i, p), o, self.requests[i].arrival_s))
        if not rep.stepping:
            self.step(now, rep)

    def step(self, now: float, rep: _Replica) -> None:
        if rep.pending_enters == 0:
            # Plain decoding until something can change the batch: take those steps at once.
            nxt = self.next_arrival
            until = min(
                self.requests[nxt].arrival_s if nxt < len(self.requests) else math.inf,
                rep.next_scrape,
                self.next_sample,
                self.until if self.until is not None else math.inf,
            )
            run = rep.engine.decode_run(now, until)
            if run is not None:
                rep.stepping = True
                self.push(run.end, _RUN_END, (rep, run))
                return
        res = rep.engine.step(now)
        if not res.scheduled:
            rep.stepping = False
            return
        rep.stepping = True
        self.push(res.end, _STEP_END, (rep, res))

    def run_end(self, now: float, rep: _Replica, run: DecodeRun) -> None:
        durations = run.durations
        first_end = run.start + durations[0]
        k = len(durations)
        last_tok, ntok, itl_max = self.last_tok, self.ntok, self.itl_max
        gaps, counts = self.gaps, self.gap_counts
        longest = max(durations)
        for rid in run.request_ids:
            i = int(rid)
            gap = first_end - last_tok[i]
            gaps.append(gap)
            counts.append(1)
            top = max(gap, longest) if k > 1 else gap
            if not top <= itl_max[i]:
                itl_max[i] = top
            ntok[i] += k
            last_tok[i] = now
        n = len(run.request_ids)
        for d in durations[1:]:
            gaps.append(d)
            counts.append(n)
        for rid in run.finished:
            i = int(rid)
            self.finish[i] = now
            rep.success += 1
            rep.outstanding -= 1
            rep.held.discard(i)
            self.remaining -= 1
        self.after_step(now, rep)

    def step_end(self, now: float, rep: _Replica, res: Any) -> None:
        ttft, last_tok, ntok, itl_max = self.ttft, self.last_tok, self.ntok, self.itl_max
        gaps, counts, arrival = self.gaps, self.gap_counts, self.requests
        for ev in res.events:
            i = int(ev.request_id)
            if ntok[i] == 0:
                ttft[i] = now - arrival[i].arrival_s
                rep.log.ttft_values.append(ttft[i])
            else:
                gap = now - last_tok[i]
                gaps.append(gap)
                counts.append(1)
                if not gap <= itl_max[i]:
                    itl_max[i] = gap
            ntok[i] += 1
            last_tok[i] = now
            if ev.finish_reason is not None:
                self.finish[i] = now
                rep.success += 1
                rep.outstanding -= 1
                rep.held.discard(i)
                self.remaining -= 1
        self.after_step(now, rep)

    def after_step(self, now: float, rep: _Replica) -> None:
        s = rep.engine.stats()
        rep.reported = (s.num_waiting, s.num_running, s.kv_cache_usage)
        if rep.engine.has_unfinished():
            self.step(now, rep)
        else:
            rep.stepping = False
            if rep.draining:
                self.remove(now, rep)
            elif rep.outstanding == 0:
                rep.start_waste(now)

    def remove(self, now: float, rep: _Replica) -> None:
        if rep.gone:
            return
        for i in list(rep.held):
            rep.engine.abort_request(str(i))
            self.aborted += 1
            self.remaining -= 1
        rep.held.clear()
        rep.gone = True
        rep.stop_waste(now)
        self.replica_seconds += now - rep.created
        if rep in self.active:
            self.active.remove(rep)

    def delete(self, now: float, rep: _Replica) -> None:
        """The pod is deleted: no new requests, no scrapes; drains what it holds."""
        self.active.remove(rep)
        rep.draining = True
        rep.log.gone_at = now
        if not rep.ready or rep.outstanding == 0:
            self.remove(now, rep)
        elif self.drain_timeout_s is not None:
            self.push(now + self.drain_timeout_s, _DRAIN_DEADLINE, rep)

    def scale_to(self, now: float, desired: int, reason: str) -> None:
        current = len(self.active)
        if desired != self.spec:
            self.events.append(ScaleEvent(now, self.spec, desired, reason))
            self.spec = desired
        for _ in range(desired - current):
            self.new_replica(now, ready_now=False)
        if desired < current:
            # ReplicaSet order: not-Ready pods first, then the most recently Ready.
            victims = sorted(self.active, key=lambda r: (r.ready, -r.ready_at, -r.index))
            for rep in victims[: current - desired]:
                self.delete(now, rep)

    def view(self, now: float, window: float) -> FleetView:
        ready = sum(1 for r in self.active if r.ready)
        starting = len(self.active) - ready
        logs = [
            r.log
            for r in self.replicas
            if r.log.t and (r.log.gone_at is None or r.log.gone_at > now - window)
        ]
        metrics = range_query(
            logs,
            now=now,
            window_s=window,
            step_s=self.metrics_step_s,
            query_delay_s=self.query_delay_s,
        )
        return FleetView(
            now=now,
            spec_replicas=self.spec,
            ready_replicas=ready,
            starting_replicas=starting,
            metrics=metrics,
            window_s=window,
            step_s=self.metrics_step_s,
        )

    def sample(self, now: float) -> None:
        s = self.series
        ready = [r for r in self.active if r.ready]
        waiting = len(self.router)
        running = 0
        kv = 0.0
        for r in self.replicas:
            if r.gone:
                continue
            st = r.engine.stats()
            waiting += st.num_waiting
            running += st.num_running
            if r.ready and not r.draining:
                kv += st.kv_cache_usage
        s["t"].append(now)
        s["desired"].append(self.spec)
        s["ready"].append(len(ready))
        s["starting"].append(len(self.active) - len(ready))
        s["draining"].append(sum(1 for r in self.replicas if r.draining and not r.gone))
        s["waiting"].append(waiting)
        s["running"].append(running)
        s["kv_usage"].append(kv / len(ready) if ready else 0.0)
        s["arrivals"].append(self.arrivals_seen - self.last_sample_arrivals)
        self.last_sample_arrivals = self.arrivals_seen

    # -- main loop -------------------------------------------------------------

    def run(self) -> float:
        for _ in range(self.spec):
            self.new_replica(0.0, ready_now=True)
        for i, r in enumerate(self.requests):
            self.push(r.arrival_s, _ARRIVE, i)
        interval = self.scaler.interval_s
        window = self.scaler.window_s
        phase = self.decision_phase_s
        self.push(interval if phase is None else phase, _DECIDE, None)
        self.next_sample = self.sample_interval_s
        self.push(self.next_sample, _SAMPLE, None)
        now = 0.0
        heap = self.heap
        pop = heapq.heappop
        until = self.until if self.until is not None else math.inf
        next_progress = 0.0
        while heap:
            t, _, kind, obj = pop(heap)
            if t > until:
                now = until
                break
            now = t
            if kind == _STEP_END:
                self.step_end(now, obj[0], obj[1])
            elif kind == _RUN_END:
                self.run_end(now, obj[0], obj[1])
            elif kind == _ARRIVE:
                self.arrivals_seen += 1
                self.next_arrival = obj + 1
                self.dispatch(now, obj)
            elif kind == _ENTER:
                self.enter(now, obj[0], obj[1])
            elif kind == _SCRAPE:
                rep = obj
                if not rep.draining and not rep.gone:
                    w, r_, kv = rep.reported
                    rep.log.add(now, w, r_, kv, rep.success)
                    rep.next_scrape = now + self.scrape_interval_s
                    self.push(rep.next_scrape, _SCRAPE, rep)
            elif kind == _READY:
                if not obj.gone and not obj.draining:
                    self.on_ready(now, obj)
            elif kind == _DECIDE:
                if self.until is None and self.remaining <= 0 and now >= self.horizon:
                    break
                desired = self.scaler.decide(now, self.view(now, window))
                self.scale_to(now, max(0, int(desired)), str(getattr(self.scaler, "reason", "")))
                self.push(now + interval, _DECIDE, None)
                if self.progress is not None and now >= next_progress:
                    self.progress(min(1.0, now / self.horizon) if self.horizon > 0 else 1.0)
                    next_progress = now + max(interval, self.horizon / 200)
            elif kind == _SAMPLE:
                self.sample(now)
                self.next_sample = now + self.sample_interval_s
                self.push(self.next_sample, _SAMPLE, None)
            elif kind == _DRAIN_DEADLINE and not obj.gone:
                self.remove(now, obj)
        for rep in self.replicas:
            if not rep.gone:
                rep.stop_waste(now)
                self.replica_seconds += now - rep.created
        if self.progress is not None:
            self.progress(1.0)
        return now


def simulate(
    requests: Sequence[Request],
    *,
    service: InferenceService,
    scaler: Scaler,
    setup: FleetSetup | None = None,
    gpu_type: str | None = None,
    profile: str | None = None,
    sim_args: Sequence[str] = (),
    gpus_per_node: int | None = None,
    cold_start_s: float = DEFAULT_COLD_START_S,
    scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S,
    query_delay_s: float = DEFAULT_QUERY_DELAY_S,
    metrics_step_s: float = OPERATOR_METRICS_STEP_S,
    drain_timeout_s: float | None = DEFAULT_DRAIN_TIMEOUT_S,
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
    initial_replicas: int | None = None,
    until: float | None = None,
    progress: Callable[[float], None] | None = None,
    cold_starts_s: Sequence[float] = (),
    decision_phase_s: float | None = None,
) -> SimResult:
    """Replays ``requests`` against a fleet of the service's replicas under ``scaler``.

    Starts with ``initial_replicas`` Ready replicas (default: spec.replicas, else
    minReplicas, at least 1) and runs until every request finished, or until ``until``
    when it is given (to watch the scale-down that follows).
    ``cold_starts_s`` are the cold starts of the replicas created in turn (those
    measured in a live run; ``cold_start_s`` after them); ``decision_phase_s`` is
    when the first decision falls (default one interval in): the operator's loop
    runs at its own phase to the trace, which a replay of a live run aligns.
    ``setup`` (from `fleet_setup`) saves planning again when many runs share it;
    otherwise ``gpu_type``, ``profile``, ``sim_args`` and ``gpus_per_node`` are passed
    to `fleet_setup`.
    """
    # Timings the event loop cannot run: a zero period would never advance time.
    periods = {
        "scrape interval": scrape_interval_s,
        "metrics step": metrics_step_s,
        "sample interval": sample_interval_s,
        "autoscale interval": scaler.interval_s,
    }
    delays = {
        "cold start": cold_start_s,
        "query delay": query_delay_s,
        "drain timeout": 0.0 if drain_timeout_s is None else drain_timeout_s,
    }
    bad = [f"{k} must be positive, got {v:g} s" for k, v in periods.items() if not v > 0]
    bad += [f"{k} must not be negative, got {v:g} s" for k, v in delays.items() if not v >= 0]
    if bad:
        raise ValueError("; ".join(bad))
    if initial_replicas is not None and initial_replicas < 1:
        raise ValueError(f"initial replicas must be at least 1, got {initial_replicas}")
    if setup is None:
        setup = fleet_setup(
            service,
            gpu_type=gpu_type,
            profile=profile,
            sim_args=sim_args,
            gpus_per_node=gpus_per_node,
        )
    reqs = sorted(requests, key=lambda r: r.arrival_s)
    start = initial_replicas if initial_replicas is not None else service.spec.desired_replicas
    fleet = _Fleet(
        reqs,
        setup,
        service,
        scaler,
        cold_start_s=cold_start_s,
        scrape_interval_s=scrape_interval_s,
        query_delay_s=query_delay_s,
        metrics_step_s=metrics_step_s,
        drain_timeout_s=drain_timeout_s,
        sample_interval_s=sample_interval_s,
        initial_replicas=max(1, start),
        until=until,
        progress=progress,
        cold_starts_s=cold_starts_s,
        decision_phase_s=decision_phase_s,
    )
    end = fleet.run()
    n = len(reqs)
    itl_mean = [
        (fleet.last_tok[i] - fleet.ttft[i] - reqs[i].arrival_s) / (fleet.ntok[i] - 1)
        if fleet.ntok[i] > 1 and not math.isnan(fleet.finish[i])
        else math.nan
        for i in range(n)
    ]
    e2e = [fleet.finish[i] - reqs[i].arrival_s for i in range(n)]
    s = fleet.series
    return SimResult(
        setup=setup,
        duration_s=end,
        requests=RequestResults(
            arrival=tuple(r.arrival_s for r in reqs),
            prompt_tokens=tuple(p for p, _ in fleet.lens),
            output_tokens=tuple(o for _, o in fleet.lens),
            ttft=tuple(fleet.ttft),
            e2e=tuple(e2e),
            itl_mean=tuple(itl_mean),
            itl_max=tuple(fleet.itl_max),
            replica=tuple(fleet.served_by),
            clipped=fleet.clipped,
            aborted=fleet.aborted,
        ),
        token_gaps=tuple(fleet.gaps),
        token_gap_counts=tuple(fleet.gap_counts),
        series=TimeSeries(
            interval=sample_interval_s,
            t=tuple(s["t"]),
            desired=tuple(s["desired"]),
            ready=tuple(s["ready"]),
            starting=tuple(s["starting"]),
            draining=tuple(s["draining"]),
            waiting=tuple(s["waiting"]),
            running=tuple(s["running"]),
            kv_usage=tuple(s["kv_usage"]),
            arrivals=tuple(s["arrivals"]),
        ),
        scale_events=tuple(fleet.events),
        replica_seconds=fleet.replica_seconds,
        wasted_replica_seconds=sum(r.wasted for r in fleet.replicas),
        peak_replicas=fleet.peak,
    )
