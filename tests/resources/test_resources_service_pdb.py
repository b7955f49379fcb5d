"""Service and PodDisruptionBudget builders, whole objects."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.api import InferenceService, parse_spec
from kvpilot.resources import (
    build_pdb,
    build_service,
    desired_objects,
    render_plan,
    selector_string,
)


def isvc(name: str, port: int | None = None) -> InferenceService:
    runtime = {} if port is None else {"port": port}
    spec = {"model": {"source": "hf://org/model"}, "runtime": runtime}
    return InferenceService(name=name, namespace="ns", uid=f"uid-{name}", spec=parse_spec(spec))


def meta(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "ns",
        "labels": {
            "app.kubernetes.io/managed-by": "kvpilot",
            "app.kubernetes.io/name": name,
            "kvpilot.io/inference-service": name,
        },
        "ownerReferences": [
            {
                "apiVersion": "kvpilot.io/v1alpha1",
                "kind": "InferenceService",
                "name": name,
                "uid": f"uid-{name}",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


@pytest.mark.parametrize(("name", "port"), [("llama", None), ("qwen", 8080)])
def test_service(name: str, port: int | None) -> None:
    assert build_service(isvc(name, port)) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name),
        "spec": {
            "type": "ClusterIP",
            "selector": {"kvpilot.io/inference-service": name},
            "ports": [
                {"name": "http", "port": port or 8000, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_pdb(name: str) -> None:
    assert build_pdb(isvc(name)) == {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"kvpilot.io/inference-service": name}},
        },
    }


def test_desired_objects_and_selector() -> None:
    service = isvc("llama")
    plan = render_plan(service, tensor_parallel=1, gpu_product="NVIDIA-L4")
    assert [o["kind"] for o in desired_objects(service, plan)] == [
        "Service",
        "PodDisruptionBudget",
        "Deployment",
    ]
    assert selector_string("llama") == "kvpilot.io/inference-service=llama"
