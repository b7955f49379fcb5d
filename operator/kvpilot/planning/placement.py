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
type and TP while that is still a fit option (no migration for a better packing; the
return to a better option of its own once one frees up is planning.upgrade's).
Replicas go best-fit: onto the node with the fewest GPUs left over, so fragments fill up
first and whole nodes stay free for large-TP replicas; nodes a service already runs on
come first, so the plan matches where pods are.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import groupby, islice
from typing import Any, Literal

from kvpilot.api.names import INFERENCE_SERVICE, REVISION
from kvpilot.planning.gpus import GIB
from kvpilot.planning.inventory import Inventory, pod_gpu_request
from kvpilot.planning.memory import MemoryBreakdown
from kvpilot.planning.tp import FitOption, FitResult, ModelFits

PlacementReason = Literal[
    "Placed",
    "NoGPUTypeFits",
    "InsufficientCapacity",
    "Preempted",
    "UnknownModelShape",
    "InvalidModelConfig",
]


@dataclass(frozen=True)
class RunningReplicas:
    """Where a service runs now: its GPU type, TP, and replicas per node (may be empty).

    `leaving`: GPUs per node its older replicas still hold on another GPU type while a
    rollout moves it (they go once the new ones are Ready), and `leaving_from` that
    type and TP. The plan counts those GPUs as used, so nobody is planned onto them.
    """

    gpu_type: str
    tensor_parallel: int
    nodes: tuple[tuple[str, int], ...] = ()
    leaving: tuple[tuple[str, int], ...] = ()
    leaving_from: tuple[str, int] | None = None

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
    #: nodes being freed for this service (reservations of earlier moves): its replicas
    #: go there first
    claimed: tuple[str, ...] = ()
    #: (GPU type, TP) options an upgrade must not move it to: their revision failed
    avoid: tuple[tuple[str, int], ...] = ()

    @property
    def wanted(self) -> int:
        """Desired replicas clamped to [minReplicas, maxReplicas]; minReplicas when unset."""
        desired = self.min_replicas if self.desired_replicas is None else self.desired_replicas
        return max(self.min_replicas, min(desired, self.max_replicas))

    @property
    def guaranteed(self) -> int:
        return 0 if self.preemptible else min(self.min_replicas, self.wanted)


@dataclass(frozen=True)
class TypeMove:
    """A running service that changes GPU type and TP: its revision changes, so a rollout
    carries it out make before break (new replicas Ready first, then the old ones go).

    `reason` is `BetterGPUType` when this plan starts it (planning.upgrade), `Moving`
    while the rollout runs (replicas of both types live).
    """

    service: str
    from_option: tuple[str, int]
    to_option: tuple[str, int]
    replicas: int
    reason: Literal["BetterGPUType", "Moving"]
    why: str

    def describe(self) -> str:
        (a, atp), (b, btp) = self.from_option, self.to_option
        return f"{self.service}: {self.replicas} replica(s) {a} TP{atp} -> {b} TP{btp} ({self.why})"

    def sentence(self) -> str:
        """What a status condition or Event says about it."""
        (a, atp), (b, btp) = self.from_option, self.to_option
        return f"moving from {a} at TP{atp} to {b} at TP{btp}: {self.why}"


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
    #: set while the service changes GPU type (planning.upgrade, or a rollout under way)
    type_move: TypeMove | None = None

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
class Move:
    """Running replicas of `service` that leave `from_node` so `for_service` fits there.

    Make before break: replacements start on `to_nodes` (where the plan puts them) and
    the old replicas go once those are Ready.
    """

    service: str
    from_node: str
    replicas: int
    to_nodes: tuple[tuple[str, int], ...]
    for_service: str
    why: str

    def describe(self) -> str:
        to = ", ".join(f"{n} x{c}" for n, c in self.to_nodes)
        return f"{self.service}: {self.replicas} replica(s) {self.from_node} -> {to} ({self.why})"


@dataclass(frozen=True)
class PlacementPlan:
    """Every service's placement and the free GPUs per node left after it.

    `type_choices` are the GPU types the local search chose over the greedy pass's
    (service, GPU type, TP); a later plan can start from them. `moves` are the running
    replicas the plan relocates to make room for a waiting one (planning.defrag);
    `type_moves` the services changing GPU type (planning.upgrade, or under way).
    """

    services: tuple[ServicePlacement, ...]
    free: tuple[tuple[str, int], ...]
    type_choices: tuple[tuple[str, str, int], ...] = ()
    moves: tuple[Move, ...] = ()
    type_moves: tuple[TypeMove, ...] = ()

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
# Trial plans times services: a trial replays the whole greedy pass, so on a large pool
# the search gets fewer trials (400 trials up to 40 services, 12 at 1,000).
DEFAULT_SEARCH_WORK = 12_000


def plan_placement(
    demands: Sequence[ServiceDemand],
    inventory: Inventory,
    *,
    keep_running: bool = True,
    search_budget: int = DEFAULT_SEARCH_BUDGET,
    search_work: int = DEFAULT_SEARCH_WORK,
    start: Mapping[str, tuple[str, int]] | None = None,
    search_only: Iterable[str] | None = None,
) -> PlacementPlan:
    """Place every service's replicas on the inventory's free GPUs; pure and deterministic.

    When the greedy pass leaves a service short, a local search tries moving one service
    (then two at once) to another of its GPU types and keeps a move when the plan gets better: more
    replicas by priority tier, then more services on their preferred type, then fewer GPUs.
    So a preference yields only to place more replicas, and a running service moves to
    another GPU type only when that places more replicas, never for a tighter packing.
    `search_budget` caps the trial plans and `search_work` caps trials x services.

    `start` (service -> (GPU type, TP)) seeds the search with moves an earlier plan kept,
    and `search_only` limits the search to moves of those services and of services the
    greedy pass leaves short: `PoolPlanner` uses
    both to re-plan after a few services changed without repeating the whole search.
    """
    names = [d.name for d in demands]
    if len(set(names)) != len(names):
        raise ValueError("service names in one plan must be unique")
    if keep_running:
        inventory = holding_leaving(inventory, demands)
    order = sorted(demands, key=lambda d: (-d.priority, d.name))
    placeable = [d for d in order if isinstance(d.fit, ModelFits)]
    forced: dict[str, FitOption] = {}
    for d in placeable:
        key = (start or {}).get(d.name)
        if key is not None:
            assert isinstance(d.fit, ModelFits)
            found = next((o for o in d.fit.options if (o.gpu_type, o.tensor_parallel) == key), None)
            if found is not None:
                forced[d.name] = found
    best = _Run(placeable, inventory, keep_running, forced)
    only = None
    if search_only is not None:
        only = set(search_only) | {n for n, st in best.states.items() if st.placed < st.wanted}
    budget = min(search_budget, search_work // max(1, len(placeable)))
    while budget > 0 and best.short():
        found_run = None
        for moves in _moves(best, only):
            if budget <= 0:
                break
            budget -= 1
            trial = _Run(placeable, inventory, keep_running, best.forced | dict(moves))
            if _better(trial, best, [best.states[name] for name, _ in moves]):
                found_run = trial
                break
        if found_run is None:
            break
        best = found_run
    holders = _Holders(best.states)
    results = [_result(d, best.states.get(d.name), holders, best.pool) for d in demands]
    return PlacementPlan(
        services=tuple(sorted(results, key=lambda r: r.name)),
        free=tuple(sorted(best.pool.free_by_node().items())),
        type_choices=tuple(
            sorted((n, o.gpu_type, o.tensor_parallel) for n, o in best.forced.items())
        ),
        type_moves=tuple(r.type_move for r in sorted(results, key=lambda r: r.name) if r.type_move),
    )


def holding_leaving(inventory: Inventory, demands: Sequence[ServiceDemand]) -> Inventory:
    """The inventory with the GPUs that services' leaving replicas hold counted as used:
    while a rollout moves a service to another GPU type both run, and the old replicas'
    GPUs are nobody else's until they go."""
    held: dict[str, int] = {}
    for d in demands:
        if d.running is not None:
            for node, gpus in d.running.leaving:
                held[node] = held.get(node, 0) + gpus
    if not held:
        return inventory
    return Inventory(
        tuple(
            replace(n, requested=n.requested + held[n.name]) if n.name in held else n
            for n in inventory.nodes
        )
    )


def _moves(run: _Run, only: set[str] | None) -> Iterator[tuple[tuple[str, FitOption], ...]]:
    """Candidate GPU type changes: every single move first, then every pair of moves.

    Singles that can change the outcome on their own come first: a short service to
    another type, or any service to a type with GPUs left over (freeing room where it
    was). On a large pool the work budget ends the search after a few trials, so those
    are the ones tried.
    """
    states = sorted(run.states.values(), key=lambda st: st.demand.name)
    likely: list[tuple[str, FitOption]] = []
    rest: list[tuple[str, FitOption]] = []
    for st in states:
        if only is not None and st.demand.name not in only:
            continue
        for option in st.all_options:
            if option == st.option:
                continue
            room = run.pool.total_free(option.gpu_type) >= option.gpus_per_replica
            if st.placed < st.wanted or room:
                likely.append((st.demand.name, option))
            else:
                rest.append((st.demand.name, option))
    singles = likely + rest
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
        self.states = {d.name: _State(d, keep_running, i) for i, d in enumerate(placeable)}
        self._score: tuple[int, ...] | None = None
        by_type: dict[str, list[_State]] = {}
        for name, option in forced.items():
            self.states[name].option = option
            by_type.setdefault(option.gpu_type, []).append(self.states[name])
        levels = [
            [self.states[d.name] for d in level]
            for _, level in groupby(placeable, key=lambda d: d.priority)
        ]
        # Running, non-preemptible replicas up to minReplicas come first, whatever the
        # priority: no other service, of any tenant, can take a service's running minimum.
        protected = [s for level in levels for s in level if s.protected > 0]
        for s in protected:
            if s.option is None:
                s.choose(pool)
                by_type.setdefault(s.gpu_type, []).append(s)
        _round_robin(pool, protected, lambda s: s.protected, by_type)
        for level in levels:
            members = [s for s in level if s.guaranteed > 0]
            for s in members:
                if s.option is None:
                    s.choose(pool)
                    by_type.setdefault(s.gpu_type, []).append(s)
            _round_robin(pool, members, lambda s: s.guaranteed, by_type)
        for level in levels:
            for s in level:
                if s.option is None:
                    s.choose(pool)
                    by_type.setdefault(s.gpu_type, []).append(s)
            _round_robin(pool, level, lambda s: s.wanted, by_type)
        for gpu_type in sorted(pool.types):
            _repack(pool, by_type.get(gpu_type, []), gpu_type)

    def short(self) -> bool:
        return any(s.placed < s.wanted for s in self.states.values())

    def score(self) -> tuple[int, ...]:
        """Lexicographic: protected running minimums, guaranteed replicas by priority
        level, all replicas by level, services on preferred types, fewer GPUs."""
        if self._score is not None:
            return self._score
        levels = sorted({d.priority for d in self.placeable}, reverse=True)
        index = {p: i for i, p in enumerate(levels)}
        guaranteed = [0] * len(levels)
        placed = [0] * len(levels)
        detour = gpus = protected = 0
        for s in self.states.values():
            protected += min(s.placed, s.protected)
            i = index[s.demand.priority]
            guaranteed[i] += min(s.placed, s.guaranteed)
            placed[i] += s.placed
            if s.option is not None and s.option in s.all_options:
                detour += s.all_options.index(s.option)
            gpus += s.placed * _gpus(s)
        self._score = (protected, *guaranteed, *placed, -detour, -gpus)
        return self._score


class _Nodes:
    """Free GPUs of one GPU type's nodes, bucketed by free count so best fit is cheap."""

    __slots__ = ("buckets", "caps", "failed", "free", "total")

    def __init__(self, free: Mapping[str, int]) -> None:
        self.free = dict(free)
        self.total = sum(self.free.values())
        self.buckets: dict[int, set[str]] = {}
        # Smallest replica size a repack of this type failed to make room for: the type
        # only fills up within a pass, so a larger replica cannot fit either.
        self.failed: int | None = None
        self.caps: dict[int, int] = {}
        for node, count in self.free.items():
            if count > 0:
                self.buckets.setdefault(count, set()).add(node)

    def take(self, node: str, gpus: int) -> None:
        self.caps.clear()
        count = self.free[node]
        bucket = self.buckets[count]
        bucket.discard(node)
        if not bucket:
            del self.buckets[count]
        count -= gpus
        self.free[node] = count
        self.total -= gpus
        if count > 0:
            self.buckets.setdefault(count, set()).add(node)

    def best_fit(self, gpus: int) -> str | None:
        """The node with the fewest GPUs left over after this replica (then by name)."""
        sizes = [c for c in self.buckets if c >= gpus]
        return min(self.buckets[min(sizes)]) if sizes else None

    def capacity(self, gpus: int) -> int:
        cap = self.caps.get(gpus)
        if cap is None:
            cap = self.caps[gpus] = sum(
                len(nodes) * (count // gpus) for count, nodes in self.buckets.items()
            )
        return cap

    def largest(self) -> int:
        return max(self.buckets, default=0)


class _Pool:
    """Mutable free-GPU bookkeeping for one planning run."""

    def __init__(self, inventory: Inventory) -> None:
        self.base_free: dict[str, dict[str, int]] = {}
        for node in inventory.usable_nodes:
            assert node.gpu_type is not None
            self.base_free.setdefault(node.gpu_type, {})[node.name] = node.free
        self.types = {t: _Nodes(free) for t, free in self.base_free.items()}

    def has_type(self, gpu_type: str) -> bool:
        return gpu_type in self.types

    def total_free(self, gpu_type: str) -> int:
        nodes = self.types.get(gpu_type)
        return nodes.total if nodes is not None else 0

    def capacity(self, gpu_type: str, gpus: int) -> int:
        """Replicas of `gpus` GPUs each that still fit: a replica never spans nodes."""
        nodes = self.types.get(gpu_type)
        return nodes.capacity(gpus) if nodes is not None else 0

    def largest_block(self, gpu_type: str) -> int:
        nodes = self.types.get(gpu_type)
        return nodes.largest() if nodes is not None else 0

    def take(
        self,
        gpu_type: str,
        gpus: int,
        preferred: Mapping[str, int],
        claimed: Sequence[str] = (),
    ) -> str | None:
        """Reserve one replica's GPUs: a node the service runs on, else a node freed for
        it, else best fit."""
        nodes = self.types.get(gpu_type)
        if nodes is None or nodes.total < gpus:
            return None
        node = min(
            (n for n, left in preferred.items() if left > 0 and nodes.free.get(n, 0) >= gpus),
            default=None,
        )
        if node is None:
            node = min((n for n in claimed if nodes.free.get(n, 0) >= gpus), default=None)
        if node is None:
            node = nodes.best_fit(gpus)
        if node is not None:
            nodes.take(node, gpus)
        return node

    def free_by_node(self) -> dict[str, int]:
        return {n: c for nodes in self.types.values() for n, c in nodes.free.items()}


class _State:
    def __init__(self, demand: ServiceDemand, keep_running: bool, rank: int) -> None:
        assert isinstance(demand.fit, ModelFits)
        self.demand = demand
        self.rank = rank  # position in priority order
        self.wanted = demand.wanted
        self.guaranteed = demand.guaranteed
        running = demand.running if keep_running else None
        self.all_options = list(demand.fit.options)
        self.options = pin_running(demand.fit.options, running)
        self.option: FitOption | None = None
        self.nodes: dict[str, int] = {}
        self.placed = 0
        self.running: dict[str, int] = {}
        if running is not None and len(self.options) == 1:
            pinned = self.options[0]
            if (pinned.gpu_type, pinned.tensor_parallel) == (
                running.gpu_type,
                running.tensor_parallel,
            ):
                self.running = dict(running.nodes)
        self.running_left = dict(self.running)
        #: nodes freed for this service: preferred after the nodes it runs on
        self.claimed = demand.claimed
        #: running replicas no other service may take: non-preemptible, up to minReplicas
        self.protected = min(self.guaranteed, sum(self.running.values()))

    @property
    def pinned(self) -> bool:
        return len(self.options) == 1

    @property
    def gpu_type(self) -> str:
        assert self.option is not None
        return self.option.gpu_type

    def choose(self, pool: _Pool) -> None:
        need, want = max(1, self.guaranteed), max(1, self.wanted)
        caps = [pool.capacity(o.gpu_type, o.gpus_per_replica) for o in self.options]
        for threshold in (want, need):
            for option, cap in zip(self.options, caps, strict=True):
                if cap >= threshold:
                    self.option = option
                    return
        best = max(range(len(caps)), key=lambda i: (caps[i], -i))
        self.option = self.options[best]

    def place_one(self, pool: _Pool, by_type: Mapping[str, Sequence[_State]]) -> bool:
        """Add one replica: best fit on the current layout, else by repacking the GPU type."""
        assert self.option is not None
        gpu_type, gpus = self.option.gpu_type, self.option.gpus_per_replica
        node = pool.take(gpu_type, gpus, self.running_left, self.claimed)
        if node is None:
            return _repack(pool, by_type.get(gpu_type, []), gpu_type, extra=self)
        self.nodes[node] = self.nodes.get(node, 0) + 1
        self.placed += 1
        if self.running_left.get(node, 0) > 0:
            self.running_left[node] -= 1
        return True

    def set_nodes(self, nodes: Mapping[str, int]) -> None:
        self.nodes = {n: c for n, c in nodes.items() if c}
        self.placed = sum(self.nodes.values())
        self.running_left = {
            n: c - self.nodes.get(n, 0) for n, c in self.running.items() if c > self.nodes.get(n, 0)
        }


def _repack(
    pool: _Pool, states: Sequence[_State], gpu_type: str, extra: _State | None = None
) -> bool:
    """Lay out every replica on one GPU type afresh, best-fit decreasing; adopt it if all fit.

    Replicas keep the nodes they run on (then nodes freed for them); the rest go largest
    first, so TP8 replicas take whole nodes before small ones fill the gaps. `extra` asks
    room for one more replica. A repack is skipped when it cannot succeed: fewer free GPUs
    than the replica needs, or an earlier repack of this pass already failed for a replica
    as large.
    """
    current = pool.types.get(gpu_type)
    if current is None:
        return False
    if extra is not None:
        need = _gpus(extra)
        if current.total < need or (current.failed is not None and need >= current.failed):
            return False
    members = sorted((st for st in states if st.placed > 0 or st is extra), key=lambda st: st.rank)
    nodes = _Nodes(pool.base_free[gpu_type])
    layout: dict[str, dict[str, int]] = {st.demand.name: {} for st in members}
    queue: list[tuple[_State, int]] = []
    for st in members:
        assert st.option is not None
        gpus = st.option.gpus_per_replica
        count = st.placed + (1 if st is extra else 0)
        kept = [*sorted(st.running.items()), *((n, count) for n in st.claimed)]
        for node, running in kept:
            keep = min(running, count, nodes.free.get(node, 0) // gpus)
            for _ in range(keep):
                nodes.take(node, gpus)
            if keep > 0:
                where = layout[st.demand.name]
                where[node] = where.get(node, 0) + keep
                count -= keep
        if count > 0:
            queue.append((st, count))
    queue.sort(key=lambda item: (-_gpus(item[0]), -item[0].demand.priority, item[0].demand.name))
    for st, count in queue:
        gpus = _gpus(st)
        where = layout[st.demand.name]
        for _ in range(count):
            found = nodes.best_fit(gpus)
            if found is None:
                if extra is not None:
                    need = _gpus(extra)
                    current.failed = need if current.failed is None else min(current.failed, need)
                return False
            nodes.take(found, gpus)
            where[found] = where.get(found, 0) + 1
    for st in members:
        st.set_nodes(layout[st.demand.name])
    nodes.failed = current.failed
    pool.types[gpu_type] = nodes
    return True


def _round_robin(
    pool: _Pool,
    members: list[_State],
    target: Callable[[_State], int],
    by_type: Mapping[str, Sequence[_State]],
) -> None:
    active = [s for s in members if s.placed < target(s)]
    while active:
        still = []
        for s in active:
            if s.place_one(pool, by_type) and s.placed < target(s):
                still.append(s)
        active = still


def _result(d: ServiceDemand, s: _State | None, holders: _Holders, pool: _Pool) -> ServicePlacement:
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
        reason, message = _shortage(d, s, option, holders, pool)
    if s.running and (option.gpu_type, option.tensor_parallel) != _running_key(d):
        gpu, tp = _running_key(d)
        message += f"; moves from {gpu} at TP{tp}, where fewer replicas fit"
    type_move = None
    run = d.running
    if (
        s.running
        and run is not None
        and run.leaving_from is not None
        and (option.gpu_type, option.tensor_parallel) == _running_key(d)
    ):
        old, old_tp = run.leaving_from
        leaving = sum(g for _, g in run.leaving) // max(1, old_tp)
        why = (
            f"rolling out: {leaving} replica(s) on {old} go once {s.placed} on "
            f"{option.gpu_type} are Ready"
        )
        type_move = TypeMove(d.name, run.leaving_from, _running_key(d), s.placed, "Moving", why)
        message += f"; moving from {old} at TP{old_tp}: {why}"
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
        type_move=type_move,
    )


_LISTED = 5


class _Holders:
    """Who holds each GPU type, sorted by priority: the shortage messages' raw material."""

    def __init__(self, states: Mapping[str, _State]) -> None:
        by_type: dict[str, list[_State]] = {}
        for st in states.values():
            if st.option is not None and st.placed > 0:
                by_type.setdefault(st.option.gpu_type, []).append(st)
        self.all = {t: _ByPriority(m) for t, m in by_type.items()}
        self.at_minimum = {
            t: _ByPriority([o for o in m if o.placed <= o.guaranteed]) for t, m in by_type.items()
        }
        self._explained: dict[tuple[tuple[str, ...], int], tuple[bool, str]] = {}

    def explain(self, types: tuple[str, ...], priority: int) -> tuple[bool, str]:
        """Whether higher-priority services hold these types, and who holds them (cached:
        short services of one priority on the same types share it)."""
        key = (types, priority)
        found = self._explained.get(key)
        if found is None:
            text = ""
            blockers, blocking = self.above(types, priority)
            if blockers:
                held = _listing(
                    [
                        f"{o.demand.name} (priority {o.demand.priority}, "
                        f"{_gpu_count(o.placed * _gpus(o))})"
                        for o in blockers
                    ],
                    blocking,
                )
                text += f"; higher-priority services hold {held}"
            protected, protecting = self.below_at_minimum(types, priority)
            if protected:
                held = _listing(
                    [f"{o.demand.name} ({_gpu_count(o.placed * _gpus(o))})" for o in protected],
                    protecting,
                )
                text += f"; lower-priority services keep their minReplicas: {held}"
            found = self._explained[key] = (bool(blockers), text)
        return found

    def above(self, types: Iterable[str], priority: int) -> tuple[list[_State], int]:
        """The first few holders of these types with a higher priority, and how many."""
        ranges = [(h, 0, h.first_at_or_below(priority)) for t in types if (h := self.all.get(t))]
        return _first(ranges), sum(end for _, _, end in ranges)

    def below_at_minimum(self, types: Iterable[str], priority: int) -> tuple[list[_State], int]:
        """The first few lower-priority holders of these types that hold only their guarantee."""
        ranges = [
            (h, h.first_below(priority), len(h.members))
            for t in types
            if (h := self.at_minimum.get(t))
        ]
        return _first(ranges), sum(end - begin for _, begin, end in ranges)


class _ByPriority:
    def __init__(self, members: Iterable[_State]) -> None:
        self.members = sorted(members, key=lambda o: (-o.demand.priority, o.demand.name))
        self.keys = [-o.demand.priority for o in self.members]

    def first_at_or_below(self, priority: int) -> int:
        return bisect_left(self.keys, -priority)

    def first_below(self, priority: int) -> int:
        return bisect_right(self.keys, -priority)


def _first(ranges: Sequence[tuple[_ByPriority, int, int]]) -> list[_State]:
    if len(ranges) == 1:
        h, begin, end = ranges[0]
        return h.members[begin:end][:_LISTED]
    merged = heapq.merge(
        *(h.members[begin:end][:_LISTED] for h, begin, end in ranges),
        key=lambda o: (-o.demand.priority, o.demand.name),
    )
    return list(islice(merged, _LISTED))


def _listing(shown: Sequence[str], total: int) -> str:
    """The first few names of a long list, and how many more there are."""
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _shortage(
    d: ServiceDemand, s: _State, option: FitOption, holders: _Holders, pool: _Pool
) -> tuple[PlacementReason, str]:
    placed, gpus = s.placed, option.gpus_per_replica
    types = tuple(sorted({o.gpu_type for o in s.options}))
    blocked, held = holders.explain(types, d.priority)
    preempted = d.preemptible and placed < d.min_replicas and blocked
    below_min = " (below minReplicas)" if placed < d.min_replicas else ""
    message = (
        f"{placed} of {d.wanted} replicas placed{below_min} on {option.gpu_type} at "
        f"TP{option.tensor_parallel}: each replica needs {gpus} GPU{'s' if gpus > 1 else ''} "
        f"on one node, and "
    )
    if not pool.has_type(option.gpu_type):
        message += f"the pool has no schedulable {option.gpu_type} nodes"
    else:
        block = pool.largest_block(option.gpu_type)
        message += f"the largest free block of {option.gpu_type} is {block}"
    message += held
    if preempted:
        message = "preempted: " + message
    return ("Preempted" if preempted else "InsufficientCapacity"), message


def _running_key(d: ServiceDemand) -> tuple[str, int]:
    assert d.running is not None
    return (d.running.gpu_type, d.running.tensor_parallel)


def _gpu_count(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _gpus(s: _State) -> int:
    return s.option.gpus_per_replica if s.option else 0


def _reduced_note(mem: MemoryBreakdown) -> str:
    return (
        f"reduced KV cache: room for {mem.capacity_sequences:.1f} sequences of "
        f"{mem.max_model_len} tokens ({mem.kv_capacity_tokens * mem.kv_bytes_per_token / GIB:.1f} "
        f"GiB per GPU), below the default {mem.target_sequences}"
    )


SERVICE_LABEL = INFERENCE_SERVICE
REVISION_LABEL = REVISION


def running_replicas(
    pods: Iterable[Mapping[str, Any]], inventory: Inventory
) -> dict[str, RunningReplicas]:
    """Where each kvpilot service runs now, keyed `namespace/name`, from its bound pods.

    TP is the pod's GPU request and the GPU type its node's. If a service's pods differ
    (mid-rollout), the (type, TP) of its newest revision (the one whose first pod was
    created last) is current: a rollout to another GPU type is followed from its first
    bound pod on, so the plan never points back at the old type while both run. Its
    pods on other GPU types are `leaving`: their GPUs stay held until they go.
    """
    node_type = {n.name: n.gpu_type for n in inventory.nodes}
    seen: dict[str, list[tuple[str, int, str, str, str]]] = {}
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
        revision = str(labels.get(REVISION_LABEL) or "")
        created = str(meta.get("creationTimestamp") or "")
        seen.setdefault(key, []).append((gpu, gpus, node, revision, created))
    out: dict[str, RunningReplicas] = {}
    for key, found in seen.items():
        first: dict[str, str] = {}
        for _, _, _, revision, created in found:
            if revision not in first or created < first[revision]:
                first[revision] = created
        newest = max(first, key=lambda r: (first[r], r))
        current = _most_common((g, t) for g, t, _, r, _ in found if r == newest)
        gpu, tp = current
        nodes = [n for g, t, n, _, _ in found if (g, t) == current]
        leaving: dict[str, int] = {}
        for g, t, n, _, _ in found:
            if g != gpu:
                leaving[n] = leaving.get(n, 0) + t
        run = running_from_nodes(gpu, tp, nodes)
        if leaving:
            run = replace(
                run,
                leaving=tuple(sorted(leaving.items())),
                leaving_from=_most_common((g, t) for g, t, _, _, _ in found if g != gpu),
            )
        out[key] = run
    return out


def _most_common(keys: Iterable[tuple[str, int]]) -> tuple[str, int]:
    counts: dict[tuple[str, int], int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


def running_from_nodes(
    gpu_type: str, tensor_parallel: int, nodes: Iterable[str]
) -> RunningReplicas:
    """RunningReplicas from the node names of a service's running pods (one per pod)."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node] = counts.get(node, 0) + 1
    return RunningReplicas(gpu_type, tensor_parallel, tuple(sorted(counts.items())))


def running_from_plan(plan: PlacementPlan) -> dict[str, RunningReplicas]:
    """The replicas a plan puts on nodes, as if they were running (what-if and churn)."""
    return {
        s.name: RunningReplicas(s.option.gpu_type, s.option.tensor_parallel, s.nodes)
        for s in plan.services
        if s.option is not None and s.nodes
    }


def moved_replicas(before: PlacementPlan, after: PlacementPlan) -> dict[str, int]:
    """Replicas per service that a change of plan restarts elsewhere (services with moves).

    A replica moves when its service keeps running but on another node, or on another GPU
    type or TP (every replica that stays in service restarts then); replicas only added or
    only removed are scaling, not moves.
    """
    old = {s.name: s for s in before.services}
    out: dict[str, int] = {}
    for s in after.services:
        prev = old.get(s.name)
        if prev is None or not prev.nodes or not s.nodes:
            continue
        if (prev.gpu_type, prev.tensor_parallel) != (s.gpu_type, s.tensor_parallel):
            moved = min(prev.replicas_placed, s.replicas_placed)
        else:
            was, now = dict(prev.nodes), dict(s.nodes)
            removed = sum(max(0, c - now.get(n, 0)) for n, c in was.items())
            added = sum(max(0, c - was.get(n, 0)) for n, c in now.items())
            moved = min(removed, added)
        if moved:
            out[s.name] = moved
    return out
