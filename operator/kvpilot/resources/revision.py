"""Revision hash: identifies what the pods run, so only pod-relevant edits roll them.

The hash covers the model, the runtime and the placement decision (tensor-parallel
size, GPUs per replica, GPU product). Scaling, priority and replicas are left out:
changing them must never restart a replica. Fields equal to their defaults are left
out too, so adding a defaulted field to the API does not change existing revisions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kvpilot.api.spec import InferenceServiceSpec

REVISION_LENGTH = 10


def pod_relevant(
    spec: InferenceServiceSpec, *, tensor_parallel: int, gpus_per_replica: int, gpu_product: str
) -> dict[str, Any]:
    """The inputs of the revision hash, as a plain dict."""
    return {
        "model": spec.model.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "runtime": spec.runtime.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "tensorParallel": tensor_parallel,
        "gpusPerReplica": gpus_per_replica,
        "gpuProduct": gpu_product,
    }


def compute_revision(
    spec: InferenceServiceSpec, *, tensor_parallel: int, gpus_per_replica: int, gpu_product: str
) -> str:
    """Short stable hash (hex, label-safe) of the pod-relevant spec."""
    data = pod_relevant(
        spec,
        tensor_parallel=tensor_parallel,
        gpus_per_replica=gpus_per_replica,
        gpu_product=gpu_product,
    )
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
