"""Serving capacity of one replica of a revision, from the planner's memory model.

Rollout steps move capacity, not replica counts: a TP1 AWQ replica and a TP4 BF16
replica do not serve the same load. Decode is memory-bandwidth bound, so a replica's
throughput is estimated as a roofline: every decode step reads this rank's weights and
the KV cache of every running sequence from HBM, and produces one token per sequence.
The running sequences are what the KV cache holds at the average context length (half
of max_model_len), capped by the scheduler's sequence limit. The estimate is only ever
compared with another estimate from the same model, so its constant factors cancel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from kvpilot.planning.gpus import gpu_type
from kvpilot.planning.memory import MemoryBreakdown

#: Share of peak HBM bandwidth decode reaches (measured vLLM decode runs reach 60-80 %).
BANDWIDTH_EFFICIENCY: Final = 0.7
#: The scheduler's sequence limit when the memory model states none (vLLM's default).
DEFAULT_MAX_SEQUENCES: Final = 256
#: Annotation on each revision's Deployment: the estimate made from that revision's spec,
#: so the stable revision's capacity is known after the spec has moved on.
CAPACITY_ANNOTATION: Final = "kvpilot.io/capacity-tokens-per-second"
KV_ANNOTATION: Final = "kvpilot.io/kv-capacity-tokens"


@dataclass(frozen=True)
class ReplicaCapacity:
    """Estimated decode tokens/s and KV cache tokens of one replica."""

    tokens_per_s: float
    kv_tokens: int

    def __post_init__(self) -> None:
        if self.tokens_per_s <= 0:
            raise ValueError("a replica's capacity must be positive")


def replica_capacity(mem: MemoryBreakdown, max_sequences: int | None = None) -> ReplicaCapacity:
    """Roofline decode throughput of one replica with memory breakdown `mem`."""
    gpu = gpu_type(mem.gpu_type)
    bandwidth = (gpu.hbm_bandwidth_gbps if gpu is not None else 1000.0) * 1e9
    avg_context = max(1, mem.max_model_len // 2)
    held = mem.kv_capacity_tokens // avg_context
    limit = max_sequences or max(mem.target_sequences, DEFAULT_MAX_SEQUENCES)
    sequences = max(1, min(held, limit))
    # Per rank: weights plus each running sequence's KV; ranks work in parallel.
    step_bytes = mem.weights_bytes + sequences * avg_context * mem.kv_bytes_per_token
    step_s = step_bytes / (bandwidth * BANDWIDTH_EFFICIENCY)
    return ReplicaCapacity(tokens_per_s=sequences / step_s, kv_tokens=mem.kv_capacity_tokens)


def per_gpu_equivalent(known: ReplicaCapacity, known_gpus: int, gpus: int) -> ReplicaCapacity:
    """A revision with no recorded estimate (a Deployment from before estimates were
    recorded): assume it serves as much per GPU as the one that is known."""
    share = gpus / max(1, known_gpus)
    return ReplicaCapacity(known.tokens_per_s * share, math.floor(known.kv_tokens * share))
