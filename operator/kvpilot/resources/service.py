"""The Service in front of an InferenceService's replicas (OpenAI API and /metrics)."""

from __future__ import annotations

from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.resources.deployment import PORT_NAME
from kvpilot.resources.labels import common_labels, selector_labels
from kvpilot.resources.meta import object_meta


def build_service(isvc: InferenceService) -> dict[str, Any]:
    """ClusterIP Service on the runtime port, selecting every revision's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(isvc, common_labels(isvc.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(isvc.name),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": isvc.spec.runtime.port,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
