"""Presentation of a placement plan: a JSON-ready dict and a table an SRE reads at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvpilot.planning.gpus import GIB
from kvpilot.planning.inventory import Inventory
from kvpilot.planning.memory import MemoryBreakdown
from kvpilot.planning.placement import PlacementPlan, ServicePlacement


def gpu_memory(mem: MemoryBreakdown) -> dict[str, float]:
    """Per-GPU memory as status.placement.memory reports it, in GiB (two decimals).

    `kvCacheGiB` means one thing everywhere (status, `kvpilot plan` table and JSON): the
    KV cache vLLM will allocate, i.e. what the budget leaves after weights and overhead.
    """
    return {
        "weightsGiB": _gib(mem.weights_bytes),
        "kvCacheGiB": _gib(mem.kv_allocated_bytes),
        "overheadGiB": _gib(mem.overhead_bytes),
        "totalGiB": _gib(mem.weights_bytes + mem.kv_allocated_bytes + mem.overhead_bytes),
        "capacityGiB": _gib(mem.budget_bytes),
    }


def memory_dict(mem: MemoryBreakdown) -> dict[str, Any]:
    """Per-GPU memory in GiB (two decimals) plus the KV figures that explain it."""
    return {
        "gpuMemoryGiB": _gib(mem.gpu_memory_bytes),
        "budgetGiB": _gib(mem.budget_bytes),
        "weightsGiB": _gib(mem.weights_bytes),
        "kvCacheGiB": _gib(mem.kv_allocated_bytes),
        "kvTargetGiB": _gib(mem.kv_cache_bytes),
        "activationGiB": _gib(mem.activation_bytes),
        "cudaGraphGiB": _gib(mem.cuda_graph_bytes),
        "runtimeOverheadGiB": _gib(mem.runtime_overhead_bytes),
        "freeGiB": _gib(mem.free_bytes),
        "kvBytesPerToken": mem.kv_bytes_per_token,
        "kvCapacityTokens": mem.kv_capacity_tokens,
        "maxModelLen": mem.max_model_len,
        "targetSequences": mem.target_sequences,
        "capacitySequences": round(mem.capacity_sequences, 2),
    }


def service_dict(s: ServicePlacement) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": s.name,
        "reason": s.reason,
        "message": s.message,
        "priority": s.priority,
        "minReplicas": s.min_replicas,
        "replicasWanted": s.replicas_wanted,
        "replicasPlaced": s.replicas_placed,
        "gpuType": s.gpu_type,
        "tensorParallel": s.tensor_parallel,
        "gpusPerReplica": s.gpus_per_replica,
        "gpusUsed": s.gpus_used,
        "nodes": dict(s.nodes),
    }
    if s.option is not None:
        out["reducedKVCache"] = s.option.reduced_kv
        out["memory"] = memory_dict(s.option.memory)
    return out


def pool_rows(plan: PlacementPlan, inventory: Inventory) -> list[dict[str, Any]]:
    """Per GPU type: nodes, GPUs, free before the plan, planned, free after."""
    after = dict(plan.free)
    rows: dict[str, dict[str, Any]] = {}
    for n in inventory.usable_nodes:
        assert n.gpu_type is not None
        row = rows.setdefault(
            n.gpu_type, {"gpuType": n.gpu_type, "nodes": 0, "gpus": 0, "free": 0, "freeAfter": 0}
        )
        row["nodes"] += 1
        row["gpus"] += n.allocatable
        row["free"] += n.free
        row["freeAfter"] += after.get(n.name, n.free)
    for row in rows.values():
        row["planned"] = row["free"] - row["freeAfter"]
    return [rows[k] for k in sorted(rows)]


def plan_dict(plan: PlacementPlan, inventory: Inventory) -> dict[str, Any]:
    return {
        "services": [service_dict(s) for s in plan.services],
        "pool": pool_rows(plan, inventory),
        "excludedNodes": [
            {"name": n.name, "reason": n.excluded or "no known GPU type"}
            for n in inventory.nodes
            if not n.usable
        ],
        "gpusPlanned": plan.gpus_used,
        "moves": [
            {
                "service": m.service,
                "fromNode": m.from_node,
                "replicas": m.replicas,
                "toNodes": [{"name": n, "replicas": c} for n, c in m.to_nodes],
                "forService": m.for_service,
                "why": m.why,
            }
            for m in plan.moves
        ],
        "typeMoves": [
            {
                "service": m.service,
                "reason": m.reason,
                "from": {"gpuType": m.from_option[0], "tensorParallel": m.from_option[1]},
                "to": {"gpuType": m.to_option[0], "tensorParallel": m.to_option[1]},
                "replicas": m.replicas,
                "why": m.why,
            }
            for m in plan.type_moves
        ],
    }


def plan_table(plan: PlacementPlan, inventory: Inventory) -> str:
    """Services, then the pool, then one line per service that is not simply placed."""
    header = (
        "SERVICE",
        "PRIORITY",
        "GPU TYPE",
        "TP",
        "REPLICAS",
        "GPUS",
        "WEIGHTS",
        "KV CACHE",
        "OVERHEAD",
        "BUDGET",
        "REASON",
    )
    rows = [header]
    for s in plan.services:
        mem = s.memory
        rows.append(
            (
                s.name,
                str(s.priority),
                s.gpu_type or "-",
                str(s.tensor_parallel or "-"),
                f"{s.replicas_placed}/{s.replicas_wanted}",
                str(s.gpus_used),
                _cell(mem.weights_bytes) if mem else "-",
                _cell(mem.kv_allocated_bytes) if mem else "-",
                _cell(mem.overhead_bytes) if mem else "-",
                _cell(mem.budget_bytes) if mem else "-",
                s.reason,
            )
        )
    lines = _columns(rows)
    lines.append("")
    lines.append(
        "Memory is per GPU in GiB; KV CACHE is what vLLM allocates: all the budget leaves."
    )
    pool = [("GPU TYPE", "NODES", "GPUS", "FREE", "PLANNED", "FREE AFTER")]
    for row in pool_rows(plan, inventory):
        pool.append(
            (
                row["gpuType"],
                str(row["nodes"]),
                str(row["gpus"]),
                str(row["free"]),
                str(row["planned"]),
                str(row["freeAfter"]),
            )
        )
    lines.append("")
    lines.extend(_columns(pool))
    notes = [
        f"  {s.name}: {s.message}"
        for s in plan.services
        if s.reason != "Placed" or (s.option is not None and s.option.reduced_kv)
    ]
    excluded = [f"  {n.name}: {n.excluded}" for n in inventory.nodes if n.excluded]
    placed = [
        f"  {s.name}: " + ", ".join(f"{node} x{count}" for node, count in s.nodes)
        for s in plan.services
        if s.nodes
    ]
    if placed:
        lines += ["", "Nodes (replicas per node):", *placed]
    if plan.moves:
        lines += ["", "Moves (make before break):", *(f"  {m.describe()}" for m in plan.moves)]
    if plan.type_moves:
        lines += [
            "",
            "GPU type changes (a rollout, make before break):",
            *(f"  {m.describe()}" for m in plan.type_moves),
        ]
    if notes:
        lines += ["", "Why:", *notes]
    if excluded:
        lines += ["", "Nodes not used:", *excluded]
    return "\n".join(lines)


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _cell(value: int) -> str:
    return f"{value / GIB:.1f}"


def _gib(value: int) -> float:
    return round(value / GIB, 2)


def catalog_rows() -> list[dict[str, Any]]:
    """The model catalog as `kvpilot models` lists it, one row per catalog entry."""
    from kvpilot.planning.memory import kv_bytes_per_token
    from kvpilot.planning.models import CATALOG, QUANTIZED_REPOSITORIES

    rows = []
    for key in sorted(CATALOG):
        shape = CATALOG[key]
        rows.append(
            {
                "name": key,
                "parametersBillions": shape.parameters_billions,
                "activeParametersBillions": shape.active_parameters_billions,
                "layers": shape.layers,
                "attentionHeads": shape.attention_heads,
                "kvHeads": shape.kv_heads,
                "headDim": shape.head_dim,
                "kvBytesPerToken": kv_bytes_per_token(shape),
                "contextLength": shape.context_length,
                "quantizedVariants": [
                    {"repository": repo, "quantization": quant}
                    for repo, quant in QUANTIZED_REPOSITORIES.get(key, ())
                ],
            }
        )
    return rows


def catalog_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "MODEL",
        "PARAMS (B)",
        "LAYERS",
        "HEADS",
        "KV HEADS",
        "KV B/TOKEN",
        "CONTEXT",
        "QUANTIZED",
    )
    table = [header]
    for r in rows:
        params = f"{r['parametersBillions']:g}"
        if r["activeParametersBillions"] is not None:
            params += f" ({r['activeParametersBillions']:g} active)"
        variants = sorted({v["quantization"] for v in r["quantizedVariants"]})
        table.append(
            (
                r["name"],
                params,
                str(r["layers"]),
                str(r["attentionHeads"]),
                str(r["kvHeads"]),
                str(r["kvBytesPerToken"]),
                str(r["contextLength"] or "-"),
                ",".join(variants) or "-",
            )
        )
    lines = _columns(table)
    lines.append("")
    lines.append(
        "KV B/TOKEN is per token at a 16-bit KV cache on one GPU (an fp8 KV cache halves it); "
        "-o json lists the quantized repositories."
    )
    return "\n".join(lines)
