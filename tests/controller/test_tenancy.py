"""The tenant policy caps what one namespace can claim of the shared pool."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.api.parse import parse_inference_service
from kvpilot.reconcile import plan_pool
from kvpilot.reconcile.tenancy import TenantPolicy, TenantPolicyError, load_tenant_policy

NODES = [
    {
        "metadata": {
            "name": f"a{i}",
            "labels": {
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.memory": "81920",
            },
        },
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    for i in range(2)
]


def isvc(ns: str, name: str, priority: int, replicas: int) -> Any:
    return parse_inference_service(
        {
            "apiVersion": "kvpilot.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": ns, "uid": f"{ns}-{name}"},
            "spec": {
                "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
                "parallelism": {"tensor": 1},
                "placement": {"priority": priority},
                "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
            },
        }
    )


def placed(policy: TenantPolicy, services: list[Any]) -> dict[str, int]:
    pool = plan_pool(services, NODES, [], tenants=policy)
    return {s.name: s.replicas_placed for s in pool.plan.services}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # No policy: the author's priority decides; "greedy" takes what it asks for.
        (TenantPolicy(), {"team-a/web": 4, "team-b/greedy": 12}),
        # Capped at the same level as team-a: equal priority, nobody is starved.
        (
            load_tenant_policy("default: {maxPriority: 10}"),
            {"team-a/web": 8, "team-b/greedy": 8},
        ),
        # A GPU quota on team-b bounds it whatever its priority.
        (
            load_tenant_policy("namespaces: {team-b: {maxGPUs: 6}}"),
            {"team-a/web": 8, "team-b/greedy": 6},
        ),
    ],
)
def test_tenant_policy_bounds_priority_and_gpus(
    policy: TenantPolicy, expected: dict[str, int]
) -> None:
    services = [isvc("team-a", "web", 10, 8), isvc("team-b", "greedy", 1_000_000, 12)]
    assert placed(policy, services) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("default: {maxPriority: -1}", "default.maxPriority"),
        ("namespaces: {a: {maxGPU: 3}}", "namespaces.a.maxGPU"),
        ("[1, 2]", "expected a mapping"),
        ("default: {maxPriority: ten}", "default.maxPriority"),
    ],
)
def test_bad_policy_files_name_the_key(text: str, error: str) -> None:
    with pytest.raises(TenantPolicyError, match=error):
        load_tenant_policy(text, "tenants.yaml")
