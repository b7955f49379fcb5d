"""A small open-loop load client for one OpenAI-compatible replica.

Used to calibrate the CPU profile and to compare the simulator with real vLLM:
it sends streaming ``/v1/completions`` requests with token-id prompts (so both
servers see exactly the same number of prompt tokens), records TTFT and
inter-token latencies at the client, and samples the replica's ``/metrics``
(queue depth, running requests, KV-cache usage) while the load runs. Bounded
in count and time; loopback addresses only is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class RequestPlan:
    """One request of a load: when to send it (seconds from start) and its sizes."""

    at: float
    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True)
class RequestResult:
    """Client-side timings of one streamed request.

    ``itls`` are the gaps between SSE chunks. Under load vLLM's front end merges
    several tokens into one chunk, so :attr:`tpot` (the request's mean time per
    output token after the first) is the robust inter-token latency.
    """

    sent: float
    ttft: float | None
    itls: tuple[float, ...]
    e2e: float | None
    output_tokens: int
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class MetricSample:
    time: float
    waiting: float
    running: float
    kv_usage: float


# How often the load client scrapes /metrics. Scraping costs the server CPU on a
# 2-core machine, so calibration and validation scrape at the same rate.
SAMPLE_INTERVAL_S = 0.05

ENGINE_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
)


@dataclass(frozen=True)
class LoadResult:
    requests: tuple[RequestResult, ...]
    samples: tuple[MetricSample, ...]
    duration: float
    # Means of the server's own latency histograms over the run (sum/count deltas).
    engine_means: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Median TTFT and ITL (per-request TPOT), mean queue depth, running and KV usage."""
        ok = [r for r in self.requests if r.error is None and r.ttft is not None]
        tpots = [r.tpot for r in ok if r.tpot is not None]
        gaps = [x for r in ok for x in r.itls]
        samples = self.samples
        return {
            "requests": float(len(self.requests)),
            "failed": float(len(self.requests) - len(ok)),
            "median_ttft_s": statistics.median([r.ttft for r in ok if r.ttft is not None])
            if ok
            else float("nan"),
            "median_itl_s": statistics.median(tpots) if tpots else float("nan"),
            "median_chunk_gap_s": statistics.median(gaps) if gaps else float("nan"),
            "mean_queue_depth": statistics.fmean(s.waiting for s in samples)
            if samples
            else float("nan"),
            "mean_running": statistics.fmean(s.running for s in samples)
            if samples
            else float("nan"),
            "mean_kv_usage": statistics.fmean(s.kv_usage for s in samples)
            if samples
            else float("nan"),
            **{f"server_mean_{k.removeprefix('vllm:')}": v for k, v in self.engine_means.items()},
        }


def poisson_plan(
    rate: float,
    duration: float,
    *,
    prompt_len: tuple[int, int],
    max_tokens: int,
    vocab: int,
    seed: int,
) -> list[RequestPlan]:
    """Open-loop Poisson arrivals over ``duration`` seconds with uniform prompt lengths."""
    rng = random.Random(seed)
    plans: list[RequestPlan] = []
    t = rng.expovariate(rate)
    while t < duration:
        n = rng.randint(*prompt_len)
        # Ids from 2 upward avoid the BOS/EOS ids of the test tokenizer.
        prompt = tuple(rng.randrange(2, vocab) for _ in range(n))
        plans.append(RequestPlan(at=t, prompt_token_ids=prompt, max_tokens=max_tokens))
        t += rng.expovariate(rate)
    return plans


def parse_sums(text: str, families: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of the named histograms, summed over label sets."""
    out = {f: (0.0, 0.0) for f in families}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        for suffix, idx in (("_sum", 0), ("_count", 1)):
            fam = name.removesuffix(suffix)
            if name.endswith(suffix) and fam in out:
                pair = list(out[fam])
                pair[idx] += value
                out[fam] = (pair[0], pair[1])
    return out


def parse_gauges(text: str, names: Sequence[str]) -> dict[str, float]:
    """Sums the samples of the named gauges in a Prometheus text exposition."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


async def _one(
    session: aiohttp.ClientSession, url: str, model: str, plan: RequestPlan, start: float
) -> RequestResult:
    delay = start + plan.at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    sent = time.monotonic()
    body = {
        "model": model,
        "prompt": list(plan.prompt_token_ids),
        "max_tokens": plan.max_tokens,
        "min_tokens": plan.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    completion_tokens: int | None = None
    times: list[float] = []
    try:
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            if resp.status != 200:
                return RequestResult(sent - start, None, (), None, 0, f"HTTP {resp.status}")
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("choices"):
                    times.append(time.monotonic())
                if chunk.get("usage"):
                    completion_tokens = int(chunk["usage"]["completion_tokens"])
    except (TimeoutError, aiohttp.ClientError) as exc:
        return RequestResult(sent - start, None, (), None, len(times), type(exc).__name__)
    if not times:
        return RequestResult(sent - start, None, (), None, 0, "no tokens")
    itls = tuple(b - a for a, b in itertools.pairwise(times))
    n_out = completion_tokens if completion_tokens is not None else len(times)
    return RequestResult(sent - start, times[0] - sent, itls, times[-1] - sent, n_out)


async def _sampler(
    session: aiohttp.ClientSession, url: str, start: float, interval: float, stop: asyncio.Event
) -> list[MetricSample]:
    names = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
    samples: list[MetricSample] = []
    while not stop.is_set():
        try:
            async with session.get(f"{url}/metrics") as resp:
                g = parse_gauges(await resp.text(), names)
            samples.append(
                MetricSample(time.monotonic() - start, g[names[0]], g[names[1]], g[names[2]])
            )
        except aiohttp.ClientError:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    return samples


async def run_load(
    url: str,
    model: str,
    plans: Sequence[RequestPlan],
    *,
    sample_interval: float = SAMPLE_INTERVAL_S,
    request_timeout: float = 120.0,
) -> LoadResult:
    """Sends ``plans`` open-loop and samples /metrics until the last request ends.

    Samples are taken only while requests are outstanding (from the first send
    to the last response), so idle tails do not dilute the means.
    """
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic() + 0.1
        stop = asyncio.Event()
        first = plans[0].at if plans else 0.0

        async def sample_later() -> list[MetricSample]:
            delay = start + first - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            return await _sampler(session, url, start, sample_interval, stop)

        before = await _sums(session, url)
        sampler = asyncio.create_task(sample_later())
        results = await asyncio.gather(*(_one(session, url, model, p, start) for p in plans))
        stop.set()
        samples = await sampler
        after = await _sums(session, url)
        means = {}
        for fam in ENGINE_HISTOGRAMS:
            ds, dc = after[fam][0] - before[fam][0], after[fam][1] - before[fam][1]
            if dc > 0:
                means[fam] = ds / dc
        return LoadResult(tuple(results), tuple(samples), time.monotonic() - start, means)


async def closed_loop(
    url: str,
    model: str,
    plans: Sequence[RequestPlan],
    *,
    concurrency: int,
    request_timeout: float = 600.0,
) -> tuple[RequestResult, ...]:
    """Sends ``plans`` in order with ``concurrency`` requests always in flight.

    The server never idles for want of work, so completions per second over the
    run measure its saturation throughput; ``sent`` is relative to the start.
    """
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    todo = iter(plans)
    results: list[RequestResult] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic()

        async def client() -> None:
            for plan in todo:
                ready = RequestPlan(0.0, plan.prompt_token_ids, plan.max_tokens)
                results.append(await _one(session, url, model, ready, start))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return tuple(results)


async def _sums(session: aiohttp.ClientSession, url: str) -> dict[str, tuple[float, float]]:
    async with session.get(f"{url}/metrics") as resp:
        return parse_sums(await resp.text(), ENGINE_HISTOGRAMS)


@dataclass
class Sweep:
    """Closed-loop helper for calibration: ``concurrency`` clients back to back."""

    url: str
    model: str
    concurrency: int
    prompt_len: int
    max_tokens: int
    requests_per_client: int
    vocab: int = 400
    seed: int = 0
    results: list[RequestResult] = field(default_factory=list)

    async def run(self) -> list[RequestResult]:
        rng = random.Random(self.seed)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def client() -> None:
                for _ in range(self.requests_per_client):
                    prompt = tuple(rng.randrange(2, self.vocab) for _ in range(self.prompt_len))
                    plan = RequestPlan(0.0, prompt, self.max_tokens)
                    self.results.append(
                        await _one(session, self.url, self.model, plan, time.monotonic())
                    )

            await asyncio.gather(*(client() for _ in range(self.concurrency)))
        return self.results


async def server_sums(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's latency histograms right now."""
    async with aiohttp.ClientSession() as session:
        return await _sums(session, url)
