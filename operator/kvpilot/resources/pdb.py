"""The PodDisruptionBudget: voluntary evictions (node drains) take one replica at a time."""

from __future__ import annotations

from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.resources.labels import common_labels, selector_labels
from kvpilot.resources.meta import object_meta


def build_pdb(isvc: InferenceService) -> dict[str, Any]:
    """policy/v1 PodDisruptionBudget allowing one unavailable replica."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(isvc, common_labels(isvc.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(isvc.name)},
        },
    }
