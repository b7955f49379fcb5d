"""A step-driven model of one vLLM V1 engine replica.

It follows the V1 scheduler closely because the autoscaler reads what this
scheduler produces (queue length, KV-cache usage, preemptions, TTFT):

* continuous batching: each step first advances the running requests in order
  (decode tokens and unfinished prefill chunks), then admits waiting requests
  while the token budget (``max_num_batched_tokens``) and ``max_num_seqs`` allow;
  prompts longer than the remaining budget are prefilled in chunks;
* a paged KV cache of ``block_size``-token blocks with one reserved null block,
  an LRU free queue and, optionally, prefix caching of full blocks by chained hash;
* preemption by recompute: when a running request cannot get a block, the last
  running request (FCFS) loses its blocks and goes back to the head of the queue;
* a step takes :func:`kvpilot_runtime.latency.step_time` of its batch.

The engine holds no clock: :meth:`Engine.step` is given the current time and
returns how long the step takes, so a real-time server and a discrete-event
fleet simulator drive the same code. Deterministic for a given seed.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import zlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvpilot_runtime.latency import GIB, Batch, ModelShape, PrefillChunk, Profile, step_time

BLOCK_SIZE = 16


def _token_bytes(tokens: Sequence[int]) -> bytes:
    """Token ids as 4-byte little-endian unsigned integers (the block-hash input)."""
    data = array("I", tokens)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()


@dataclass(frozen=True)
class EngineConfig:
    """The vLLM arguments that shape scheduling, plus the KV-cache size in blocks."""

    num_blocks: int
    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = BLOCK_SIZE
    enable_prefix_caching: bool = False
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    tensor_parallel_size: int = 1
    # Multiplicative log-normal noise on step times (sigma); 0 keeps them exact.
    step_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_blocks < 2:
            raise ValueError("the KV cache needs at least 2 blocks (one is the null block)")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_model_len < 2:
            raise ValueError(
                "max_num_seqs, max_num_batched_tokens and max_model_len must be positive"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                "max_num_batched_tokens must be at least max_model_len without chunked prefill"
            )
        usable_tokens = (self.num_blocks - 1) * self.block_size
        if self.max_model_len > usable_tokens:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) is larger than the maximum number of "
                f"tokens that can be stored in the KV cache ({usable_tokens})"
            )


def gpu_kv_cache_blocks(
    shape: ModelShape,
    tp: int,
    memory_gib: float,
    gpu_memory_utilization: float,
    *,
    block_size: int = BLOCK_SIZE,
    reserved_gib: float = 1.5,
) -> int:
    """Blocks vLLM allocates on a GPU: utilization x memory, less weights and a reserve.

    The reserve stands for peak activations, CUDA graphs and non-torch memory that
    vLLM's profiling run measures; every rank holds the same number of blocks.
    """
    budget = memory_gib * GIB * gpu_memory_utilization - shape.weight_bytes_per_gpu(tp)
    budget -= reserved_gib * GIB
    per_block = shape.kv_bytes_per_token_per_gpu(tp) * block_size
    return max(0, int(budget // per_block))


def cpu_kv_cache_blocks(
    shape: ModelShape, kv_cache_space_gib: float, *, block_size: int = BLOCK_SIZE
) -> int:
    """Blocks vLLM's CPU backend allocates from ``VLLM_CPU_KVCACHE_SPACE`` GiB."""
    per_block = shape.kv_bytes_per_token_per_gpu(1) * block_size
    return int(kv_cache_space_gib * GIB // per_block)


@dataclass(frozen=True)
class RequestSpec:
    """A request as the engine sees it: token ids and the number of tokens to generate."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    arrival_time: float = 0.0


@dataclass(frozen=True)
class TokenEvent:
    """A token a request produced at the end of a step."""

    request_id: str
    token_id: int
    num_output_tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True)
class StepResult:
    """What one step scheduled, how long it takes and what it produced."""

    start: float
    duration: float
    batch: Batch
    scheduled: tuple[tuple[str, int], ...]
    events: tuple[TokenEvent, ...]
    preempted: tuple[str, ...]

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class DecodeRun:
    """Consecutive decode-only steps taken at once (see :meth:`Engine.decode_run`).

    Every request in ``request_ids`` got one token per step; ``finished`` ended at
    the last step (by length). Step ``j`` started at ``start + sum(durations[:j])``.
    """

    start: float
    durations: tuple[float, ...]
    request_ids: tuple[str, ...]
    finished: tuple[str, ...]

    @property
    def steps(self) -> int:
        return len(self.durations)

    @property
    def end(self) -> float:
        return self.start + sum(self.durations)


@dataclass(frozen=True)
class EngineStats:
    """The scheduler statistics vLLM exports as metrics."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions_total: int
    prefix_cache_queries_total: int
    prefix_cache_hits_total: int
    prompt_tokens_total: int
    generation_tokens_total: int


@dataclass
class _Request:
    spec: RequestSpec
    token_ids: list[int]
    num_prompt_tokens: int
    num_computed_tokens: int = 0
    blocks: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0
    preempted: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class _BlockPool:
    """vLLM's block pool: ref counts, an LRU free queue and the prefix-cache map."""

    def __init__(self, num_blocks: int, caching: bool) -> None:
        self.num_blocks = num_blocks
        self.caching = caching
        self.ref_cnt = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.block_hash: dict[int, int] = {}
        self.cached: dict[int, int] = {}
        # Block 0 is vLLM's null block: never freed, never cached.
        self.free.popitem(last=False)
        self.ref_cnt[0] = 1

    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        # vLLM leaves the null block out of the total.
        return 1.0 - len(self.free) / (self.num_blocks - 1)

    def lookup(self, block_hash: int) -> int | None:
        return self.cached.get(block_hash) if self.caching else None

    def touch(self, blocks: Iterable[int]) -> None:
        for b in blocks:
            if self.ref_cnt[b] == 0:
                del self.free[b]
            self.ref_cnt[b] += 1

    def allocate(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            b, _ = self.free.popitem(last=False)
            h = self.block_hash.pop(b, None)
            if h is not None and self.cached.get(h) == b:
                del self.cached[h]
            self.ref_cnt[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        # Tail blocks first, so a request's last blocks are the first evicted.
        for b in reversed(blocks):
            self.ref_cnt[b] -= 1
            if self.ref_cnt[b] == 0:
                self.free[b] = None

    def cache(self, block: int, block_hash: int) -> None:
        if self.caching and block_hash not in self.cached:
            self.cached[block_hash] = block
            self.block_hash[block] = block_hash


class Engine:
    """One replica's scheduler and KV cache; see the module docstring."""

    def __init__(self, config: EngineConfig, profile: Profile, shape: ModelShape) -> None:
        self.config = config
        self.profile = profile
        self.shape = shape
        self.slowdown = 1.0
        self._rng = random.Random(config.seed)
        self._pool = _BlockPool(config.num_blocks, config.enable_prefix_caching)
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._requests: dict[str, _Request] = {}
        self._preemptions = 0
        self._pc_queries = 0
        self._pc_hits = 0
        self._prompt_tokens = 0
        self._generation_tokens = 0

    # -- requests ---------------------------------------------------------

    def validate(self, spec: RequestSpec) -> str | None:
        """Why vLLM would refuse this request, or None."""
        n = len(spec.prompt_token_ids)
        if n == 0:
            return "The prompt must not be empty."
        if spec.max_tokens < 1:
            return "max_tokens must be at least 1."
        if n + spec.max_tokens > self.config.max_model_len:
            return (
                f"This model's maximum context length is {self.config.max_model_len} tokens. "
                f"However, you requested {n + spec.max_tokens} tokens ({n} in the messages, "
                f"{spec.max_tokens} in the completion)."
            )
        return None

    def add_request(self, spec: RequestSpec) -> None:
        """Queues a request (FCFS). Raises ValueError for one vLLM would refuse."""
        reason = self.validate(spec)
        if reason is not None:
            raise ValueError(reason)
        if spec.request_id in self._requests:
            raise ValueError(f"duplicate request id {spec.request_id!r}")
        req = _Request(
            spec=spec,
            token_ids=list(spec.prompt_token_ids),
            num_prompt_tokens=len(spec.prompt_token_ids),
        )
        self._requests[spec.request_id] = req
        self._waiting.append(req)

    def abort_request(self, request_id: str) -> None:
        """Drops a request (client went away); frees its blocks."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        if req in self._running:
            self._running.remove(req)
        else:
            self._waiting.remove(req)
        self._pool.release(req.blocks)
        req.blocks = []

    def has_unfinished(self) -> bool:
        return bool(self._running or self._waiting)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            kv_cache_usage=self._pool.usage(),
            num_preemptions_total=self._preemptions,
            prefix_cache_queries_total=self._pc_queries,
            prefix_cache_hits_total=self._pc_hits,
            prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._generation_tokens,
        )

    # -- KV cache ---------------------------------------------------------

    def _block_hashes(self, req: _Request) -> list[int]:
        bs = self.config.block_size
        hashes = req.block_hashes
        done, full = len(hashes), req.num_tokens // bs
        if done >= full:
            return hashes
        # Each full block's hash chains its parent's; the token bytes are made in one go.
        data = _token_bytes(req.token_ids[done * bs : full * bs])
        width = 4 * bs
        parent = hashes[-1] if hashes else 0
        for j in range(full - done):
            chunk = parent.to_bytes(8, "little") + data[j * width : (j + 1) * width]
            parent = zlib.crc32(chunk) | (zlib.adler32(chunk) << 32)
            hashes.append(parent)
        return hashes

    def _computed_blocks(self, req: _Request) -> list[int]:
        """Longest cached prefix of full blocks; at least one token is always recomputed."""
        if not self.config.enable_prefix_caching:
            return []
        hits: list[int] = []
        max_blocks = (req.num_tokens - 1) // self.config.block_size
        for h in self._block_hashes(req)[:max_blocks]:
            b = self._pool.lookup(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def _allocate_slots(
        self,
        req: _Request,
        num_new_tokens: int,
        computed: Sequence[int] = (),
        *,
        full_sequence_must_fit: bool = False,
    ) -> bool:
        bs = self.config.block_size
        total = req.num_computed_tokens + len(computed) * bs + num_new_tokens
        needed = math.ceil(total / bs) - len(req.blocks) - len(computed)
        evictable = sum(1 for b in computed if self._pool.ref_cnt[b] == 0)
        if full_sequence_must_fit:
            # Admission gate (scheduler_reserve_full_isl): the whole prompt must fit,
            # not only its first chunk.
            full = min(req.num_tokens, self.config.max_model_len)
            full_needed = math.ceil(full / bs) - len(req.blocks) - len(computed)
            if full_needed + evictable > self._pool.num_free():
                return False
        if needed > self._pool.num_free() - evictable:
            return False
        self._pool.touch(computed)
        req.blocks.extend(computed)
        req.blocks.extend(self._pool.allocate(max(0, needed)))
        if self.config.enable_prefix_caching:
            hashes = self._block_hashes(req)
            full = min(total // bs, len(hashes))
            for i in range(req.num_cached_blocks, full):
                self._pool.cache(req.blocks[i], hashes[i])
            req.num_cached_blocks = max(req.num_cached_blocks, full)
        return True

    def _free(self, req: _Request) -> None:
        self._pool.release(req.blocks)
        req.blocks = []
        req.num_cached_blocks = 0

    # -- scheduling ---------------------------------------------------------

    def _schedule(self) -> tuple[list[tuple[_Request, int]], list[_Request]]:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        preempted: list[_Request] = []

        i = 0
        while i < len(self._running) and budget > 0:
            req = self._running[i]
            num_new = req.num_tokens - req.num_computed_tokens
            if 0 < cfg.long_prefill_token_threshold < num_new:
                num_new = cfg.long_prefill_token_threshold
            num_new = min(num_new, budget, cfg.max_model_len - 1 - req.num_computed_tokens)
            if num_new <= 0:
                i += 1
                continue
            schedulable = True
            while not self._allocate_slots(req, num_new):
                victim = self._running.pop()
                self._free(victim)
                victim.num_computed_tokens = 0
                victim.preempted = True
                self._waiting.appendleft(victim)
                preempted.append(victim)
                self._preemptions += 1
                if victim is req:
                    schedulable = False
                    break
            if not schedulable:
                break
            scheduled.append((req, num_new))
            budget -= num_new
            i += 1

        if not preempted:
            while self._waiting and budget > 0 and len(self._running) < cfg.max_num_seqs:
                req = self._waiting[0]
                computed: list[int] = []
                if req.num_computed_tokens == 0:
                    computed = self._computed_blocks(req)
                num_cached = len(computed) * cfg.block_size
                num_new = req.num_tokens - num_cached
                if 0 < cfg.long_prefill_token_threshold < num_new:
                    num_new = cfg.long_prefill_token_threshold
                if not cfg.enable_chunked_prefill and num_new > budget:
                    break
                num_new = min(num_new, budget)
                if not self._allocate_slots(req, num_new, computed, full_sequence_must_fit=True):
                    break
                self._waiting.popleft()
                if not req.preempted:
                    if cfg.enable_prefix_caching:
                        self._pc_queries += req.num_tokens
                        self._pc_hits += num_cached
                    self._prompt_tokens += req.num_prompt_tokens
                req.num_computed_tokens = num_cached
                self._running.append(req)
                scheduled.append((req, num_new))
                budget -= num_new
        return scheduled, preempted

    def _batch(self, scheduled: Sequence[tuple[_Request, int]]) -> Batch:
        decodes: list[int] = []
        chunks: list[PrefillChunk] = []
        for req, n in scheduled:
            if n == 1 and req.num_computed_tokens >= req.num_prompt_tokens:
                decodes.append(req.num_computed_tokens + 1)
            else:
                chunks.append(PrefillChunk(tokens=n, computed=req.num_computed_tokens))
        return Batch(decode_contexts=tuple(decodes), prefill_chunks=tuple(chunks))

    def step(self, now: float) -> StepResult:
        """Schedules one step at ``now``; its tokens count as produced at ``now + duration``.

        State advances immediately; a driver waits ``duration`` before publishing
        ``events``. A step that schedules nothing takes no time.
        """
        scheduled, preempted = self._schedule()
        batch = self._batch(scheduled)
        duration = step_time(self.profile, self.shape, self.config.tensor_parallel_size, batch)
        if duration > 0 and self.config.step_jitter > 0:
            duration *= math.exp(self._rng.gauss(0.0, self.config.step_jitter))
        duration *= self.slowdown
        events: list[TokenEvent] = []
        finished: list[_Request] = []
        for req, n in scheduled:
            req.num_computed_tokens += n
            if req.num_computed_tokens < req.num_tokens:
                continue
            token = self._rng.randrange(1, 32000)
            req.token_ids.append(token)
            self._generation_tokens += 1
            reason = None
            if (
                req.num_output_tokens >= req.spec.max_tokens
                or req.num_tokens >= self.config.max_model_len
            ):
                reason = "length"
                finished.append(req)
            events.append(TokenEvent(req.spec.request_id, token, req.num_output_tokens, reason))
        for req in finished:
            self._running.remove(req)
            self._free(req)
            del self._requests[req.spec.request_id]
        return StepResult(
            start=now,
            duration=duration,
            batch=batch,
            scheduled=tuple((r.spec.request_id, n) for r, n in scheduled),
            events=tuple(events),
            preempted=tuple(r.spec.request_id for r in preempted),
        )

    def decode_run(self, now: float, until: float, max_steps: int = 1 << 30) -> DecodeRun | None:
        """Takes the decode steps that :meth:`step` would take from ``now``, all at once.

        Only while the engine is in a plain decode phase: nothing waits, every
        running request has its prompt computed, no step jitter. Steps are taken
        while each starts before ``until`` (the driver's next event that could
        change the batch, such as an arrival) and up to the step at which the
        first request finishes. The state afterwards, the step durations and the
        token counts are those of calling :meth:`step` that many times (only the
        sampled token ids differ). Returns None when this does not apply; then call
        :meth:`step`.
        """
        cfg = self.config
        running = self._running
        if self._waiting or not running or cfg.step_jitter > 0 or until <= now:
            return None
        if len(running) > cfg.max_num_batched_tokens:
            return None
        k = max_steps
        for req in running:
            if req.num_computed_tokens != req.num_tokens - 1:
                return None
            k = min(k, req.spec.max_tokens - req.num_output_tokens)
        if k < 1:
            return None
        first = self._batch([(req, 1) for req in running])
        d0 = step_time(self.profile, self.shape, cfg.tensor_parallel_size, first) * self.slowdown
        nxt = Batch(decode_contexts=tuple(c + 1 for c in first.decode_contexts))
        d1 = step_time(self.profile, self.shape, cfg.tensor_parallel_size, nxt) * self.slowdown
        delta = d1 - d0  # the KV read grows by one token per sequence per step
        durations: list[float] = []
        t = now
        while len(durations) < k and t < until:
            d = d0 + delta * len(durations)
            durations.append(d)
            t += d
        k = len(durations)
        bs = cfg.block_size
        need = sum(
            max(0, math.ceil((req.num_computed_tokens + k) / bs) - len(req.blocks))
            for req in running
        )
        if need > self._pool.num_free():
            return None  # preemption ahead: let step() handle it
        finished: list[_Request] = []
        rand = self._rng.random
        caching = cfg.enable_prefix_caching
        for req in running:
            total = req.num_computed_tokens + k
            new_full = min(total, req.num_tokens) // bs > req.num_cached_blocks
            if math.ceil(total / bs) > len(req.blocks) or (caching and new_full):
                ok = self._allocate_slots(req, k)
                assert ok
            req.num_computed_tokens += k
            req.token_ids.extend(1 + int(rand() * 31999) for _ in range(k))
            if req.num_output_tokens >= req.spec.max_tokens:
                finished.append(req)
        self._generation_tokens += k * len(running)
        ids = tuple(r.spec.request_id for r in running)
        for req in finished:
            running.remove(req)
            self._free(req)
            del self._requests[req.spec.request_id]
        return DecodeRun(
            start=now,
            durations=tuple(durations),
            request_ids=ids,
            finished=tuple(r.spec.request_id for r in finished),
        )


@dataclass(frozen=True)
class RequestRecord:
    """Per-request latencies from a simulation (seconds)."""

    request_id: str
    arrival_time: float
    first_token_time: float
    finish_time: float
    token_times: tuple[float, ...]

    @property
    def ttft(self) -> float:
        return self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float:
        return self.finish_time - self.arrival_time

    @property
    def itls(self) -> tuple[float, ...]:
        t = self.token_times
        return tuple(b - a for a, b in itertools.pairwise(t))


@dataclass(frozen=True)
class Sample:
    """Scheduler state after a step (what a /metrics scrape would see then)."""

    time: float
    num_running: int
    num_waiting: int
    kv_cache_usage: float


@dataclass(frozen=True)
class SimulationResult:
    records: tuple[RequestRecord, ...]
    samples: tuple[Sample, ...]
    end_time: float


def simulate(
    engine: Engine, arrivals: Sequence[RequestSpec], until: float = math.inf
) -> SimulationResult:
    """Runs the engine as fast as possible over requests arriving at ``arrival_time``.

    Requests that arrive during a step join at the next one, as in vLLM's engine loop.
    """
    pending = deque(sorted(arrivals, key=lambda s: s.arrival_time))
    arrival_by_id = {a.request_id: a.arrival_time for a in arrivals}
    now = 0.0
    token_times: dict[str, list[float]] = {}
    records: list[RequestRecord] = []
    samples: list[Sample] = []
    while (pending or engine.has_unfinished()) and now < until:
        while pending and pending[0].arrival_time <= now:
            spec = pending.popleft()
            engine.add_request(spec)
            token_times[spec.request_id] = []
        if not engine.has_unfinished():
            now = pending[0].arrival_time
            continue
        result = engine.step(now)
        if result.duration == 0.0 and not result.scheduled:
            # Nothing could run (only possible with work that never fits): wait for arrivals.
            if not pending:
                break
            now = max(now, pending[0].arrival_time)
            continue
        now = result.end
        for ev in result.events:
            token_times[ev.request_id].append(now)
            if ev.finish_reason is not None:
                times = token_times.pop(ev.request_id)
                records.append(
                    RequestRecord(
                        request_id=ev.request_id,
                        arrival_time=arrival_by_id[ev.request_id],
                        first_token_time=times[0],
                        finish_time=times[-1],
                        token_times=tuple(times),
                    )
                )
        s = engine.stats()
        samples.append(Sample(now, s.num_running, s.num_waiting, s.kv_cache_usage))
    return SimulationResult(records=tuple(records), samples=tuple(samples), end_time=now)
