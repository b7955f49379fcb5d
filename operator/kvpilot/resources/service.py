"""The Service in front of an InferenceService's replicas (OpenAI API and /metrics)."""

from __future__ import annotations

from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.resources.deployment import PORT_NAME
from kvpilot.resources.labels import common_labels, selector_labels
from kvpilot.resources.meta import object_meta


def build_service(isvc: InferenceService, port: int | None = None) -> dict[str, Any]:
    """ClusterIP Service selecting every revision's pods.

    The target port is the container port's name, so each pod is reached on the port it
    listens on; `port` (the stable revision's, until a canary is promoted) is where
    clients connect, so a port change does not move them before the new pods serve.
    """
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
                    "port": isvc.spec.runtime.port if port is None else port,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
