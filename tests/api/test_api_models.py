"""The API models: defaults, parsing at the edge, error reports, serialisation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvpilot.api import (
    AutoscalerStatus,
    Condition,
    GPUMemory,
    InferenceServiceSpec,
    InferenceServiceStatus,
    InvalidObjectError,
    PlacementStatus,
    dump,
    parse_inference_service,
    parse_spec,
    parse_status,
)
from kvpilot.api.security import EXTRA_ARGS_DERIVED

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
MINIMAL = {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}}

# What the API server stores for MINIMAL once the CRD's defaults apply, plus the empty
# lists the models carry for unset list fields.
MINIMAL_DEFAULTED: dict[str, Any] = {
    "model": {
        "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
        "quantization": "none",
        "dtype": "auto",
        "kvCacheDtype": "auto",
        "maxModelLen": 8192,
    },
    "runtime": {
        "image": "vllm/vllm-openai:v0.11.0",
        "port": 8000,
        "extraArgs": [],
        "env": [],
        "gpuMemoryUtilization": 0.9,
        "shmSize": "8Gi",
        "modelCache": {},
        "startupTimeoutSeconds": 1800,
        "trustRemoteCode": False,
    },
    "parallelism": {"tensor": "auto"},
    "placement": {"gpuTypes": [], "priority": 0, "preemptible": False},
    # Scaling knobs stay unset: the operator-wide policy fills them in (see
    # tests/controller/test_policy_mapping.py).
    "scaling": {
        "minReplicas": 1,
        "maxReplicas": 1,
        "targets": {},
        "scaleUp": {},
        "scaleDown": {},
        "scaleToZero": {},
    },
    "rollout": {
        "maxUnavailable": 25,
        "steps": [50],
        "paused": False,
        "abort": False,
        "analysis": {
            "enabled": False,
            "intervalSeconds": 30,
            "windowSeconds": 60,
            "minRequests": 20,
            "maxErrorRateRatio": 2.0,
            "errorRateFloor": 0.01,
            "maxTtftP95Ratio": 1.5,
            "maxItlRatio": 1.5,
            "failureLimit": 2,
            "inconclusivePolicy": "Hold",
            "inconclusiveTimeoutSeconds": 600,
            "readyTimeoutSeconds": 600,
        },
        "qualityGate": {
            "enabled": False,
            "prompts": [],
            "maxTokens": 16,
            "minTokenAgreement": 0.9,
            "maxLogprobDivergence": 0.5,
        },
    },
}


def test_minimal_spec_gets_every_default() -> None:
    assert dump(parse_spec(MINIMAL)) == MINIMAL_DEFAULTED


def test_dump_round_trips() -> None:
    spec = parse_spec(MINIMAL_DEFAULTED)
    assert parse_spec(dump(spec)) == spec


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_parse(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    spec = parse_spec(manifest["spec"])
    assert spec.model.shape is not None, "examples carry real model shapes"
    assert parse_spec(dump(spec)) == spec


def test_example_values() -> None:
    by_name = {p.stem: parse_spec(yaml.safe_load(p.read_text())["spec"]) for p in EXAMPLES}
    assert {n: (s.parallelism.tensor, s.placement.gpu_types) for n, s in by_name.items()} == {
        "llama-3.1-8b": (1, ("L4-24GB", "H100-80GB")),
        "llama-3.1-70b-tp4": (4, ("H100-80GB",)),
        "qwen2.5-7b-awq": (1, ("L4-24GB", "A100-80GB")),
    }


@pytest.mark.parametrize(
    ("spec", "desired", "autoscaling"),
    [
        (MINIMAL, 1, False),
        ({**MINIMAL, "replicas": 3, "scaling": {"minReplicas": 3, "maxReplicas": 3}}, 3, False),
        ({**MINIMAL, "replicas": 0, "scaling": {"minReplicas": 3, "maxReplicas": 3}}, 0, False),
        ({**MINIMAL, "scaling": {"minReplicas": 2, "maxReplicas": 5}}, 2, True),
        ({**MINIMAL, "replicas": 4, "scaling": {"minReplicas": 2, "maxReplicas": 5}}, 4, True),
        ({**MINIMAL, "replicas": 0, "scaling": {"minReplicas": 0, "maxReplicas": 0 + 1}}, 0, True),
    ],
)
def test_desired_replicas(spec: dict[str, Any], desired: int, autoscaling: bool) -> None:
    parsed = parse_spec(spec)
    assert (parsed.desired_replicas, parsed.scaling.autoscaling) == (desired, autoscaling)


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ({"cpu": 4, "memory": "32Gi", "shmSize": "16Gi"}, ("4", "32Gi", "16Gi")),
        ({"cpu": "500m", "shmSize": 1073741824}, ("500m", None, "1073741824")),
    ],
)
def test_quantities_are_kept_as_text(
    runtime: dict[str, Any], expected: tuple[str | None, ...]
) -> None:
    rt = parse_spec({**MINIMAL, "runtime": runtime}).runtime
    assert (rt.cpu, rt.memory, rt.shm_size) == expected


def test_models_build_in_code_by_field_name() -> None:
    spec = InferenceServiceSpec.model_validate(
        {"model": {"source": "pvc://models/llama", "max_model_len": 4096}, "replicas": 1}
    )
    assert (spec.model.max_model_len, spec.replicas) == (4096, 1)


def test_error_lists_every_problem_with_its_path() -> None:
    bad = {
        "model": {"source": "http://example.com/model", "quantization": "awq"},
        "parallelism": {"tensor": 3},
        "scaling": {"minReplicas": 3, "maxReplicas": 2},
        "runtime": {"env": [{"name": "A"}, {"name": "A"}], "extraArgs": ["--port=1"]},
    }
    with pytest.raises(InvalidObjectError) as err:
        parse_spec(bad)
    assert err.value.problems == (
        (
            "spec.model.source",
            "source must be hf://ORG/NAME, pvc://CLAIM[/PATH] or s3://BUCKET[/PATH]",
        ),
        (
            "spec.runtime.extraArgs",
            f"{EXTRA_ARGS_DERIVED.message} (item '--port=1')",
        ),
        ("spec.runtime.env", "env must not repeat a name"),
        ("spec.parallelism.tensor", "Input should be 'auto', 1, 2, 4 or 8"),
        ("spec.scaling.minReplicas", "minReplicas must not exceed maxReplicas"),
    )
    assert str(err.value).startswith("invalid InferenceService spec: spec.model.source: ")


def test_cross_field_rule_reports_the_field_it_points_at() -> None:
    bad = {
        "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct", "shape": {"attentionHeads": 28}},
        "parallelism": {"tensor": 8},
    }
    with pytest.raises(InvalidObjectError) as err:
        parse_spec(bad)
    assert err.value.problems == (
        ("spec.parallelism.tensor", "parallelism.tensor must divide model.shape.attentionHeads"),
    )


def test_parse_is_as_strict_as_the_api_server() -> None:
    for bad in (
        {**MINIMAL, "parallelism": {"tensor": "4"}},
        {**MINIMAL, "placement": {"preemptible": "yes"}},
        {**MINIMAL, "replicas": "2"},
    ):
        with pytest.raises(InvalidObjectError):
            parse_spec(bad)


def test_parse_inference_service() -> None:
    body = {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "llama", "namespace": "serving", "uid": "u-1", "generation": 3},
        "spec": MINIMAL,
        "status": {"observedGeneration": 2, "readyReplicas": 1},
    }
    isvc = parse_inference_service(body)
    assert (isvc.name, isvc.namespace, isvc.uid, isvc.generation) == ("llama", "serving", "u-1", 3)
    assert isvc.served_name == "llama"
    assert isvc.status == InferenceServiceStatus(observed_generation=2, ready_replicas=1)
    named = parse_inference_service(
        {**body, "spec": {"model": {**MINIMAL["model"], "servedName": "llama-8b"}}}
    )
    assert named.served_name == "llama-8b"


def test_parse_accepts_mapping_views_and_tolerates_a_foreign_status() -> None:
    class View(Mapping[str, Any]):
        """Stands for kopf's read-only body views (Mappings, not dicts)."""

        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            value = self._data[key]
            return View(value) if isinstance(value, dict) else value

        def __iter__(self) -> Iterator[str]:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    body = {
        "metadata": {"name": "llama", "namespace": "ns", "uid": "u"},
        "spec": {**MINIMAL, "runtime": {"extraArgs": ("--enforce-eager",)}},
        "status": {"conditions": [{"type": "Ready"}]},
    }
    isvc = parse_inference_service(View(body))
    assert isvc.spec.runtime.extra_args == ("--enforce-eager",)
    assert isvc.status is None


def test_parse_inference_service_needs_identity() -> None:
    with pytest.raises(InvalidObjectError) as err:
        parse_inference_service({"metadata": {"name": "x"}, "spec": MINIMAL})
    assert err.value.paths == ("metadata.namespace", "metadata.uid")


def test_status_round_trip() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = InferenceServiceStatus(
        observed_generation=4,
        conditions=(
            Condition(
                type="Ready",
                status="True",
                reason="ReplicasReady",
                message="2/2 replicas ready",
                last_transition_time=when,
                observed_generation=4,
            ),
        ),
        replicas=2,
        ready_replicas=2,
        desired_replicas=2,
        selector="kvpilot.io/inference-service=llama",
        placement=PlacementStatus(
            gpu_type="H100-80GB",
            gpu_product="NVIDIA-H100-80GB-HBM3",
            tensor_parallel=4,
            gpus_per_replica=4,
            replicas_placed=2,
            replicas_wanted=2,
            memory=GPUMemory(
                weights_gib=32.9,
                kv_cache_gib=30.0,
                overhead_gib=4.1,
                total_gib=67.0,
                capacity_gib=68.4,
            ),
        ),
        revision="0123456789",
        autoscaler=AutoscalerStatus(
            last_decision_time=when,
            reason="queue depth 9.0 per replica above target 4.0",
            desired_replicas=3,
            observed={"queueDepth": 18.0, "kvCacheUtilization": 0.71},
            state={"window": [[1735787045, 18.0]], "panicUntil": None},
        ),
    )
    wire = dump(status)
    assert wire["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert wire["placement"]["memory"] == {
        "weightsGiB": 32.9,
        "kvCacheGiB": 30.0,
        "overheadGiB": 4.1,
        "totalGiB": 67.0,
        "capacityGiB": 68.4,
    }
    assert parse_status(wire) == status
    assert status.condition("Ready") is not None
    assert status.condition("Degraded") is None
    assert parse_status(None) == InferenceServiceStatus()
