"""Pure builders of the objects kvpilot owns for an InferenceService (plain dicts)."""

from __future__ import annotations

from typing import Any

from kvpilot.api.parse import InferenceService
from kvpilot.resources.deployment import build_deployment, deployment_name, vllm_args
from kvpilot.resources.labels import pod_labels, selector_labels, selector_string
from kvpilot.resources.pdb import build_pdb
from kvpilot.resources.plan import RenderPlan, render_plan
from kvpilot.resources.revision import compute_revision
from kvpilot.resources.service import build_service


def desired_objects(
    isvc: InferenceService,
    plan: RenderPlan,
    *,
    deployment: str | None = None,
    port: int | None = None,
    annotations: dict[str, str] | None = None,
    quality_gate: bool = False,
) -> list[dict[str, Any]]:
    """Everything to apply for `isvc`, in apply order (Service and PDB before pods):
    the Deployment of `plan.revision` named `deployment` (default `<service>-<revision>`),
    the Service on `port` (default the spec's); `quality_gate`: see build_deployment."""
    return [
        build_service(isvc, port),
        build_pdb(isvc),
        build_deployment(
            isvc, plan, name=deployment, annotations=annotations, quality_gate=quality_gate
        ),
    ]


__all__ = [
    "RenderPlan",
    "build_deployment",
    "build_pdb",
    "build_service",
    "compute_revision",
    "deployment_name",
    "desired_objects",
    "pod_labels",
    "render_plan",
    "selector_labels",
    "selector_string",
    "vllm_args",
]
