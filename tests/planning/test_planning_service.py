"""service_spec: the planner's view comes from the typed API model, defaults included."""

from __future__ import annotations

from typing import Any

import pytest

from kvpilot.api import InvalidObjectError, parse_inference_service
from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.service import ServiceSpec, service_from_manifest, service_spec

SOURCE = "hf://meta-llama/Llama-3.1-8B-Instruct"


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "chat", "namespace": "serving", "uid": "u1"}, "spec": spec}


CASES: list[tuple[str, dict[str, Any], ServiceSpec]] = [
    (
        "API defaults",
        {"model": {"source": SOURCE}},
        ServiceSpec(name="serving/chat", source=SOURCE, serving=ServingConfig()),
    ),
    (
        "every field the planner reads",
        {
            "replicas": 3,
            "model": {
                "source": SOURCE,
                "quantization": "fp8",
                "kvCacheDtype": "fp8",
                "maxModelLen": 4096,
                "shape": {"vocabSize": 128000},
            },
            "runtime": {"gpuMemoryUtilization": 0.85, "maxNumSeqs": 64},
            "parallelism": {"tensor": 2},
            "placement": {
                "gpuTypes": ["L4", "H100-80GB"],
                "priority": 50,
                "preemptible": True,
                "targetConcurrency": 8,
            },
            "scaling": {"minReplicas": 1, "maxReplicas": 4},
        },
        ServiceSpec(
            name="serving/chat",
            source=SOURCE,
            serving=ServingConfig(
                quantization="fp8",
                kv_cache_dtype="fp8",
                max_model_len=4096,
                gpu_memory_utilization=0.85,
                max_num_seqs=64,
                target_concurrency=8,
            ),
            shape={"vocabSize": 128000},
            tensor=2,
            gpu_types=("L4", "H100-80GB"),
            priority=50,
            preemptible=True,
            min_replicas=1,
            max_replicas=4,
            desired_replicas=3,
        ),
    ),
    (
        "a count set by hand outside fixed bounds widens them",
        {
            "replicas": 0,
            "model": {"source": SOURCE},
            "scaling": {"minReplicas": 2, "maxReplicas": 2},
        },
        ServiceSpec(
            name="serving/chat",
            source=SOURCE,
            min_replicas=0,
            max_replicas=2,
            desired_replicas=0,
        ),
    ),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_service_spec(spec: dict[str, Any], expected: ServiceSpec) -> None:
    assert service_spec(parse_inference_service(body(spec))) == expected
    assert service_from_manifest(body(spec)) == expected


def test_manifest_is_judged_by_the_api_parser() -> None:
    with pytest.raises(InvalidObjectError) as err:
        service_from_manifest(body({"model": {"source": SOURCE, "maxModelLen": "4096"}}))
    assert err.value.paths == ("spec.model.maxModelLen",)
