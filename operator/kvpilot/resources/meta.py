"""Object metadata shared by the builders: names, labels and the owner reference."""

from __future__ import annotations

from typing import Any

from kvpilot.api.names import API_VERSION, KIND
from kvpilot.api.parse import InferenceService


def owner_reference(isvc: InferenceService) -> dict[str, Any]:
    """Controller owner reference: garbage collection deletes what kvpilot rendered."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": isvc.name,
        "uid": isvc.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(isvc: InferenceService, labels: dict[str, str]) -> dict[str, Any]:
    """metadata of an owned object named after the InferenceService."""
    return {
        "name": isvc.name,
        "namespace": isvc.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(isvc)],
    }
