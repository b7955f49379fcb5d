"""Labels and annotations kvpilot puts on what it renders (the team-wide contract)."""

from __future__ import annotations

from typing import Final

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
APP_NAME: Final = "app.kubernetes.io/name"
INFERENCE_SERVICE: Final = "kvpilot.io/inference-service"
REVISION: Final = "kvpilot.io/revision"
MANAGER: Final = "kvpilot"

GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"


def selector_labels(name: str) -> dict[str, str]:
    """Selects every pod of one InferenceService, whatever its revision (immutable in
    a Deployment, so it must not carry the revision)."""
    return {INFERENCE_SERVICE: name}


def common_labels(name: str) -> dict[str, str]:
    """Labels of every object kvpilot renders for an InferenceService."""
    return {MANAGED_BY: MANAGER, APP_NAME: name, INFERENCE_SERVICE: name}


def pod_labels(name: str, revision: str) -> dict[str, str]:
    """Pod labels: the common ones plus the revision the pod runs."""
    return {**common_labels(name), REVISION: revision}


def selector_string(name: str) -> str:
    """`selector_labels` as a label-selector string (status.selector, for /scale)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))
