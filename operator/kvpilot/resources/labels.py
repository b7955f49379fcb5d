"""Labels and annotations kvpilot puts on what it renders (the team-wide contract)."""

from __future__ import annotations

from kvpilot.api.names import (
    APP_NAME,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    INFERENCE_SERVICE,
    MANAGED_BY,
    MANAGER,
    REVISION,
)

__all__ = [
    "APP_NAME",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "INFERENCE_SERVICE",
    "MANAGED_BY",
    "MANAGER",
    "REVISION",
    "common_labels",
    "pod_labels",
    "selector_labels",
    "selector_string",
]


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
