"""The revision hash changes exactly when what the pods run changes."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.api import InferenceService, parse_spec
from kvpilot.resources import build_deployment, compute_revision, render_plan

BASE: dict[str, Any] = {
    "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
    "runtime": {"extraArgs": ["--enforce-eager"]},
    "parallelism": {"tensor": 1},
    "placement": {"gpuTypes": ["L4-24GB"], "priority": 10},
    "scaling": {"minReplicas": 1, "maxReplicas": 4},
}
DECISION = {"tensor_parallel": 1, "gpus_per_replica": 1, "gpu_product": "NVIDIA-L4"}


def revision(spec: dict[str, Any], **decision: Any) -> str:
    return compute_revision(parse_spec(spec), **{**DECISION, **decision})


def edit(section: str, **fields: Any) -> dict[str, Any]:
    return {**BASE, section: {**BASE.get(section, {}), **fields}}


def test_revision_is_stable_across_runs_and_releases() -> None:
    # Pinned: a change here rolls every running replica on operator upgrade.
    assert revision(BASE) == revision(BASE)
    assert len(revision(BASE)) == 10
    assert revision(BASE) == "b86f9b62f5"


def test_defaults_spelled_out_do_not_change_the_revision() -> None:
    explicit = edit("runtime", port=8000, gpuMemoryUtilization=0.9, shmSize="8Gi")
    assert revision(explicit) == revision(BASE)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({**BASE, "replicas": 3}, id="replicas"),
        pytest.param(edit("scaling", maxReplicas=8), id="scaling-bounds"),
        pytest.param(edit("scaling", targets={"queueDepthPerReplica": 8}), id="scaling-targets"),
        pytest.param(edit("scaling", scaleDown={"stabilizationWindowSeconds": 60}), id="damping"),
        pytest.param(edit("placement", priority=500, preemptible=True), id="priority"),
        pytest.param(edit("placement", gpuTypes=["L4-24GB", "H100-80GB"]), id="gpu-preference"),
        pytest.param(edit("parallelism", tensor="auto"), id="tensor-auto-same-decision"),
    ],
)
def test_pod_irrelevant_edits_keep_the_revision(spec: dict[str, Any]) -> None:
    assert revision(spec) == revision(BASE)


@pytest.mark.parametrize(
    ("spec", "decision"),
    [
        pytest.param(edit("model", source="hf://meta-llama/Llama-3.1-8B"), {}, id="model"),
        pytest.param(edit("model", revision="refs/pr/1"), {}, id="hf-revision"),
        pytest.param(edit("model", quantization="fp8"), {}, id="quantization"),
        pytest.param(edit("model", maxModelLen=4096), {}, id="max-model-len"),
        pytest.param(edit("runtime", image="vllm/vllm-openai:v0.12.0"), {}, id="image"),
        pytest.param(edit("runtime", extraArgs=[]), {}, id="extra-args"),
        pytest.param(edit("runtime", env=[{"name": "A", "value": "1"}]), {}, id="env"),
        pytest.param(BASE, {"tensor_parallel": 2, "gpus_per_replica": 2}, id="tensor-parallel"),
        pytest.param(BASE, {"gpu_product": "NVIDIA-H100-80GB-HBM3"}, id="gpu-product"),
    ],
)
def test_pod_relevant_edits_change_the_revision(
    spec: dict[str, Any], decision: dict[str, Any]
) -> None:
    assert revision(spec, **decision) != revision(BASE)


def test_scaling_edit_leaves_the_pod_template_alone() -> None:
    def template(spec: dict[str, Any]) -> Any:
        service = InferenceService(name="llama", namespace="ns", uid="u", spec=parse_spec(spec))
        plan = render_plan(service, tensor_parallel=1, gpu_product="NVIDIA-L4")
        return build_deployment(service, plan)["spec"]["template"]

    assert template(edit("scaling", minReplicas=2, maxReplicas=8)) == template(BASE)
    assert template(edit("model", maxModelLen=4096)) != template(BASE)
