"""GPU inventory: free whole GPUs per node and GPU type, from plain Node and Pod dicts.

Inputs are the API objects as JSON-style dicts (camelCase keys, as `kubectl get -o json`
or the client's `sanitize_for_serialization` give them), so this stays free of the
Kubernetes client. A node counts when it is schedulable, Ready (if it reports readiness),
carries no NoSchedule/NoExecute taint that kvpilot pods do not tolerate, and its GPU
product maps to a known whole-GPU type. Its free GPUs are allocatable `nvidia.com/gpu`
minus what bound, non-terminated pods request.

For planning, the controller passes `exclude_pod` matching kvpilot's own pods: the planner
then decides over everything not held by other workloads, and may move GPUs between
kvpilot services by priority.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvpilot.api.names import GPU_MEMORY_LABEL as MEMORY_LABEL
from kvpilot.api.names import GPU_PRODUCT_LABEL as PRODUCT_LABEL
from kvpilot.api.names import GPU_RESOURCE, RESERVED_TAINT
from kvpilot.api.names import MANAGED_BY as MANAGED_BY_LABEL
from kvpilot.planning.gpus import GPU_TYPES, gpu_type, gpu_type_for_product

# kvpilot's own reservation taint keeps other pods off a node being freed; the node stays
# in the pool (the plan decides who runs there).
DEFAULT_TOLERATED_TAINTS = (GPU_RESOURCE, RESERVED_TAINT)
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class NodeGPUs:
    """One node's GPUs; `excluded` says why the planner will not use it (empty if usable)."""

    name: str
    gpu_type: str | None
    product: str
    memory_mib: int | None
    allocatable: int
    requested: int
    excluded: str = ""

    @property
    def usable(self) -> bool:
        return not self.excluded and self.gpu_type is not None and self.allocatable > 0

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.requested) if self.usable else 0


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[NodeGPUs, ...]

    @property
    def usable_nodes(self) -> tuple[NodeGPUs, ...]:
        return tuple(n for n in self.nodes if n.usable)

    def free_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.usable_nodes:
            assert n.gpu_type is not None
            out[n.gpu_type] = out.get(n.gpu_type, 0) + n.free
        return out

    def total_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.usable_nodes:
            assert n.gpu_type is not None
            out[n.gpu_type] = out.get(n.gpu_type, 0) + n.allocatable
        return out

    def max_gpus_per_node(self) -> dict[str, int]:
        """GPU type -> GPUs of its largest usable node: the TP ceiling on that type."""
        out: dict[str, int] = {}
        for n in self.usable_nodes:
            assert n.gpu_type is not None
            out[n.gpu_type] = max(out.get(n.gpu_type, 0), n.allocatable)
        return out


def build_inventory(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]] = (),
    *,
    tolerated_taints: Iterable[str] = DEFAULT_TOLERATED_TAINTS,
    exclude_pod: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Inventory:
    """Inventory of GPU nodes; nodes without `nvidia.com/gpu` are left out entirely."""
    tolerated = set(tolerated_taints)
    requested: dict[str, int] = {}
    for pod in pods:
        node_name = _get(pod, "spec", "nodeName")
        if not node_name or _terminated(pod) or (exclude_pod is not None and exclude_pod(pod)):
            continue
        requested[node_name] = requested.get(node_name, 0) + pod_gpu_request(pod)
    out: list[NodeGPUs] = []
    for node in nodes:
        allocatable = _quantity(_get(node, "status", "allocatable", GPU_RESOURCE))
        if allocatable <= 0:
            continue
        name = str(_get(node, "metadata", "name") or "")
        labels: Mapping[str, str] = _get(node, "metadata", "labels") or {}
        product = str(labels.get(PRODUCT_LABEL, ""))
        memory = _int_or_none(labels.get(MEMORY_LABEL))
        found = gpu_type_for_product(product, memory)
        out.append(
            NodeGPUs(
                name=name,
                gpu_type=found.name if found else None,
                product=product,
                memory_mib=memory,
                allocatable=allocatable,
                requested=requested.get(name, 0),
                excluded=_exclusion(node, tolerated, product, found is not None),
            )
        )
    return Inventory(tuple(sorted(out, key=lambda n: n.name)))


def is_kvpilot_pod(pod: Mapping[str, Any]) -> bool:
    """Pods kvpilot renders; pass as `exclude_pod` to plan over kvpilot's whole share."""
    labels: Mapping[str, str] = _get(pod, "metadata", "labels") or {}
    return labels.get(MANAGED_BY_LABEL) == "kvpilot"


def pod_gpu_request(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds: max(sum over containers, largest init container), as the scheduler counts.

    Extended resources must have requests equal to limits, and a limit alone implies the
    request, so either is read.
    """

    def gpus(container: Mapping[str, Any]) -> int:
        res: Mapping[str, Any] = container.get("resources") or {}
        value = (res.get("requests") or {}).get(GPU_RESOURCE)
        if value is None:
            value = (res.get("limits") or {}).get(GPU_RESOURCE)
        return _quantity(value)

    spec: Mapping[str, Any] = pod.get("spec") or {}
    main = sum(gpus(c) for c in spec.get("containers") or [])
    init = max((gpus(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


class InventoryFileError(ValueError):
    """An inventory file with bad values; `problems` has one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


def nodes_from_inventory_file(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Node dicts from an inventory file (the format of e2e/clusters/*.yaml).

    `nodes: [{name, count, gpuType | gpuProduct, gpuMemoryMiB, gpus, ...}]`; a pool with
    `count` becomes nodes `<name>-0 .. <name>-<count-1>`, as the dev cluster names them.
    `usedGpus` (optional) marks GPUs already taken by other workloads on each node.
    Every bad value is reported (`InventoryFileError`), none is dropped or guessed.
    """
    pools = data.get("nodes")
    if not isinstance(pools, list):
        raise InventoryFileError(["an inventory needs a 'nodes' list"])
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for i, pool in enumerate(pools):
        where = f"nodes[{i}]"
        if not isinstance(pool, Mapping):
            problems.append(f"{where}: expected a mapping, got {pool!r}")
            continue
        if not pool.get("name"):
            problems.append(f"{where}.name: required")
        else:
            where = f"nodes[{i}] ({pool['name']})"
        gpus = _whole(pool, "gpus", where, problems, required=True, least=1)
        count = _whole(pool, "count", where, problems, required=False, least=1)
        used = _whole(pool, "usedGpus", where, problems, required=False, least=0)
        _whole(pool, "gpuMemoryMiB", where, problems, required=False, least=1)
        if gpus is not None and used is not None and used > gpus:
            problems.append(f"{where}.usedGpus: {used} is more than the node's {gpus} GPUs")
        try:
            product, memory = _pool_product(pool)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        if gpus is None or not pool.get("name"):
            continue
        names = (
            [f"{pool['name']}-{k}" for k in range(count)]
            if count is not None
            else [str(pool["name"])]
        )
        for name in names:
            labels = {PRODUCT_LABEL: product}
            if memory is not None:
                labels[MEMORY_LABEL] = str(memory)
            node: dict[str, Any] = {
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": [{"key": GPU_RESOURCE, "effect": "NoSchedule"}]},
                "status": {"allocatable": {GPU_RESOURCE: str(gpus)}},
            }
            if used:
                node["usedGpus"] = used
            out.append(node)
    if problems:
        raise InventoryFileError(problems)
    return out


def _whole(
    pool: Mapping[str, Any],
    key: str,
    where: str,
    problems: list[str],
    *,
    required: bool,
    least: int,
) -> int | None:
    """A whole-number field of an inventory pool, or None (with a problem if it is bad)."""
    if key not in pool:
        if required:
            problems.append(f"{where}.{key}: required")
        return None
    value = pool[key]
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}.{key}: {value!r} is not a whole number")
        return None
    if value < least:
        problems.append(f"{where}.{key}: {value} is below {least}")
        return None
    return value


def pods_for_used_gpus(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stand-in pods for the `usedGpus` of inventory-file nodes."""
    return [
        {
            "metadata": {"name": f"used-{node['metadata']['name']}"},
            "spec": {
                "nodeName": node["metadata"]["name"],
                "containers": [{"resources": {"requests": {GPU_RESOURCE: node["usedGpus"]}}}],
            },
            "status": {"phase": "Running"},
        }
        for node in nodes
        if node.get("usedGpus")
    ]


def _pool_product(pool: Mapping[str, Any]) -> tuple[str, int | None]:
    memory = _int_or_none(pool.get("gpuMemoryMiB"))
    if pool.get("gpuProduct") or pool.get("product"):
        return str(pool.get("gpuProduct") or pool.get("product")), memory
    if pool.get("gpuType"):
        known = gpu_type(str(pool["gpuType"]))
        if known is None:
            names = ", ".join(g.name for g in GPU_TYPES)
            raise ValueError(f"gpuType: unknown GPU type {pool['gpuType']!r} (known: {names})")
        return known.products[0], memory if memory is not None else known.memory_mib
    raise ValueError("needs gpuType or gpuProduct")


def _exclusion(node: Mapping[str, Any], tolerated: set[str], product: str, known: bool) -> str:
    if _get(node, "spec", "unschedulable"):
        return "cordoned (spec.unschedulable)"
    for taint in _get(node, "spec", "taints") or []:
        if taint.get("effect") in _BLOCKING_EFFECTS and taint.get("key") not in tolerated:
            return f"taint {taint.get('key')}:{taint.get('effect')} is not tolerated"
    for cond in _get(node, "status", "conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return f"not Ready ({cond.get('reason') or cond.get('status')})"
    if not known:
        return (
            f"GPU product {product!r} is not a known whole-GPU type"
            if product
            else (f"no {PRODUCT_LABEL} label")
        )
    return ""


def _terminated(pod: Mapping[str, Any]) -> bool:
    return _get(pod, "status", "phase") in ("Succeeded", "Failed")


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _quantity(value: Any) -> int:
    """Integer quantity of an extended resource (`"8"`, `8`); GPUs are never fractional."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        return 0


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(str(value))
    except ValueError:
        return None
