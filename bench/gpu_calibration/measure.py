"""Measure the work behind one vLLM engine step on one GPU, for the latency profile.

vLLM itself is not needed: a decode or prefill step of a Llama-shaped model is a
fixed sequence of matrix products, attention over a KV cache and small
element-wise kernels, and that sequence is rebuilt here with PyTorch (random
bf16 weights, a real contiguous KV cache, scaled-dot-product attention on the
flash backend). The output is a CSV of median step times that
``fit.py`` turns into the ``effective`` block of a GPU profile.

Two shapes are measured: Llama-3.1-8B (one GPU) and one tensor-parallel rank of
Llama-3.1-70B at TP 4 (a quarter of the heads and of the MLP, all 80 layers).
The shard's time excludes the all-reduces between ranks; with two or more GPUs
the all-reduce of hidden-size activations is timed separately through NCCL.

Only ``torch`` and the standard library are used. ``--smoke`` runs tiny shapes
on the CPU so the script can be checked without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

GIB = 1024**3
EPS = 1e-5
Rope = tuple[torch.Tensor, torch.Tensor]
Cache = tuple[list[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class Shape:
    """The per-GPU dimensions of one model (or one tensor-parallel rank of it)."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int
    tp: int = 1

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def layer_params(self) -> int:
        qkv = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        out = self.heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return qkv + out + mlp

    def matmul_params(self, layers: int) -> int:
        """Parameters that take part in a matrix product each step (lm_head included)."""
        return layers * self.layer_params() + self.vocab * self.hidden

    def kv_bytes_per_token(self, layers: int) -> int:
        return layers * 2 * self.kv_heads * self.head_dim * 2


LLAMA_8B = Shape("llama-3.1-8b", 4096, 32, 8, 128, 14336, 32, 128256, tp=1)
LLAMA_70B_TP4 = Shape(
    "llama-3.1-70b-tp4-shard", 8192, 64 // 4, 8 // 4, 128, 28672 // 4, 80, 128256 // 4, tp=4
)
SMOKE_SHAPES = (
    Shape("smoke-a", 64, 4, 2, 16, 128, 2, 256, tp=1),
    Shape("smoke-b", 64, 2, 1, 16, 64, 3, 128, tp=4),
)


@dataclass
class Config:
    device: torch.device
    out: Path
    shapes: tuple[Shape, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    prompts: tuple[int, ...]
    eager_context: int
    warmup: int
    reps: int
    prefill_reps: int
    headroom_bytes: int
    deadline: float
    graphs: bool
    smoke: bool
    allreduce_tokens: tuple[int, ...]
    allreduce_hiddens: tuple[int, ...]


@dataclass
class Env:
    info: dict[str, Any] = field(default_factory=dict)


CSV_FIELDS = (
    "model",
    "phase",
    "mode",
    "tp",
    "batch",
    "context",
    "prompt_len",
    "n_tokens",
    "layers_measured",
    "layers_total",
    "median_s",
    "p10_s",
    "p90_s",
    "reps",
    "weight_bytes_read",
    "matmul_params",
    "kv_bytes_read",
    "attention_flops",
    "comm_bytes",
    "note",
)


class CsvSink:
    """Appends rows and flushes each one, so a run cut short still leaves its data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("w", newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=CSV_FIELDS)
        self._w.writeheader()
        self._fh.flush()

    def row(self, **kw: Any) -> None:
        full = {k: kw.get(k, "") for k in CSV_FIELDS}
        for k, v in full.items():
            if isinstance(v, float):
                full[k] = f"{v:.6e}"
        self._w.writerow(full)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Seconds per call: CUDA events on a GPU, the host clock after a sync elsewhere."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def summarize(times: Sequence[float]) -> tuple[float, float, float]:
    xs = sorted(times)
    n = len(xs)
    return statistics.median(xs), xs[int(0.1 * (n - 1))], xs[math.ceil(0.9 * (n - 1))]


# ---------------------------------------------------------------- attention


class Attention:
    """Chooses SDPA's backend once, by trying it, and records the choice."""

    def __init__(self, device: torch.device) -> None:
        from torch.nn.attention import SDPBackend

        self.device = device
        self.flash = [SDPBackend.FLASH_ATTENTION]
        self.any = [
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.MATH,
        ]
        self.decode_backends = self.any
        self.prefill_backends = self.any
        self.prefill_gqa = True
        self.notes: dict[str, str] = {}
        if device.type == "cuda":
            self._probe()
        else:
            self.notes = {"decode": "cpu default", "prefill": "cpu default, enable_gqa"}

    def _ctx(self, backends: list[Any]) -> Any:
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(backends)

    def _probe(self) -> None:
        dt_ = torch.bfloat16
        q = torch.randn(2, 8, 4, 128, device=self.device, dtype=dt_)
        k = torch.randn(2, 8, 300, 128, device=self.device, dtype=dt_)
        try:
            with self._ctx(self.flash):
                F.scaled_dot_product_attention(q, k, k)
            self.decode_backends = self.flash
            self.notes["decode"] = "flash (GQA groups folded into the query length)"
        except RuntimeError as exc:
            self.notes["decode"] = f"default backends (flash refused: {str(exc)[:80]})"
        q = torch.randn(1, 32, 256, 128, device=self.device, dtype=dt_)
        k = torch.randn(1, 8, 256, 128, device=self.device, dtype=dt_)
        try:
            with self._ctx(self.flash):
                F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            self.prefill_backends = self.flash
            self.notes["prefill"] = "flash, enable_gqa"
        except RuntimeError as exc:
            self.prefill_gqa = False
            try:
                kk = k.repeat_interleave(4, dim=1)
                with self._ctx(self.flash):
                    F.scaled_dot_product_attention(q, kk, kk, is_causal=True)
                self.prefill_backends = self.flash
                self.notes["prefill"] = (
                    f"flash, KV heads repeated (enable_gqa refused: {str(exc)[:80]})"
                )
            except RuntimeError as exc2:
                self.notes["prefill"] = f"default backends (flash refused: {str(exc2)[:80]})"
        sync(self.device)

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        try:
            with self._ctx(self.decode_backends):
                return F.scaled_dot_product_attention(q, k, v)
        except RuntimeError as exc:
            if self.decode_backends is self.any:
                raise
            # The probe's layout passed but this one did not: fall back once, and say so.
            self.decode_backends = self.any
            self.notes["decode"] = f"default backends (flash refused in the model: {exc!s:.80})"
            log(f"attention: {self.notes['decode']}")
            return self.decode(q, k, v)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        try:
            return self._prefill(q, k, v)
        except RuntimeError as exc:
            if self.prefill_backends is self.any:
                raise
            self.prefill_backends = self.any
            self.notes["prefill"] += f"; default backends (flash refused in the model: {exc!s:.80})"
            log(f"attention: {self.notes['prefill']}")
            return self._prefill(q, k, v)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with self._ctx(self.prefill_backends):
            if self.prefill_gqa:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)


# ---------------------------------------------------------------- model


def rand_(t: torch.Tensor, std: float) -> torch.Tensor:
    """Fill with random values in chunks (no float32 copy of a large tensor)."""
    flat = t.view(-1)
    step = 1 << 28
    for i in range(0, flat.numel(), step):
        flat[i : i + step].normal_(0.0, std)
    return t


class Model:
    """A Llama decoder stack with random weights, written as plain tensor operations."""

    def __init__(
        self, shape: Shape, layers: int, device: torch.device, attn: Attention, std: float = 0.02
    ) -> None:
        self.s = shape
        self.n_layers = layers
        self.device = device
        self.attn = attn
        dtype = torch.bfloat16
        h, d = shape.hidden, shape.head_dim
        qkv_out = (shape.heads + 2 * shape.kv_heads) * d

        def w(*size: int) -> torch.Tensor:
            return rand_(torch.empty(*size, device=device, dtype=dtype), std)

        def norm() -> torch.Tensor:
            return torch.ones(h, device=device, dtype=dtype) + rand_(
                torch.empty(h, device=device, dtype=dtype), 0.01
            )

        self.embed = w(shape.vocab, h)
        self.layers = [
            {
                "ln1": norm(),
                "wqkv": w(qkv_out, h),
                "wo": w(h, shape.heads * d),
                "ln2": norm(),
                "wgu": w(2 * shape.intermediate, h),
                "wdown": w(h, shape.intermediate),
            }
            for _ in range(layers)
        ]
        self.norm = norm()
        self.lm_head = w(shape.vocab, h)
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        self.inv_freq = inv

    def rope_tables(self, positions: torch.Tensor) -> Rope:
        ang = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        return ang.cos().to(torch.bfloat16)[:, None, :], ang.sin().to(torch.bfloat16)[:, None, :]

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _qkv(
        self, x: torch.Tensor, p: dict[str, torch.Tensor], rope: Rope
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.s
        n = x.shape[0]
        hn = F.rms_norm(x, (s.hidden,), p["ln1"], EPS)
        qkv = F.linear(hn, p["wqkv"])
        qk = qkv[:, : (s.heads + s.kv_heads) * s.head_dim].view(n, s.heads + s.kv_heads, s.head_dim)
        qk = self.rope(qk, *rope)
        q = qk[:, : s.heads]
        k = qk[:, s.heads :]
        v = qkv[:, (s.heads + s.kv_heads) * s.head_dim :].view(n, s.kv_heads, s.head_dim)
        return q, k, v

    def _mlp(
        self, x: torch.Tensor, attn_out: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        x = x + F.linear(attn_out, p["wo"])
        hn = F.rms_norm(x, (self.s.hidden,), p["ln2"], EPS)
        gu = F.linear(hn, p["wgu"])
        g, u = gu.chunk(2, dim=-1)
        return x + F.linear(F.silu(g) * u, p["wdown"])

    def decode(
        self,
        tokens: torch.Tensor,
        cache: Cache,
        ctx: int,
        rope: Rope,
        *,
        hidden_out: bool = False,
    ) -> torch.Tensor:
        """One decode step: every sequence has ``ctx`` cached tokens and adds one.

        cache[0][l] is (batch, ctx + 1, kv_heads, head_dim). The query heads that
        share a KV head are folded into the query length, which is exact for a
        single new token and lets the flash kernel read each KV head once.
        """
        s = self.s
        b = tokens.shape[0]
        x = F.embedding(tokens, self.embed)
        for i, p in enumerate(self.layers):
            q, k, v = self._qkv(x, p, rope)
            kc, vc = cache[0][i], cache[1][i]
            kc[:, ctx] = k
            vc[:, ctx] = v
            qg = q.reshape(b, s.kv_heads, s.group, s.head_dim)
            o = self.attn.decode(qg, kc.transpose(1, 2), vc.transpose(1, 2))
            x = self._mlp(x, o.reshape(b, s.heads * s.head_dim), p)
        x = F.rms_norm(x, (s.hidden,), self.norm, EPS)
        return x if hidden_out else F.linear(x, self.lm_head).argmax(dim=-1)

    def prefill(
        self, tokens: torch.Tensor, cache: Cache, rope: Rope, *, hidden_out: bool = False
    ) -> torch.Tensor:
        """One prompt of length L: causal attention, KV written to the cache, last logits only."""
        s = self.s
        n = tokens.shape[0]
        x = F.embedding(tokens, self.embed)
        for i, p in enumerate(self.layers):
            q, k, v = self._qkv(x, p, rope)
            cache[0][i][0].copy_(k)
            cache[1][i][0].copy_(v)
            o = self.attn.prefill(
                q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
            )
            x = self._mlp(x, o[0].transpose(0, 1).reshape(n, s.heads * s.head_dim), p)
        x = F.rms_norm(x[-1:], (s.hidden,), self.norm, EPS)
        return x if hidden_out else F.linear(x, self.lm_head).argmax(dim=-1)


class KvBuffer:
    """One flat KV buffer per layer, carved into (batch, seq, kv_heads, head_dim) views."""

    def __init__(self, shape: Shape, layers: int, tokens: int, device: torch.device) -> None:
        self.s = shape
        self.tokens = tokens
        self.buf = torch.empty(
            layers, 2, tokens, shape.kv_heads, shape.head_dim, device=device, dtype=torch.bfloat16
        )
        rand_(self.buf, 1.0)

    def views(self, batch: int, seq: int) -> Cache:
        n = batch * seq
        if n > self.tokens:
            raise ValueError("does not fit")
        s = self.s
        ks = [
            self.buf[i, 0, :n].view(batch, seq, s.kv_heads, s.head_dim)
            for i in range(self.buf.shape[0])
        ]
        vs = [
            self.buf[i, 1, :n].view(batch, seq, s.kv_heads, s.head_dim)
            for i in range(self.buf.shape[0])
        ]
        return ks, vs


# ---------------------------------------------------------------- measurements


def out_of_time(cfg: Config) -> bool:
    return time.monotonic() > cfg.deadline


def measure_ceilings(cfg: Config, sink: CsvSink) -> None:
    """Device-to-device copy bandwidth and a large bf16 matrix product: the two ceilings."""
    dev = cfg.device
    n = (1 << 20) if cfg.smoke else (1 << 30)  # elements of bf16: 2 GiB on a GPU
    a = rand_(torch.empty(n, device=dev, dtype=torch.bfloat16), 1.0)
    b = torch.empty_like(a)
    med, p10, p90 = summarize(time_fn(lambda: b.copy_(a), dev, 3, 20))
    moved = 2 * a.numel() * 2
    sink.row(
        model="-",
        phase="copy",
        mode="eager",
        median_s=med,
        p10_s=p10,
        p90_s=p90,
        reps=20,
        weight_bytes_read=moved,
        note="bytes read + written",
    )
    log(f"copy: {moved / med / 1e12:.2f} TB/s (read+write)")
    m = 256 if cfg.smoke else 8192
    x = rand_(torch.empty(m, m, device=dev, dtype=torch.bfloat16), 1.0)
    y = rand_(torch.empty(m, m, device=dev, dtype=torch.bfloat16), 1.0)
    med, p10, p90 = summarize(time_fn(lambda: x @ y, dev, 3, 20))
    flops = 2 * m**3
    sink.row(
        model="-",
        phase="matmul",
        mode="eager",
        n_tokens=m,
        median_s=med,
        p10_s=p10,
        p90_s=p90,
        reps=20,
        attention_flops=flops,
        note=f"{m}^3 bf16 random",
    )
    log(f"matmul {m}^3: {flops / med / 1e12:.1f} TFLOP/s")


def check_consistency(cfg: Config, attn: Attention) -> float:
    """Decode after a prefill must equal a prefill one token longer (same last hidden state).

    This checks the KV-cache writes, the folded grouped-query attention of the
    decode path, the causal mask and the rotary positions on the device itself.
    """
    dev = cfg.device
    shape = Shape("check", 256, 8, 2, 128, 512, 2, 512)
    model = Model(shape, shape.layers, dev, attn, std=0.1)
    length = 100
    kv = KvBuffer(shape, shape.layers, 4 * length, dev)
    tokens = torch.randint(0, shape.vocab, (length + 1,), device=dev)
    with torch.inference_mode():
        cos, sin = model.rope_tables(torch.arange(length + 1, device=dev))
        ref = model.prefill(tokens, kv.views(1, length + 1), (cos, sin), hidden_out=True).float()
        kv.buf.normal_()
        model.prefill(tokens[:length], kv.views(1, length), (cos[:length], sin[:length]))
        got = model.decode(
            tokens[length:],
            kv.views(1, length + 1),
            length,
            (cos[length:], sin[length:]),
            hidden_out=True,
        ).float()
    err = float((got - ref).norm() / ref.norm())
    if not math.isfinite(err) or err > 3e-2:
        # Timings stay meaningful; the flag in env.json says the numerics need a look.
        log(f"WARNING: decode disagrees with prefill: relative error {err:.3e}")
        return err
    log(
        f"check: decode after prefill matches a longer prefill (relative error {err:.2e}); "
        f"attention {attn.notes}"
    )
    return err


def fit_layers(shape: Shape, device: torch.device, cfg: Config) -> int:
    """All layers when they fit with room for KV; fewer otherwise (scaled in the fit)."""
    if device.type != "cuda":
        return shape.layers
    free, _ = torch.cuda.mem_get_info(device)
    fixed = 2 * shape.vocab * shape.hidden * 2
    per_layer = shape.layer_params() * 2
    # keep at least 30% of the free memory for the KV cache and activations
    fit = int((0.7 * free - fixed) // per_layer)
    return max(1, min(shape.layers, fit))


def measure_model(cfg: Config, shape: Shape, sink: CsvSink, attn: Attention) -> None:
    dev = cfg.device
    layers = fit_layers(shape, dev, cfg)
    if layers < shape.layers:
        log(f"{shape.name}: only {layers} of {shape.layers} layers fit; measuring those")
    t = time.monotonic()
    model = Model(shape, layers, dev, attn)
    sync(dev)
    free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else 64 << 20
    kv_tok_bytes = shape.kv_bytes_per_token(layers)
    cap = int((free - cfg.headroom_bytes) // kv_tok_bytes)
    log(
        f"{shape.name}: weights built in {time.monotonic() - t:.1f}s, layers={layers}, "
        f"KV capacity {cap} tokens ({cap * kv_tok_bytes / GIB:.1f} GiB)"
    )
    kv = KvBuffer(shape, layers, cap, dev)
    sync(dev)
    params = shape.matmul_params(layers)
    wbytes = params * 2
    common = {
        "model": shape.name,
        "tp": shape.tp,
        "layers_measured": layers,
        "layers_total": shape.layers,
        "matmul_params": params,
        "weight_bytes_read": wbytes,
    }

    broken: list[bool] = []

    def graphed(step: Callable[[], torch.Tensor]) -> Callable[[], object]:
        """Capture one step in a CUDA graph, as vLLM does, and return its replay."""
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Each graph gets its own memory pool, released with it (a pool shared
        # across deleted graphs trips an allocator assertion in PyTorch 2.11).
        try:
            with torch.cuda.graph(graph):
                step()
        except RuntimeError:
            broken.append(True)
            log("graph capture failed: the remaining points run eagerly")
            raise
        replay: Callable[[], object] = graph.replay
        return replay

    def decode_point(batch: int, ctx: int, mode: str) -> None:
        seq = ctx + 1
        cache = kv.views(batch, seq)
        tokens = torch.randint(0, shape.vocab, (batch,), device=dev)
        rope = model.rope_tables(torch.full((1,), ctx, device=dev))

        def step() -> torch.Tensor:
            return model.decode(tokens, cache, ctx, rope)

        if mode == "graph" and broken:
            mode = "eager"
        fn = graphed(step) if mode == "graph" else step
        times = time_fn(fn, dev, cfg.warmup, cfg.reps)
        med, p10, p90 = summarize(times)
        kv_read = batch * seq * kv_tok_bytes
        sink.row(
            **common,
            phase="decode",
            mode=mode,
            batch=batch,
            context=ctx,
            n_tokens=batch,
            median_s=med,
            p10_s=p10,
            p90_s=p90,
            reps=cfg.reps,
            kv_bytes_read=kv_read,
            attention_flops=4 * batch * shape.heads * shape.head_dim * seq * layers,
        )
        log(
            f"{shape.name} decode {mode:5s} b={batch:4d} ctx={ctx:6d}: {med * 1e3:8.3f} ms "
            f"(p10 {p10 * 1e3:.3f}, p90 {p90 * 1e3:.3f})"
        )

    def prefill_point(length: int, mode: str) -> None:
        cache = kv.views(1, length)
        tokens = torch.randint(0, shape.vocab, (length,), device=dev)
        rope = model.rope_tables(torch.arange(length, device=dev))

        def step() -> torch.Tensor:
            return model.prefill(tokens, cache, rope)

        if mode == "graph" and broken:
            mode = "eager"
        fn = graphed(step) if mode == "graph" else step
        times = time_fn(fn, dev, 2, cfg.prefill_reps)
        med, p10, p90 = summarize(times)
        causal_flops = 2 * length * length * shape.heads * shape.head_dim * layers
        sink.row(
            **common,
            phase="prefill",
            mode=mode,
            batch=1,
            prompt_len=length,
            n_tokens=length,
            median_s=med,
            p10_s=p10,
            p90_s=p90,
            reps=cfg.prefill_reps,
            kv_bytes_read=length * kv_tok_bytes,
            attention_flops=causal_flops,
            note="attention_flops = 2*L^2*heads*head_dim*layers (causal half of 4*L^2*...)",
        )
        log(f"{shape.name} prefill {mode:5s} L={length:6d}: {med * 1e3:9.3f} ms")

    def guarded(fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except torch.cuda.OutOfMemoryError:
            log(f"{shape.name} {what}: out of memory, skipped")
            sink.row(model=shape.name, phase="skipped", note=f"{what}: out of memory")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except RuntimeError as exc:
            log(f"{shape.name} {what}: failed, skipped: {exc!s:.200}")
            sink.row(model=shape.name, phase="skipped", note=f"{what}: {exc!s:.100}")

    with torch.inference_mode():
        main_mode = "graph" if (cfg.graphs and dev.type == "cuda") else "eager"
        for ctx in cfg.contexts:
            for batch in cfg.batches:
                if batch * (ctx + 1) > cap:
                    continue
                if out_of_time(cfg):
                    log("deadline reached; stopping decode sweep")
                    break
                guarded(partial(decode_point, batch, ctx, main_mode), f"decode b={batch} ctx={ctx}")
        for length in cfg.prompts:
            if length > cap or out_of_time(cfg):
                continue
            guarded(partial(prefill_point, length, main_mode), f"prefill L={length}")
        if main_mode == "graph":
            # Eager steps beside the graphed ones show the launch overhead that graphs remove.
            eager_points = [(b, cfg.eager_context) for b in cfg.batches]
            eager_points += [(1, c) for c in cfg.contexts if c != cfg.eager_context]
            for length in cfg.prompts[::3]:
                if length > cap or out_of_time(cfg):
                    continue
                guarded(partial(prefill_point, length, "eager"), f"eager prefill L={length}")
            for batch, ctx in eager_points:
                if batch * (ctx + 1) > cap or out_of_time(cfg):
                    continue
                guarded(partial(decode_point, batch, ctx, "eager"), f"eager b={batch} ctx={ctx}")


# ---------------------------------------------------------------- all-reduce


def _allreduce_worker(rank: int, world: int, port: int, cfg_json: str, result_path: str) -> None:
    import torch.distributed as dist

    cfg = json.loads(cfg_json)
    smoke = cfg["smoke"]
    backend = "gloo" if smoke else "nccl"
    if not smoke:
        torch.cuda.set_device(rank)
    dev = torch.device("cpu") if smoke else torch.device("cuda", rank)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    rows: list[dict[str, Any]] = []
    dtype = torch.float32 if smoke else torch.bfloat16
    # Eager calls only: capturing these NCCL all-reduces in a CUDA graph hung on
    # the 2 x H200 machine (PyTorch 2.11, NCCL 2.28.3), so host launch cost is included.
    for hidden in cfg["hiddens"]:
        for n in cfg["tokens"]:
            x = torch.randn(n, hidden, device=dev, dtype=dtype)
            nbytes = n * hidden * x.element_size()
            dist.barrier()
            times = time_fn(partial(dist.all_reduce, x), dev, 5, cfg["reps"])
            med, p10, p90 = summarize(times)
            row = {"hidden": hidden, "n_tokens": n, "bytes": nbytes, "mode": "eager"}
            rows.append({**row, "median_s": med, "p10_s": p10, "p90_s": p90})
    if rank == 0:
        Path(result_path).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def measure_allreduce(cfg: Config, sink: CsvSink, world: int) -> None:
    import torch.multiprocessing as mp

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    result = cfg.out / "allreduce.json"
    payload = json.dumps(
        {
            "smoke": cfg.smoke,
            "hiddens": list(cfg.allreduce_hiddens),
            "tokens": list(cfg.allreduce_tokens),
            "reps": cfg.reps,
        }
    )
    port = 29500 + os.getpid() % 1000
    mp.spawn(_allreduce_worker, args=(world, port, payload, str(result)), nprocs=world, join=True)
    for r in json.loads(result.read_text()):
        sink.row(
            model=f"hidden-{r['hidden']}",
            phase="allreduce",
            mode=r["mode"],
            tp=world,
            n_tokens=r["n_tokens"],
            median_s=r["median_s"],
            p10_s=r["p10_s"],
            p90_s=r["p90_s"],
            reps=cfg.reps,
            comm_bytes=r["bytes"],
            note="torch.distributed all_reduce, NCCL, one process per GPU",
        )
        log(
            f"allreduce {r['mode']:5s} tp={world} hidden={r['hidden']} n={r['n_tokens']:6d}: "
            f"{r['median_s'] * 1e6:9.1f} us"
        )


# ---------------------------------------------------------------- environment


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=p.name,
            gpu_memory_bytes=p.total_memory,
            multiprocessors=p.multi_processor_count,
            device_count=torch.cuda.device_count(),
        )
        try:
            q = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                    "clocks.max.mem,power.limit,temperature.gpu,clocks.sm",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            info["nvidia_smi"] = q.stdout.strip()
            info["driver"] = q.stdout.split(",")[1].strip() if q.stdout else ""
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    return info


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--models", default="8b,70b-tp4")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,96,128,192,256,384,512")
    ap.add_argument("--contexts", default="128,512,1024,2048,4096,8192,16384,32768")
    ap.add_argument(
        "--prompts", default="64,128,256,512,768,1024,1536,2048,3072,4096,6144,8192,12288,16384"
    )
    ap.add_argument("--eager-context", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--prefill-reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--headroom-gib", type=float, default=6.0)
    ap.add_argument(
        "--max-minutes", type=float, default=8.0, help="stop starting new points after this"
    )
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--no-allreduce", action="store_true")
    ap.add_argument(
        "--allreduce-only", action="store_true", help="only the all-reduce (several GPUs)"
    )
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    shapes: tuple[Shape, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    prompts: tuple[int, ...]
    ar_tokens: tuple[int, ...]
    ar_hiddens: tuple[int, ...]
    if args.smoke:
        device = torch.device("cpu")
        shapes = SMOKE_SHAPES
        batches, contexts, prompts = (1, 2), (16, 32), (8, 16)
        eager_ctx = 16
        ar_tokens, ar_hiddens = (1, 8), (64,)
        reps, warmup, prefill_reps = 3, 1, 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --smoke for the CPU check", file=sys.stderr)
            return 2
        device = torch.device("cuda", 0)
        by_key = {"8b": LLAMA_8B, "70b-tp4": LLAMA_70B_TP4}
        shapes = tuple(by_key[k] for k in args.models.split(",") if k)
        batches, contexts, prompts = (
            parse_ints(args.batches),
            parse_ints(args.contexts),
            parse_ints(args.prompts),
        )
        eager_ctx = args.eager_context
        ar_tokens = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
        ar_hiddens = (4096, 8192)
        reps, warmup, prefill_reps = args.reps, args.warmup, args.prefill_reps
    cfg = Config(
        device=device,
        out=out,
        shapes=shapes,
        batches=batches,
        contexts=contexts,
        prompts=prompts,
        eager_context=eager_ctx,
        warmup=warmup,
        reps=reps,
        prefill_reps=prefill_reps,
        headroom_bytes=0 if args.smoke else int(args.headroom_gib * GIB),
        deadline=start + 60 * args.max_minutes,
        graphs=not args.no_graphs,
        smoke=args.smoke,
        allreduce_tokens=ar_tokens,
        allreduce_hiddens=ar_hiddens,
    )
    env = Env(environment(device))
    env.info["shapes"] = [asdict(s) for s in shapes]
    env.info["kv_cache"] = "contiguous per sequence, one flat buffer per layer, random bf16"
    env.info["step_mode"] = (
        "CUDA graph per point (decode and prefill), eager beside it for a subset"
        if cfg.graphs
        else "eager"
    )
    log(f"environment: {json.dumps(env.info)}")
    sink = CsvSink(out / "measured.csv")
    try:
        if args.allreduce_only:
            shapes = ()
        else:
            attn = Attention(device)
            env.info["attention"] = attn.notes
            env.info["consistency_rel_err"] = check_consistency(cfg, attn)
            with torch.inference_mode():
                measure_ceilings(cfg, sink)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for shape in shapes:
            if out_of_time(cfg):
                log(f"deadline reached; {shape.name} not measured")
                continue
            measure_model(cfg, shape, sink, attn)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        world = 2 if args.smoke else (torch.cuda.device_count() if device.type == "cuda" else 1)
        if world >= 2 and not args.no_allreduce:
            tp = 2
            while tp <= world and not out_of_time(cfg):
                measure_allreduce(cfg, sink, tp)
                tp *= 2
        elif world < 2:
            log("one GPU: all-reduce not measured")
    finally:
        sink.close()
        if device.type == "cuda":
            env.info["nvidia_smi_after"] = environment(device).get("nvidia_smi", "")
        env.info["wall_s"] = round(time.monotonic() - start, 1)
        (out / "env.json").write_text(json.dumps(env.info, indent=2))
    log(
        f"done in {time.monotonic() - start:.1f}s; "
        f"wrote {out / 'measured.csv'} and {out / 'env.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
