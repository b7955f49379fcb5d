"""vLLM's command line as the engine simulator reads it, and the engine it configures.

Kept apart from the HTTP server so that the fleet simulator configures its replicas
from the same arguments without importing the server's web stack.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from kvpilot_runtime.engine import (
    BLOCK_SIZE,
    EngineConfig,
    cpu_kv_cache_blocks,
    gpu_kv_cache_blocks,
)
from kvpilot_runtime.latency import ModelShape, Profile, load_profile
from kvpilot_runtime.models import resolve_shape

log = logging.getLogger("kvpilot.sim")

ENV_PREFIX = "KVPILOT_SIM_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def build_parser() -> argparse.ArgumentParser:
    """vLLM's serving arguments that matter to the model, plus the simulator's own."""
    p = argparse.ArgumentParser(prog="kvpilot-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("model_tag", nargs="?", default=None, help="model (as `vllm serve MODEL`)")
    p.add_argument("--model", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--quantization", "-q", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--max-model-len", type=str, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--long-prefill-token-threshold", type=int, default=0)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--num-gpu-blocks-override", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--download-dir", default=None)
    p.add_argument("--revision", default=None)
    sim = p.add_argument_group("simulator (env KVPILOT_SIM_<NAME>)")
    sim.add_argument("--profile", default=_env("PROFILE", "h100-80gb"), help="latency profile")
    sim.add_argument(
        "--time-scale",
        type=float,
        default=float(_env("TIME_SCALE", "1") or 1),
        help="simulated seconds per wall-clock second",
    )
    sim.add_argument(
        "--fail-fraction",
        type=float,
        default=float(_env("FAIL_FRACTION", "0") or 0),
        help="fraction of requests answered with HTTP 500",
    )
    sim.add_argument(
        "--slowdown",
        type=float,
        default=float(_env("SLOWDOWN", "1") or 1),
        help="multiplier on every step time",
    )
    sim.add_argument(
        "--load-delay",
        type=float,
        default=float(_env("LOAD_DELAY", "0") or 0),
        help="seconds before /health turns 200 (model load)",
    )
    sim.add_argument(
        "--model-shape",
        default=_env("MODEL_SHAPE"),
        help="JSON ModelShape or catalog name; default: config.json, catalog, Llama-3.1-8B",
    )
    sim.add_argument(
        "--step-jitter",
        type=float,
        default=float(_env("STEP_JITTER", "0") or 0),
        help="log-normal sigma of step-time noise",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses vLLM-style argv; unknown vLLM arguments are logged and ignored."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        log.warning("Ignoring arguments the simulator does not model: %s", " ".join(unknown))
    args.model = args.model or args.model_tag or "meta-llama/Llama-3.1-8B-Instruct"
    return args


def _parse_len(text: str | None) -> int | None:
    """vLLM's --max-model-len spelling: 8192, 8k (decimal) or 8K (binary); auto/-1 for default."""
    if text is None or text.strip() in ("auto", "-1"):
        return None
    t = text.strip()
    units = {"k": 1000, "m": 1000**2, "g": 1000**3, "K": 1024, "M": 1024**2, "G": 1024**3}
    if t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


@dataclass(frozen=True)
class SimSetup:
    """Everything derived from the arguments before serving."""

    served_names: tuple[str, ...]
    model: str
    profile: Profile
    shape: ModelShape
    shape_source: str
    config: EngineConfig
    kv_cache_bytes: float


def setup_from_args(args: argparse.Namespace) -> SimSetup:
    """Derives the engine configuration vLLM would end up with on the profile's device."""
    profile = load_profile(args.profile)
    shape, source = resolve_shape(
        args.model,
        override=args.model_shape,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        dtype=args.dtype,
    )
    tp = max(1, int(args.tensor_parallel_size))
    is_cpu = profile.gpu.lower() == "cpu"
    block_size = int(
        args.block_size or profile.extra.get("block_size", 128 if is_cpu else BLOCK_SIZE)
    )
    if is_cpu:
        space = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 0) or profile.memory_gib
        blocks = cpu_kv_cache_blocks(shape, space, block_size=block_size)
        default_tokens, default_seqs = 2048 * tp, 128 * tp
    else:
        blocks = gpu_kv_cache_blocks(
            shape, tp, profile.memory_gib, args.gpu_memory_utilization, block_size=block_size
        )
        big = profile.memory_gib >= 70 and "a100" not in profile.gpu.lower()
        default_tokens, default_seqs = (8192, 1024) if big else (2048, 256)
    if args.num_gpu_blocks_override:
        blocks = int(args.num_gpu_blocks_override)
    max_model_len = _parse_len(args.max_model_len)
    if max_model_len is None:
        max_model_len = min(8192, (blocks - 1) * block_size)
    config = EngineConfig(
        num_blocks=blocks,
        max_model_len=max_model_len,
        max_num_seqs=args.max_num_seqs or default_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens or max(default_tokens, 0),
        block_size=block_size,
        enable_prefix_caching=bool(args.enable_prefix_caching),
        enable_chunked_prefill=bool(args.enable_chunked_prefill),
        long_prefill_token_threshold=int(args.long_prefill_token_threshold),
        tensor_parallel_size=tp,
        step_jitter=float(args.step_jitter),
        seed=int(args.seed),
    )
    names = tuple(args.served_model_name or [args.model])
    kv_bytes = blocks * block_size * shape.kv_bytes_per_token_per_gpu(tp)
    return SimSetup(names, args.model, profile, shape, source, config, kv_bytes)
