"""The operator's one view of the cluster, fed by watches (kopf event handlers).

Stores trimmed copies of what planning and reconciling read: GPU nodes, pods that
hold GPUs, InferenceServices, and the Deployments, Services and PodDisruptionBudgets
kvpilot renders. Reads take a lock and return copies of the references, so worker
threads never see a dict change under them. Writers also tell whether the change
matters to the pool plan, so status heartbeats do not trigger re-plans.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvpilot.api.names import GPU_RESOURCE
from kvpilot.planning.inventory import pod_gpu_request
from kvpilot.resources.labels import INFERENCE_SERVICE

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

#: The kinds the view holds.
KINDS = ("Node", "Pod", "InferenceService", "Deployment", "Service", "PodDisruptionBudget")
#: Kinds whose changes can change the pool plan.
POOL_KINDS = frozenset({"Node", "Pod", "InferenceService"})


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields (the largest part, never read)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def holds_gpus(pod: Mapping[str, Any]) -> bool:
    return pod_gpu_request(pod) > 0


def is_gpu_node(node: Mapping[str, Any]) -> bool:
    alloc = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)
    cap = ((node.get("status") or {}).get("capacity") or {}).get(GPU_RESOURCE)
    return alloc not in (None, "0", 0) or cap not in (None, "0", 0)


def pool_fingerprint(kind: str, body: Mapping[str, Any] | None) -> str:
    """What of an object the pool plan reads; equal fingerprints need no re-plan."""
    if body is None:
        return ""
    meta = body.get("metadata") or {}
    if kind == "InferenceService":
        spec = body.get("spec")
        return json.dumps(
            [meta.get("generation"), spec, bool(meta.get("deletionTimestamp"))], sort_keys=True
        )
    if kind == "Pod":
        spec = body.get("spec") or {}
        return json.dumps(
            [
                spec.get("nodeName"),
                (body.get("status") or {}).get("phase"),
                bool(meta.get("deletionTimestamp")),
                meta.get("labels"),
                pod_gpu_request(body),
            ],
            sort_keys=True,
        )
    if kind == "Node":
        st = body.get("status") or {}
        ready = [c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"]
        return json.dumps(
            [
                meta.get("labels"),
                (body.get("spec") or {}).get("unschedulable"),
                (body.get("spec") or {}).get("taints"),
                (st.get("allocatable") or {}).get(GPU_RESOURCE),
                ready,
            ],
            sort_keys=True,
        )
    return ""


@dataclass(frozen=True)
class Change:
    kind: str
    key: Key
    pool_changed: bool
    owner: Key | None  # the InferenceService a child or pod belongs to


class ClusterView:
    """Thread-safe store of the watched objects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in KINDS}

    def upsert(self, kind: str, body: Mapping[str, Any]) -> Change:
        key = key_of(body)
        new = trim(body)
        with self._lock:
            old = self._objects[kind].get(key)
            if old is not None and _newer(old, new):
                return Change(kind, key, False, None)  # our own write is already newer
            self._objects[kind][key] = new
        return Change(kind, key, self._pool_changed(kind, old, new), _owner(kind, new))

    def delete(self, kind: str, body: Mapping[str, Any]) -> Change:
        key = key_of(body)
        with self._lock:
            old = self._objects[kind].pop(key, None)
        return Change(kind, key, kind in POOL_KINDS and old is not None, _owner(kind, body))

    def note_written(self, kind: str, body: Mapping[str, Any]) -> None:
        """Our own write's answer, so reads do not go back to an older copy than we made.

        Kept only when it is newer than what the watch has delivered (resourceVersions
        compare as integers on every API server in use; if not, the watch copy wins).
        """
        key = key_of(body)
        with self._lock:
            old = self._objects[kind].get(key)
            if old is None or _newer(body, old):
                self._objects[kind][key] = trim(body)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects[kind].get((namespace, name))

    def items(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects[kind].values())

    def keys(self, kind: str) -> list[Key]:
        with self._lock:
            return list(self._objects[kind])

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self._objects[kind])

    @staticmethod
    def _pool_changed(kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
        if kind not in POOL_KINDS:
            return False
        return pool_fingerprint(kind, old) != pool_fingerprint(kind, new)


def _owner(kind: str, body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    if kind == "InferenceService":
        return key_of(body)
    labels = meta.get("labels") or {}
    name = labels.get(INFERENCE_SERVICE)
    if name and kind != "Node":
        return (str(meta.get("namespace") or ""), str(name))
    return None


def _newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    try:
        return int(a["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return False
