"""kvpilot-loadgen: open-loop load on the Ready replicas of one inference service.

Arrivals come from one of

* a trace in the Azure LLM inference CSV format (``TIMESTAMP,ContextTokens,GeneratedTokens``),
  replayed with a time scale (``--time-scale 10`` plays ten trace seconds per
  second) and a rate scale (``--rate-scale 0.1`` keeps each request with
  probability 0.1, thinning the arrivals);
* a Poisson process at a constant rate (``--rate``);
* a rate schedule of steps and ramps (``--schedule 30:2,30:8,60:8..1``: 30 s at
  2/s, 30 s at 8/s, then 60 s ramping from 8/s down to 1/s), arrivals being a
  non-homogeneous Poisson process.

Each request is a streaming OpenAI ``/v1/completions`` call whose prompt is a
list of token ids (so every server sees exactly the requested prompt length)
with ``max_tokens`` output tokens and ``ignore_eos``. The replicas are found
in Prometheus' file-based discovery directory (what the e2e pod runner
writes), filtered by namespace and inference service, and their ``/health`` is
polled so only Ready replicas get requests (an entry whose pod is listed as
not Ready, ``__meta_kubernetes_pod_ready: "false"``, is left out, as a
Service leaves it out of its endpoints); the set is refreshed while the
load runs. Requests are balanced round-robin or to the replica with the fewest
outstanding requests. Only loopback addresses are ever contacted.

Per request it records the start time, TTFT, mean inter-token latency (time
per output token after the first), end-to-end latency, prompt and output
tokens, the replica and any error, to JSONL or CSV (by the file's extension),
prints progress lines to stderr and a JSON summary to stdout.

    kvpilot-loadgen --namespace demo --service llama-3-1-8b --rate 4 --duration 60 \\
        --out results.jsonl
    kvpilot-loadgen --namespace demo --service llama-3-1-8b \\
        --trace bench/traces/azure-llm-2023-conv.csv --time-scale 4 --rate-scale 0.05 \\
        --duration 120 --max-prompt-tokens 2048 --max-output-tokens 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import ipaddress
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp

BALANCE_POLICIES = ("round-robin", "least-outstanding")
DEFAULT_TARGETS_DIR = Path(".dev-cluster/prometheus/targets")
#: Token ids prompts are drawn from: within any tokenizer's vocabulary, including the
#: tiny test model's (about 430 tokens), which vLLM checks prompt ids against.
PROMPT_TOKEN_RANGE = (10, 400)


# --------------------------------------------------------------------------- arrivals


@dataclass(frozen=True)
class Arrival:
    """One request of a load: when to send it (seconds from the start) and its sizes."""

    time: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Segment:
    """A piece of a rate schedule: ``rate_start`` to ``rate_end`` requests/s, linearly."""

    duration: float
    rate_start: float
    rate_end: float

    def rate(self, t: float) -> float:
        if self.duration <= 0:
            return self.rate_end
        return self.rate_start + (self.rate_end - self.rate_start) * (t / self.duration)


def parse_schedule(text: str) -> tuple[Segment, ...]:
    """``DURATION:RATE`` steps and ``DURATION:START..END`` ramps, comma-separated."""
    segments: list[Segment] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        try:
            dur_text, rate_text = part.split(":", 1)
            start_text, _, end_text = rate_text.partition("..")
            seg = Segment(
                float(dur_text),
                float(start_text),
                float(end_text) if end_text else float(start_text),
            )
        except ValueError:
            raise ValueError(
                f"bad schedule segment {part!r}: expected DURATION:RATE or DURATION:START..END"
            ) from None
        if seg.duration <= 0 or seg.rate_start < 0 or seg.rate_end < 0:
            raise ValueError(f"bad schedule segment {part!r}: duration > 0 and rates >= 0")
        if not all(math.isfinite(v) for v in (seg.duration, seg.rate_start, seg.rate_end)):
            raise ValueError(f"bad schedule segment {part!r}: not finite")
        segments.append(seg)
    if not segments:
        raise ValueError("empty schedule")
    return tuple(segments)


def schedule_arrivals(
    segments: Sequence[Segment],
    lengths: Callable[[random.Random], tuple[int, int]],
    *,
    seed: int = 0,
) -> list[Arrival]:
    """A non-homogeneous Poisson process over the schedule (by thinning), with sizes from
    ``lengths`` (called once per arrival with the same generator)."""
    rng = random.Random(seed)
    out: list[Arrival] = []
    offset = 0.0
    for seg in segments:
        peak = max(seg.rate_start, seg.rate_end)
        t = 0.0
        while peak > 0:
            t += rng.expovariate(peak)
            if t >= seg.duration:
                break
            if rng.random() * peak < seg.rate(t):
                prompt, output = lengths(rng)
                out.append(Arrival(offset + t, prompt, output))
        offset += seg.duration
    return out


def poisson_arrivals(
    rate: float,
    duration: float,
    lengths: Callable[[random.Random], tuple[int, int]],
    *,
    seed: int = 0,
) -> list[Arrival]:
    """Open-loop Poisson arrivals at a constant ``rate`` for ``duration`` seconds."""
    return schedule_arrivals([Segment(duration, rate, rate)], lengths, seed=seed)


def fixed_lengths(
    prompt_tokens: int, output_tokens: int
) -> Callable[[random.Random], tuple[int, int]]:
    def pick(_: random.Random) -> tuple[int, int]:
        return prompt_tokens, output_tokens

    return pick


@dataclass(frozen=True)
class TraceRow:
    """One trace request: seconds after the trace's first request, and its sizes."""

    offset: float
    context_tokens: int
    generated_tokens: int


def read_trace(path: Path) -> list[TraceRow]:
    """An Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``), by time."""
    rows: list[tuple[datetime, int, int]] = []
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.append(
                (
                    datetime.fromisoformat(rec["TIMESTAMP"].strip()),
                    int(rec["ContextTokens"]),
                    int(rec["GeneratedTokens"]),
                )
            )
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [TraceRow((ts - t0).total_seconds(), c, g) for ts, c, g in rows]


def trace_lengths(
    rows: Sequence[TraceRow],
    *,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
) -> Callable[[random.Random], tuple[int, int]]:
    """Sizes drawn from a trace's requests (for Poisson or scheduled loads)."""
    if not rows:
        raise ValueError("no trace rows to draw sizes from")

    def pick(rng: random.Random) -> tuple[int, int]:
        row = rows[rng.randrange(len(rows))]
        return _clip(row.context_tokens, max_prompt_tokens), _clip(
            row.generated_tokens, max_output_tokens
        )

    return pick


def _clip(n: int, cap: int | None) -> int:
    return max(1, n if cap is None else min(n, cap))


def trace_arrivals(
    rows: Sequence[TraceRow],
    *,
    time_scale: float = 1.0,
    rate_scale: float = 1.0,
    start: float = 0.0,
    duration: float | None = None,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    seed: int = 0,
) -> list[Arrival]:
    """Replays the trace from ``start`` (trace seconds) for ``duration`` run seconds.

    A request at trace time t is sent at (t - start) / time_scale; each is kept
    with probability ``rate_scale`` (independent thinning keeps the arrival
    process' shape, scaling its rate).
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    if not 0 < rate_scale <= 1:
        raise ValueError("rate_scale must be in (0, 1]; speed up with time_scale instead")
    rng = random.Random(seed)
    out: list[Arrival] = []
    for row in rows:
        if row.offset < start:
            continue
        t = (row.offset - start) / time_scale
        if duration is not None and t >= duration:
            break
        if rate_scale < 1 and rng.random() >= rate_scale:
            continue
        out.append(
            Arrival(
                t,
                _clip(row.context_tokens, max_prompt_tokens),
                _clip(row.generated_tokens, max_output_tokens),
            )
        )
    return out


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A replica: a name (its pod, in the dev cluster) and its base URL."""

    name: str
    url: str


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback (the only place load may go)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: A file-SD entry's pod readiness (what the e2e pod runner writes, named as Prometheus'
#: Kubernetes discovery names it); "false" keeps the replica out, as a Service's endpoints
#: leave out pods that are not Ready (e.g. held by a readinessGate).
POD_READY_LABEL = "__meta_kubernetes_pod_ready"


def discover_targets(targets_dir: Path, namespace: str, service: str) -> list[Target]:
    """The replicas of ``namespace/service`` listed in a Prometheus file-SD directory.

    Files that are being written or are not valid JSON are skipped (the next
    refresh sees them); so are targets that are not on loopback and those whose
    pod is listed as not Ready.
    """
    out: list[Target] = []
    for path in sorted(targets_dir.glob("*.json")):
        try:
            groups = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(groups, list):
            continue
        for group in groups:
            if not isinstance(group, dict):
                continue
            labels = group.get("labels") or {}
            if labels.get("namespace") != namespace or labels.get("inference_service") != service:
                continue
            if labels.get(POD_READY_LABEL) == "false":
                continue
            for addr in group.get("targets") or []:
                url = f"http://{addr}"
                if is_loopback_url(url):
                    out.append(Target(str(labels.get("pod") or addr), url))
    return sorted(out, key=lambda t: t.name)


class Balancer:
    """Picks the replica for the next request among the Ready ones."""

    def __init__(self, policy: str = "round-robin") -> None:
        if policy not in BALANCE_POLICIES:
            raise ValueError(f"balance policy must be one of {', '.join(BALANCE_POLICIES)}")
        self.policy = policy
        self._counter = itertools.count()

    def choose(self, ready: Sequence[Target], outstanding: Mapping[str, int]) -> Target | None:
        """Round-robin over ``ready`` in order; least-outstanding breaks ties the same way."""
        if not ready:
            return None
        turn = next(self._counter)
        if self.policy == "round-robin":
            return ready[turn % len(ready)]
        n = len(ready)
        rotated = [ready[(turn + i) % n] for i in range(n)]
        return min(rotated, key=lambda t: outstanding.get(t.name, 0))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request (times in seconds; ``start`` is Unix time)."""

    index: int
    scheduled: float
    start: float
    replica: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int
    ttft: float | None
    itl_mean: float | None
    e2e: float | None
    status: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))


class RecordWriter:
    """Writes records as they complete (JSONL, or CSV for ``.csv``), so a cut run keeps them."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[str] = path.open("w", newline="")
        self._csv: Any = None
        if path.suffix == ".csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=RECORD_FIELDS)
            self._csv.writeheader()

    def write(self, rec: RequestRecord) -> None:
        row = asdict(rec)
        if self._csv is not None:
            self._csv.writerow({k: "" if v is None else v for k, v in row.items()})
        else:
            self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_records(path: Path) -> list[RequestRecord]:
    """Reads a file written by :class:`RecordWriter` back."""
    out: list[RequestRecord] = []
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                out.append(_record_from_csv(row))
    else:
        for line in path.read_text().splitlines():
            if line.strip():
                out.append(RequestRecord(**json.loads(line)))
    return out


def _record_from_csv(row: Mapping[str, str]) -> RequestRecord:
    def opt_float(v: str) -> float | None:
        return None if v == "" else float(v)

    return RequestRecord(
        index=int(row["index"]),
        scheduled=float(row["scheduled"]),
        start=float(row["start"]),
        replica=row["replica"],
        prompt_tokens=int(row["prompt_tokens"]),
        max_tokens=int(row["max_tokens"]),
        output_tokens=int(row["output_tokens"]),
        ttft=opt_float(row["ttft"]),
        itl_mean=opt_float(row["itl_mean"]),
        e2e=opt_float(row["e2e"]),
        status=int(row["status"]),
        error=row["error"] or None,
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """Totals and latency percentiles of a run."""

    requests: int
    ok: int
    errors: int
    duration_s: float
    output_tokens: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None
    e2e_p50_s: float | None
    e2e_p90_s: float | None
    per_replica: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)


def summarize(records: Sequence[RequestRecord], duration: float) -> Summary:
    ok = [r for r in records if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [r.itl_mean for r in ok if r.itl_mean is not None]
    e2es = [r.e2e for r in ok if r.e2e is not None]
    per_replica: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for r in records:
        if r.replica:
            per_replica[r.replica] = per_replica.get(r.replica, 0) + 1
        if r.error is not None:
            kind = r.error.split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1

    def rnd(v: float | None) -> float | None:
        return None if v is None else round(v, 6)

    return Summary(
        requests=len(records),
        ok=len(ok),
        errors=len(records) - len(ok),
        duration_s=round(duration, 3),
        output_tokens=sum(r.output_tokens for r in ok),
        ttft_p50_s=rnd(percentile(ttfts, 50)),
        ttft_p90_s=rnd(percentile(ttfts, 90)),
        ttft_p99_s=rnd(percentile(ttfts, 99)),
        itl_p50_s=rnd(percentile(itls, 50)),
        itl_p90_s=rnd(percentile(itls, 90)),
        e2e_p50_s=rnd(percentile(e2es, 50)),
        e2e_p90_s=rnd(percentile(e2es, 90)),
        per_replica=dict(sorted(per_replica.items())),
        error_kinds=dict(sorted(kinds.items())),
    )


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class LoadConfig:
    """How to run a load (everything but the arrivals and the replicas)."""

    model: str | None = None
    balance: str = "round-robin"
    max_requests: int | None = None
    duration: float | None = None
    request_timeout: float = 300.0
    drain_timeout: float = 120.0
    max_in_flight: int = 1024
    refresh_interval: float = 1.0
    health_timeout: float = 1.0
    wait_ready_timeout: float = 60.0
    progress_interval: float = 5.0
    seed: int = 0


class NoReadyReplicaError(RuntimeError):
    """No replica of the service became Ready in time."""


class ReplicaPool:
    """The Ready replicas of a service, refreshed from a source and their /health."""

    def __init__(
        self, source: Callable[[], Sequence[Target]], balancer: Balancer, health_timeout: float
    ) -> None:
        self.source = source
        self.balancer = balancer
        self.health_timeout = health_timeout
        self.known: tuple[Target, ...] = ()
        self.ready: tuple[Target, ...] = ()
        self.outstanding: dict[str, int] = {}

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        targets = [t for t in self.source() if is_loopback_url(t.url)]
        healthy = await asyncio.gather(*(self._healthy(session, t) for t in targets))
        self.known = tuple(targets)
        self.ready = tuple(t for t, ok in zip(targets, healthy, strict=True) if ok)

    async def _healthy(self, session: aiohttp.ClientSession, target: Target) -> bool:
        try:
            async with session.get(
                f"{target.url}/health", timeout=aiohttp.ClientTimeout(total=self.health_timeout)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def choose(self) -> Target | None:
        return self.balancer.choose(self.ready, self.outstanding)


def _prompt(rng: random.Random, n: int) -> list[int]:
    lo, hi = PROMPT_TOKEN_RANGE
    return [rng.randrange(lo, hi) for _ in range(n)]


async def _send(
    session: aiohttp.ClientSession,
    target: Target,
    model: str,
    prompt: list[int],
    *,
    max_tokens: int,
    timeout: float,
) -> tuple[int, float | None, float | None, float, int, str | None]:
    """One streamed completion: (status, ttft, last-token time, e2e, output tokens, error)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    first: float | None = None
    last: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    async with session.post(
        f"{target.url}/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        if resp.status != 200:
            text = (await resp.text())[:300]
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                text = str(json.loads(text)["error"]["message"])[:300]
            return resp.status, None, None, time.monotonic() - t0, 0, f"http {resp.status}: {text}"
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            obj = json.loads(payload)
            now = time.monotonic()
            if obj.get("error"):
                err = obj["error"]
                message = err.get("message", err) if isinstance(err, dict) else err
                return 200, None, None, now - t0, 0, f"stream error: {message}"[:300]
            if obj.get("choices"):
                chunks += 1
                if first is None:
                    first = now
                last = now
            usage = obj.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                usage_tokens = int(usage["completion_tokens"])
    end = time.monotonic()
    n = usage_tokens if usage_tokens is not None else chunks
    ttft = None if first is None else first - t0
    last_rel = None if last is None else last - t0
    error = None if first is not None else "empty response: no tokens streamed"
    return 200, ttft, last_rel, end - t0, n, error


async def run_load(
    arrivals: Sequence[Arrival],
    source: Callable[[], Sequence[Target]],
    config: LoadConfig,
    *,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[RequestRecord], Summary]:
    """Sends ``arrivals`` open-loop to the Ready replicas that ``source`` lists.

    ``stop`` (polled at least twice a second) ends the load early: no further
    request is sent, and those in flight are drained as at the end of the plan.
    """
    balancer = Balancer(config.balance)
    pool = ReplicaPool(source, balancer, config.health_timeout)
    writer = RecordWriter(out) if out is not None else None
    records: list[RequestRecord] = []
    rng = random.Random(config.seed)
    plan = list(arrivals)
    if config.duration is not None:
        plan = [a for a in plan if a.time < config.duration]
    if config.max_requests is not None:
        plan = plan[: config.max_requests]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + config.wait_ready_timeout
        await pool.refresh(session)
        while not pool.ready:
            if time.monotonic() >= deadline:
                raise NoReadyReplicaError(
                    f"no Ready replica after {config.wait_ready_timeout:.0f}s "
                    f"(known: {[t.url for t in pool.known]})"
                )
            await asyncio.sleep(min(0.5, config.refresh_interval))
            await pool.refresh(session)
        model = config.model or await _served_model(session, pool.ready[0])
        loop = asyncio.get_running_loop()
        t_start = loop.time()
        wall_start = time.time()
        stats = _Progress()

        def record(rec: RequestRecord) -> None:
            records.append(rec)
            stats.add(rec)
            if writer is not None:
                writer.write(rec)

        async def one(i: int, a: Arrival, target: Target, prompt: list[int]) -> None:
            scheduled = a.time
            start = wall_start + (loop.time() - t_start)
            pool.outstanding[target.name] = pool.outstanding.get(target.name, 0) + 1
            status, ttft, last, e2e, n_out, error = 0, None, None, None, 0, None
            try:
                status, ttft, last, e2e, n_out, error = await _send(
                    session,
                    target,
                    model,
                    prompt,
                    max_tokens=a.output_tokens,
                    timeout=config.request_timeout,
                )
            except asyncio.CancelledError:
                error = "cancelled: still running when the drain timeout ran out"
            except TimeoutError:
                error = f"timeout: no answer in {config.request_timeout:.0f}s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                error = f"connection: {type(exc).__name__}: {exc}"[:300]
            finally:
                pool.outstanding[target.name] -= 1
            itl = None
            if error is None and ttft is not None and last is not None and n_out > 1:
                itl = (last - ttft) / (n_out - 1)
            record(
                RequestRecord(
                    index=i,
                    scheduled=round(scheduled, 6),
                    start=round(start, 6),
                    replica=target.name,
                    prompt_tokens=a.prompt_tokens,
                    max_tokens=a.output_tokens,
                    output_tokens=n_out if error is None else 0,
                    ttft=None if ttft is None else round(ttft, 6),
                    itl_mean=None if itl is None else round(itl, 6),
                    e2e=None if e2e is None or error is not None else round(e2e, 6),
                    status=status,
                    error=error,
                )
            )

        async def refresher() -> None:
            while True:
                await asyncio.sleep(config.refresh_interval)
                await pool.refresh(session)

        async def reporter() -> None:
            while True:
                await asyncio.sleep(config.progress_interval)
                if progress is not None:
                    progress(stats.line(loop.time() - t_start, len(tasks), pool))

        tasks: set[asyncio.Task[None]] = set()
        background = [asyncio.create_task(refresher()), asyncio.create_task(reporter())]
        try:
            for i, a in enumerate(plan):
                stopped = stop is not None and stop()
                while not stopped and (delay := t_start + a.time - loop.time()) > 0:
                    await asyncio.sleep(min(delay, 0.5) if stop is not None else delay)
                    stopped = stop is not None and stop()
                if stopped:
                    break
                stats.sent += 1
                prompt = _prompt(rng, a.prompt_tokens)
                target = pool.choose()
                if target is None or len(tasks) >= config.max_in_flight:
                    why = (
                        "no replica: none Ready"
                        if target is None
                        else f"client limit: {config.max_in_flight} requests in flight"
                    )
                    record(
                        RequestRecord(
                            i, round(a.time, 6), round(time.time(), 6), "", a.prompt_tokens,
                            a.output_tokens, 0, None, None, None, 0, why,
                        )
                    )  # fmt: skip
                    continue
                task = asyncio.create_task(one(i, a, target, prompt))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=config.drain_timeout)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
        finally:
            for task in (*background, *tasks):
                task.cancel()
            await asyncio.gather(*background, *tasks, return_exceptions=True)
            if writer is not None:
                writer.close()
        duration = loop.time() - t_start
        if progress is not None:
            progress(stats.line(duration, 0, pool))
    records.sort(key=lambda r: r.index)
    return records, summarize(records, duration)


def run(
    arrivals: Sequence[Arrival],
    source: Callable[[], Sequence[Target]],
    config: LoadConfig,
    *,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[RequestRecord], Summary]:
    """:func:`run_load` for callers without an event loop (benchmarks, tests)."""
    return asyncio.run(run_load(arrivals, source, config, out=out, progress=progress, stop=stop))


async def _served_model(session: aiohttp.ClientSession, target: Target) -> str:
    async with session.get(
        f"{target.url}/v1/models", timeout=aiohttp.ClientTimeout(total=10)
    ) as resp:
        resp.raise_for_status()
        data = await resp.json()
    return str(data["data"][0]["id"])


@dataclass
class _Progress:
    """Counters for the progress lines (latencies over the last interval)."""

    sent: int = 0
    done: int = 0
    errors: int = 0
    window_ttft: list[float] = field(default_factory=list)
    window_itl: list[float] = field(default_factory=list)

    def add(self, rec: RequestRecord) -> None:
        self.done += 1
        if rec.error is not None:
            self.errors += 1
        if rec.ttft is not None and rec.ok:
            self.window_ttft.append(rec.ttft)
        if rec.itl_mean is not None:
            self.window_itl.append(rec.itl_mean)

    def line(self, elapsed: float, in_flight: int, pool: ReplicaPool) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f}ms"

        text = (
            f"t={elapsed:.1f}s sent={self.sent} done={self.done} errors={self.errors} "
            f"in_flight={in_flight} replicas={len(pool.ready)}/{len(pool.known)} "
            f"ttft_p50={ms(percentile(self.window_ttft, 50))} "
            f"itl_p50={ms(percentile(self.window_itl, 50))}"
        )
        self.window_ttft.clear()
        self.window_itl.clear()
        return text


# --------------------------------------------------------------------------- command line


def _default_targets_dir() -> Path:
    env = os.environ.get("KVPILOT_DEV_CLUSTER_DIR")
    return Path(env) / "prometheus" / "targets" if env else DEFAULT_TARGETS_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvpilot-loadgen",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("replicas")
    where.add_argument("--namespace", "-n", help="namespace of the inference service")
    where.add_argument("--service", "-s", help="InferenceService name")
    where.add_argument(
        "--targets-dir",
        type=Path,
        default=None,
        help="file-SD directory (default: .dev-cluster/prometheus/targets)",
    )
    where.add_argument(
        "--target",
        action="append",
        default=[],
        help="a replica base URL instead of discovery (loopback only; repeat)",
    )
    where.add_argument("--model", help="model name to request (default: the replica's first)")
    where.add_argument("--balance", choices=BALANCE_POLICIES, default="round-robin")
    load = p.add_argument_group("arrivals (one of --trace, --rate, --schedule)")
    kind = load.add_mutually_exclusive_group(required=True)
    kind.add_argument("--trace", type=Path, help="Azure-format CSV trace to replay")
    kind.add_argument("--rate", type=float, help="Poisson arrivals per second")
    kind.add_argument("--schedule", help="rate schedule: DURATION:RATE or DURATION:START..END, ...")
    load.add_argument(
        "--time-scale", type=float, default=1.0, help="trace seconds played per second"
    )
    load.add_argument(
        "--rate-scale", type=float, default=1.0, help="fraction of trace requests kept (0, 1]"
    )
    load.add_argument("--trace-start", type=float, default=0.0, help="trace seconds to skip first")
    load.add_argument("--prompt-tokens", type=int, default=128)
    load.add_argument("--output-tokens", type=int, default=64)
    load.add_argument(
        "--lengths-from",
        type=Path,
        help="draw prompt/output sizes from this trace (--rate/--schedule)",
    )
    load.add_argument("--max-prompt-tokens", type=int, help="clip prompt sizes")
    load.add_argument("--max-output-tokens", type=int, help="clip output sizes")
    load.add_argument("--seed", type=int, default=0)
    bounds = p.add_argument_group("bounds and output")
    bounds.add_argument("--duration", type=float, help="seconds of arrivals (required for --rate)")
    bounds.add_argument("--max-requests", type=int)
    bounds.add_argument("--request-timeout", type=float, default=300.0)
    bounds.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for in-flight requests after the last arrival",
    )
    bounds.add_argument(
        "--wait-ready", type=float, default=60.0, help="seconds to wait for a first Ready replica"
    )
    bounds.add_argument("--out", type=Path, help="per-request records (.jsonl or .csv)")
    bounds.add_argument("--progress-interval", type=float, default=5.0)
    return p  # fmt: skip


def arrivals_from_args(args: argparse.Namespace) -> list[Arrival]:
    caps = {
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_output_tokens": args.max_output_tokens,
    }
    if args.trace is not None:
        return trace_arrivals(
            read_trace(args.trace),
            time_scale=args.time_scale,
            rate_scale=args.rate_scale,
            start=args.trace_start,
            duration=args.duration,
            seed=args.seed,
            **caps,
        )
    lengths = (
        trace_lengths(read_trace(args.lengths_from), **caps)
        if args.lengths_from is not None
        else fixed_lengths(args.prompt_tokens, args.output_tokens)
    )
    if args.rate is not None:
        if args.duration is None and args.max_requests is None:
            raise ValueError("--rate needs --duration or --max-requests")
        if args.rate <= 0:
            raise ValueError("--rate must be positive")
        horizon = args.duration if args.duration is not None else args.max_requests / args.rate * 2
        return poisson_arrivals(args.rate, horizon, lengths, seed=args.seed)
    return schedule_arrivals(parse_schedule(args.schedule), lengths, seed=args.seed)


def target_source(args: argparse.Namespace) -> Callable[[], Sequence[Target]]:
    if args.target:
        bad = [u for u in args.target if not is_loopback_url(u)]
        if bad:
            raise ValueError(f"only loopback targets are allowed, not {', '.join(bad)}")
        static = [Target(u, u.rstrip("/")) for u in args.target]
        return lambda: static
    if not args.namespace or not args.service:
        raise ValueError("give --namespace and --service (or --target URLs)")
    directory = args.targets_dir or _default_targets_dir()
    if not directory.is_dir():
        raise ValueError(f"no target directory {directory} (is the dev cluster up?)")
    ns, svc = args.namespace, args.service
    return lambda: discover_targets(directory, ns, svc)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        arrivals = arrivals_from_args(args)
        source = target_source(args)
    except (ValueError, OSError, KeyError) as exc:
        print(f"kvpilot-loadgen: {exc}", file=sys.stderr)
        return 2
    config = LoadConfig(
        model=args.model,
        balance=args.balance,
        max_requests=args.max_requests,
        duration=args.duration,
        request_timeout=args.request_timeout,
        drain_timeout=args.drain_timeout,
        wait_ready_timeout=args.wait_ready,
        progress_interval=args.progress_interval,
        seed=args.seed,
    )
    print(
        f"[loadgen] {len(arrivals)} arrivals over {arrivals[-1].time if arrivals else 0:.1f}s",
        file=sys.stderr,
    )

    def progress(line: str) -> None:
        print(f"[loadgen] {line}", file=sys.stderr, flush=True)

    try:
        _, summary = asyncio.run(
            run_load(arrivals, source, config, out=args.out, progress=progress)
        )
    except NoReadyReplicaError as exc:
        print(f"kvpilot-loadgen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(asdict(summary), indent=1))
    return 0 if summary.ok > 0 or summary.requests == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
