"""Multi-service placement on a shared GPU pool: GPU type, TP and replica count per service.

Deterministic greedy in two phases, both in priority order (higher first, then name):

1. Guarantees: every non-preemptible service gets its minReplicas (as far as the pool
   allows), so a higher-priority service's growth never pushes another below its minimum.
2. Growth: services grow toward the autoscaler's desired replicas; within one priority
   level replicas are handed out round-robin so equal services share a shortage.
   Preemptible services have no guarantee and compete for their minimum here.

Each service runs all its replicas on one GPU type at one TP. The type is the first of the
service's fit options that holds all wanted replicas, else the first that holds its
minimum, else the one that holds most; a service with running replicas keeps its current
type and TP while that is still a fit option (no migration for a better packing).
Replicas go best-fit: onto the node with the fewest GPUs left over, so fragments fill up
first and whole nodes stay free for large-TP replicas; nodes a service already runs on
come first, so the plan matches where pods are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

from kvpilot.planning.gpus import GIB
from kvpilot.planning.inventory import Inventory, pod_gpu_request
from kvpilot.planning.memory import MemoryBreakdown
from kvpilot.planning.tp import FitOption, FitResult, ModelFits

PlacementReason = Literal[
    "Placed", "NoGPUTypeFits", "InsufficientCapacity", "Preempted", "UnknownModelShape"
]


@dataclass(frozen=True)
class RunningReplicas:
    """Where a service runs now: its GPU type, TP, and replicas per node (may be empty)."""

    gpu_type: str
    tensor_parallel: int
    nodes: tuple[tuple[str, int], ...] = ()

    @property
    def replicas(self) -> int:
        return sum(n for _, n in self.nodes)


@dataclass(frozen=True)
class ServiceDemand:
    """One service as the placer sees it. `name` is unique in the plan (namespace/name)."""

    name: str
    fit: FitResult
    priority: int = 0
    min_replicas: int = 1
    max_replicas: int = 1
    desired_replicas: int | None = None
    preemptible: bool = False
    running: RunningReplicas | None = None

    @property
    def wanted(self) -> int:
        """Desired replicas clamped to [minReplicas, maxReplicas]; minReplicas when unset."""
        desired = self.min_replicas if self.desired_replicas is None else self.desired_replicas
        return max(self.min_replicas, min(desired, self.max_replicas))

    @property
    def guaranteed(self) -> int:
        return 0 if self.preemptible else min(self.min_replicas, self.wanted)


@dataclass(frozen=True)
class ServicePlacement:
    name: str
    reason: PlacementReason
    message: str
    priority: int
    min_replicas: int
    replicas_wanted: int
    replicas_placed: int
    option: FitOption | None = None
    nodes: tuple[tuple[str, int], ...] = ()

    @property
    def gpu_type(self) -> str | None:
        return self.option.gpu_type if self.option else None

    @property
    def tensor_parallel(self) -> int | None:
        return self.option.tensor_parallel if self.option else None

    @property
    def gpus_per_replica(self) -> int | None:
        return self.option.gpus_per_replica if self.option else None

    @property
    def memory(self) -> MemoryBreakdown | None:
        return self.option.memory if self.option else None

    @property
    def gpus_used(self) -> int:
        return self.replicas_placed * (self.gpus_per_replica or 0)


@dataclass(frozen=True)
class PlacementPlan:
    services: tuple[ServicePlacement, ...]
    free: tuple[tuple[str, int], ...]

    def service(self, name: str) -> ServicePlacement:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def gpus_used(self) -> int:
        return sum(s.gpus_used for s in self.services)


def pin_running(options: Sequence[FitOption], running: RunningReplicas | None) -> list[FitOption]:
    """The options a service may use: only its current GPU type and TP while it still fits.

    Moving running replicas to another GPU type restarts them (minutes of model load) for
    a packing gain the next scale event may undo, so a running service stays put.
    """
    if running is None or running.replicas == 0:
        return list(options)
    for option in options:
        if (option.gpu_type, option.tensor_parallel) == (
            running.gpu_type,
            running.tensor_parallel,
        ):
            return [option]
    return list(options)


DEFAULT_SEARCH_BUDGET = 400


def plan_placement(
    demands: Sequence[ServiceDemand],
    inventory: Inventory,
    *,
    keep_running: bool = True,
    search_budget: int = DEFAULT_SEARCH_BUDGET,
) -> PlacementPlan:
    """Place every service's replicas on the inventory's free GPUs; pure and deterministic.

    When the greedy pass leaves a service short, a local search tries moving one service
    (then two at once) to another of its GPU types and keeps a move when the plan gets better: more
    replicas by priority tier, then more services on their preferred type, then fewer GPUs.
    So a preference yields only to place more replicas, and a running service moves to
    another GPU type only when that places more replicas, never for a tighter packing.
    `search_budget` caps the number of trial plans.
    """
    names = [d.name for d in demands]
    if len(set(names)) != len(names):
        raise ValueError("service names in one plan must be unique")
    order = sorted(demands, key=lambda d: (-d.priority, d.name))
    placeable = [d for d in order if isinstance(d.fit, ModelFits)]
    best = _Run(placeable, inventory, keep_running, {})
    budget = search_budget
    while budget > 0 and best.short():
        found = None
        for moves in _moves(best):
            if budget <= 0:
                break
            budget -= 1
            trial = _Run(placeable, inventory, keep_running, best.forced | dict(moves))
            if _better(trial, best, [best.states[name] for name, _ in moves]):
                found = trial
                break
        if found is None:
            break
        best = found
    results = [_result(d, best.states.get(d.name), best.states, best.pool) for d in demands]
    return PlacementPlan(
        services=tuple(sorted(results, key=lambda r: r.name)),
        free=tuple(sorted(best.pool.free.items())),
    )


def _moves(run: _Run) -> Iterator[tuple[tuple[str, FitOption], ...]]:
    """Candidate GPU type changes: every single move first, then every pair of moves."""
    states = sorted(run.states.values(), key=lambda st: st.demand.name)
    singles = [
        (st.demand.name, option)
        for st in states
        for option in st.all_options
        if option != st.option
    ]
    for move in singles:
        yield (move,)
    for i, first in enumerate(singles):
        for second in singles[i + 1 :]:
            if first[0] != second[0]:
                yield (first, second)


def _better(trial: _Run, best: _Run, moved: Sequence[_State]) -> bool:
    """A running service moves only to place more replicas, never for packing or preference."""
    if any(st.running for st in moved):
        return trial.score()[:-2] > best.score()[:-2]
    return trial.score() > best.score()


class _Run:
    """One greedy pass (guarantees, then growth, then a tidy repack) with forced GPU types."""

    def __init__(
        self,
        placeable: Sequence[ServiceDemand],
        inventory: Inventory,
        keep_running: bool,
        forced: Mapping[str, FitOption],
    ) -> None:
        self.placeable = placeable
        self.forced = dict(forced)
        self.pool = pool = _Pool(inventory)
        self.states = {d.name: _State(d, keep_running) for d in placeable}
        everyone = list(self.states.values())
        for name, option in forced.items():
            self.states[name].option = option
        for _, level in groupby(placeable, key=lambda d: d.priority):
            members = [self.states[d.name] for d in level if d.guaranteed > 0]
            for s in members:
                if s.option is None:
                    s.choose(pool)
            _round_robin(pool, members, lambda s: s.demand.guaranteed, everyone)
        for _, level in groupby(placeable, key=lambda d: d.priority):
            members = [self.states[d.name] for d in level]
            for s in members:
                if s.option is None:
                    s.choose(pool)
            _round_robin(pool, members, lambda s: s.demand.wanted, everyone)
        for gpu_type in sorted(pool.by_type):
            _repack(pool, everyone, gpu_type)

    def short(self) -> bool:
        return any(s.placed < s.demand.wanted for s in self.states.values())

    def score(self) -> tuple[int, ...]:
        """Lexicographic: guaranteed replicas by priority level, all replicas by level,
        services on preferred types, fewer GPUs."""
        levels = sorted({d.priority for d in self.placeable}, reverse=True)
        states = list(self.states.values())
        guaranteed = [
            sum(min(s.placed, s.demand.guaranteed) for s in states if s.demand.priority == p)
            for p in levels
        ]
        placed = [sum(s.placed for s in states if s.demand.priority == p) for p in levels]
        detour = sum(s.all_options.index(s.option) for s in states if s.option in s.all_options)
        gpus = sum(s.placed * _gpus(s) for s in states)
        return (*guaranteed, *placed, -detour, -gpus)


class _Pool:
    """Mutable free-GPU bookkeeping for one planning run."""

    def __init__(self, inventory: Inventory) -> None:
        self.base_free: dict[str, int] = {}
        self.by_type: dict[str, list[str]] = {}
        for node in inventory.usable_nodes:
            assert node.gpu_type is not None
            self.base_free[node.name] = node.free
            self.by_type.setdefault(node.gpu_type, []).append(node.name)
        self.free = dict(self.base_free)

    def capacity(self, gpu_type: str, gpus: int) -> int:
        """Replicas of `gpus` GPUs each that still fit: a replica never spans nodes."""
        return sum(self.free[n] // gpus for n in self.by_type.get(gpu_type, ()))

    def largest_block(self, gpu_type: str) -> int:
        return max((self.free[n] for n in self.by_type.get(gpu_type, ())), default=0)

    def take(self, gpu_type: str, gpus: int, preferred: Mapping[str, int]) -> str | None:
        """Reserve one replica's GPUs: a node the service runs on, else best fit."""
        node = _best_fit(self.free, self.by_type.get(gpu_type, ()), gpus, preferred)
        if node is not None:
            self.free[node] -= gpus
        return node


def _best_fit(
    free: Mapping[str, int], nodes: Iterable[str], gpus: int, preferred: Mapping[str, int]
) -> str | None:
    fitting = [n for n in nodes if free[n] >= gpus]
    if not fitting:
        return None
    running = [n for n in fitting if preferred.get(n, 0) > 0]
    if running:
        return min(running)
    return min(fitting, key=lambda n: (free[n] - gpus, n))


class _State:
    def __init__(self, demand: ServiceDemand, keep_running: bool) -> None:
        assert isinstance(demand.fit, ModelFits)
        self.demand = demand
        running = demand.running if keep_running else None
        self.all_options = list(demand.fit.options)
        self.options = pin_running(demand.fit.options, running)
        self.option: FitOption | None = None
        self.nodes: dict[str, int] = {}
        self.running: dict[str, int] = {}
        if running is not None and len(self.options) == 1:
            pinned = self.options[0]
            if (pinned.gpu_type, pinned.tensor_parallel) == (
                running.gpu_type,
                running.tensor_parallel,
            ):
                self.running = dict(running.nodes)
        self.running_left = dict(self.running)

    @property
    def pinned(self) -> bool:
        return len(self.options) == 1

    @property
    def placed(self) -> int:
        return sum(self.nodes.values())

    def choose(self, pool: _Pool) -> None:
        d = self.demand
        need, want = max(1, d.guaranteed), max(1, d.wanted)
        caps = [pool.capacity(o.gpu_type, o.gpus_per_replica) for o in self.options]
        for threshold in (want, need):
            for option, cap in zip(self.options, caps, strict=True):
                if cap >= threshold:
                    self.option = option
                    return
        best = max(range(len(caps)), key=lambda i: (caps[i], -i))
        self.option = self.options[best]

    def place_one(self, pool: _Pool, states: Sequence[_State]) -> bool:
        """Add one replica: best fit on the current layout, else by repacking the GPU type."""
        assert self.option is not None
        node = pool.take(self.option.gpu_type, self.option.gpus_per_replica, self.running_left)
        if node is None:
            return _repack(pool, states, self.option.gpu_type, extra=self)
        self.nodes[node] = self.nodes.get(node, 0) + 1
        if self.running_left.get(node, 0) > 0:
            self.running_left[node] -= 1
        return True

    def set_nodes(self, nodes: Mapping[str, int]) -> None:
        self.nodes = {n: c for n, c in nodes.items() if c}
        self.running_left = {
            n: c - self.nodes.get(n, 0) for n, c in self.running.items() if c > self.nodes.get(n, 0)
        }


def _repack(
    pool: _Pool, states: Sequence[_State], gpu_type: str, extra: _State | None = None
) -> bool:
    """Lay out every replica on one GPU type afresh, best-fit decreasing; adopt it if all fit.

    Replicas keep the nodes they run on; the rest go largest first, so TP8 replicas take
    whole nodes before small ones fill the gaps. `extra` asks room for one more replica.
    """
    members = [
        st
        for st in states
        if st.option is not None
        and st.option.gpu_type == gpu_type
        and (st.placed > 0 or st is extra)
    ]
    free = {n: pool.base_free[n] for n in pool.by_type.get(gpu_type, ())}
    layout: dict[str, dict[str, int]] = {st.demand.name: {} for st in members}
    queue: list[_State] = []
    for st in members:
        assert st.option is not None
        gpus = st.option.gpus_per_replica
        count = st.placed + (1 if st is extra else 0)
        for node, running in sorted(st.running.items()):
            keep = min(running, count, free.get(node, 0) // gpus)
            if keep > 0:
                free[node] -= keep * gpus
                layout[st.demand.name][node] = keep
                count -= keep
        queue.extend([st] * count)
    queue.sort(key=lambda st: (-_gpus(st), -st.demand.priority, st.demand.name))
    for st in queue:
        found = _best_fit(free, free.keys(), _gpus(st), {})
        if found is None:
            return False
        free[found] -= _gpus(st)
        layout[st.demand.name][found] = layout[st.demand.name].get(found, 0) + 1
    for st in members:
        st.set_nodes(layout[st.demand.name])
    pool.free.update(free)
    return True


def _round_robin(
    pool: _Pool,
    members: list[_State],
    target: Callable[[_State], int],
    states: Sequence[_State],
) -> None:
    active = [s for s in members if s.placed < target(s)]
    while active:
        still = []
        for s in active:
            if s.place_one(pool, states) and s.placed < target(s):
                still.append(s)
        active = still


def _result(
    d: ServiceDemand, s: _State | None, states: Mapping[str, _State], pool: _Pool
) -> ServicePlacement:
    if s is None:
        assert not isinstance(d.fit, ModelFits)
        return ServicePlacement(
            name=d.name,
            reason=d.fit.reason,
            message=d.fit.message,
            priority=d.priority,
            min_replicas=d.min_replicas,
            replicas_wanted=d.wanted,
            replicas_placed=0,
        )
    option = s.option or s.options[0]
    reason: PlacementReason
    if s.placed >= d.wanted:
        reason = "Placed"
        message = (
            f"{s.placed} of {d.wanted} replicas placed on {option.gpu_type} "
            f"at TP{option.tensor_parallel}"
        )
        if option.reduced_kv:
            message += "; " + _reduced_note(option.memory)
    else:
        reason, message = _shortage(d, s, option, states, pool)
    if s.running and (option.gpu_type, option.tensor_parallel) != _running_key(d):
        gpu, tp = _running_key(d)
        message += f"; moves from {gpu} at TP{tp}, where fewer replicas fit"
    return ServicePlacement(
        name=d.name,
        reason=reason,
        message=message,
        priority=d.priority,
        min_replicas=d.min_replicas,
        replicas_wanted=d.wanted,
        replicas_placed=s.placed,
        option=option,
        nodes=tuple(sorted((n, c) for n, c in s.nodes.items() if c)),
    )


def _shortage(
    d: ServiceDemand, s: _State, option: FitOption, states: Mapping[str, _State], pool: _Pool
) -> tuple[PlacementReason, str]:
    placed, gpus = s.placed, option.gpus_per_replica
    types = {o.gpu_type for o in s.options}
    blockers = sorted(
        (
            other
            for other in states.values()
            if other.demand.priority > d.priority
            and other.option is not None
            and other.option.gpu_type in types
            and other.placed > 0
        ),
        key=lambda o: (-o.demand.priority, o.demand.name),
    )
    preempted = d.preemptible and placed < d.min_replicas and bool(blockers)
    below_min = " (below minReplicas)" if placed < d.min_replicas else ""
    message = (
        f"{placed} of {d.wanted} replicas placed{below_min} on {option.gpu_type} at "
        f"TP{option.tensor_parallel}: each replica needs {gpus} GPU{'s' if gpus > 1 else ''} "
        f"on one node, and "
    )
    if not pool.by_type.get(option.gpu_type):
        message += f"the pool has no schedulable {option.gpu_type} nodes"
    else:
        block = pool.largest_block(option.gpu_type)
        message += f"the largest free block of {option.gpu_type} is {block}"
    if blockers:
        held = ", ".join(
            f"{o.demand.name} (priority {o.demand.priority}, {o.placed * _gpus(o)} GPUs)"
            for o in blockers
        )
        message += f"; higher-priority services hold {held}"
    protected = sorted(
        (
            other
            for other in states.values()
            if other.demand.priority < d.priority
            and other.option is not None
            and other.option.gpu_type in types
            and 0 < other.placed <= other.demand.guaranteed
        ),
        key=lambda o: (-o.demand.priority, o.demand.name),
    )
    if protected:
        held = ", ".join(f"{o.demand.name} ({o.placed * _gpus(o)} GPUs)" for o in protected)
        message += f"; lower-priority services keep their minReplicas: {held}"
    if preempted:
        message = "preempted: " + message
    return ("Preempted" if preempted else "InsufficientCapacity"), message


def _running_key(d: ServiceDemand) -> tuple[str, int]:
    assert d.running is not None
    return (d.running.gpu_type, d.running.tensor_parallel)


def _gpus(s: _State) -> int:
    return s.option.gpus_per_replica if s.option else 0


def _reduced_note(mem: MemoryBreakdown) -> str:
    return (
        f"reduced KV cache: room for {mem.capacity_sequences:.1f} sequences of "
        f"{mem.max_model_len} tokens ({mem.kv_capacity_tokens * mem.kv_bytes_per_token / GIB:.1f} "
        f"GiB per GPU), below the default {mem.target_sequences}"
    )


SERVICE_LABEL = "kvpilot.io/inference-service"


def running_replicas(
    pods: Iterable[Mapping[str, Any]], inventory: Inventory
) -> dict[str, RunningReplicas]:
    """Where each kvpilot service runs now, keyed `namespace/name`, from its bound pods.

    TP is the pod's GPU request and the GPU type its node's; if a service's pods differ
    (mid-rollout), the most common (type, TP) counts as current.
    """
    node_type = {n.name: n.gpu_type for n in inventory.nodes}
    seen: dict[str, dict[tuple[str, int], list[str]]] = {}
    for pod in pods:
        meta: Mapping[str, Any] = pod.get("metadata") or {}
        labels: Mapping[str, str] = meta.get("labels") or {}
        service = labels.get(SERVICE_LABEL)
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if (
            not service
            or not node
            or phase in ("Succeeded", "Failed")
            or meta.get("deletionTimestamp")
        ):
            continue
        gpu = node_type.get(node)
        gpus = pod_gpu_request(pod)
        if gpu is None or gpus <= 0:
            continue
        key = f"{meta.get('namespace') or 'default'}/{service}"
        seen.setdefault(key, {}).setdefault((gpu, gpus), []).append(node)
    out: dict[str, RunningReplicas] = {}
    for key, groups in seen.items():
        (gpu, tp), nodes = max(groups.items(), key=lambda kv: (len(kv[1]), kv[0]))
        out[key] = running_from_nodes(gpu, tp, nodes)
    return out


def running_from_nodes(
    gpu_type: str, tensor_parallel: int, nodes: Iterable[str]
) -> RunningReplicas:
    """RunningReplicas from the node names of a service's running pods (one per pod)."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node] = counts.get(node, 0) + 1
    return RunningReplicas(gpu_type, tensor_parallel, tuple(sorted(counts.items())))
