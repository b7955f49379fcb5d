"""The rollout inside `plan_reconcile`: Deployments per revision, taking over the
Deployment named after the service, the Service port, retiring and rolling back."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from kvpilot.api.parse import parse_inference_service
from kvpilot.planning.memory import ServingConfig
from kvpilot.planning.placement import ServicePlacement
from kvpilot.planning.tp import ModelFits, fit_model
from kvpilot.reconcile import Observation, plan_reconcile
from kvpilot.reconcile.plan import target_revision
from kvpilot.reconcile.rollout import capacity_annotations
from kvpilot.resources import build_deployment, render_plan
from kvpilot.resources.deployment import QUALITY_GATE_CONDITION
from kvpilot.rollout.capacity import replica_capacity

UID = "0b9f3c1e-0000-4000-8000-000000000001"
NOW = "2026-11-30T00:02:00Z"


def body(source: str, quant: str, tensor: int, replicas: int, port: int = 8000) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "x", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {
            "model": {"source": source, "quantization": quant, "maxModelLen": 8192},
            "parallelism": {"tensor": tensor},
            "runtime": {"port": port},
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
            "rollout": {"analysis": {"enabled": False}},
        },
    }


BF16 = body("hf://meta-llama/Llama-3.1-70B-Instruct", "none", 4, 2)
AWQ = body("hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "awq", 1, 8, port=9000)


def placement(spec: dict[str, Any]) -> ServicePlacement:
    s = spec["spec"]
    cfg = ServingConfig(quantization=s["model"]["quantization"], max_model_len=8192)
    fit = fit_model(s["model"]["source"], cfg, tensor=s["parallelism"]["tensor"],
                    gpu_types=["A100-80GB"])  # fmt: skip
    assert isinstance(fit, ModelFits)
    n = s["scaling"]["minReplicas"]
    return ServicePlacement("ns/x", "Placed", "placed", 0, n, n, n, option=fit.options[0])


def deployment(spec: dict[str, Any], *, name: str | None = None, ready: int) -> dict[str, Any]:
    isvc = parse_inference_service(spec)
    place = placement(spec)
    assert place.option is not None
    plan = render_plan(isvc, tensor_parallel=place.option.tensor_parallel,
                       gpu_product="NVIDIA-A100-SXM4-80GB")  # fmt: skip
    cap = capacity_annotations(replica_capacity(place.option.memory))
    dep = build_deployment(isvc, plan, name=name, annotations=cap)
    dep["metadata"]["creationTimestamp"] = "2026-11-30T00:00:00Z"
    dep["status"] = {"replicas": ready, "readyReplicas": ready, "observedGeneration": 1}
    dep["metadata"]["generation"] = 1
    return dep


def pods(dep: dict[str, Any], n: int, *, node: str | None = "a100-0") -> list[dict[str, Any]]:
    labels = dep["spec"]["template"]["metadata"]["labels"]
    gpus = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    return [
        {
            "metadata": {
                "name": f"{dep['metadata']['name']}-{i}",
                "namespace": "ns",
                "labels": labels,
                "creationTimestamp": "2026-11-30T00:00:00Z",
            },
            "spec": {"nodeName": node, "containers": [{"resources": {"limits": gpus}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i in range(n)
    ]


def observe(spec: dict[str, Any], deps: list[dict[str, Any]], pod_list: list[dict[str, Any]],
            previous: dict[str, Any] | None = None, free: int = 8) -> Observation:  # fmt: skip
    return Observation(
        namespace="ns", name="x", generation=1, previous=previous or {}, now=NOW,
        isvc=parse_inference_service(copy.deepcopy(spec)), placement=placement(spec),
        gpu_product="NVIDIA-A100-SXM4-80GB", deployments=tuple(deps), pods=tuple(pod_list),
        free_gpus={"A100-80GB": free},
    )  # fmt: skip


def test_a_deployment_named_after_the_service_is_taken_over_without_a_template_change() -> None:
    legacy = deployment(BF16, name="x", ready=2)
    plan = plan_reconcile(observe(BF16, [legacy], pods(legacy, 2)))
    (dep,) = [o for o in plan.apply if o["kind"] == "Deployment"] or [None]
    if dep is not None:  # only metadata (the capacity estimate) may change
        assert dep["metadata"]["name"] == "x"
        assert dep["spec"]["template"] == legacy["spec"]["template"]
        assert dep["spec"]["selector"] == legacy["spec"]["selector"]
    assert plan.status is not None and plan.status["revisions"]["stable"] == plan.revision


def test_new_revision_gets_its_own_deployment_and_the_service_keeps_the_stable_port() -> None:
    legacy = deployment(BF16, name="x", ready=2)
    plan = plan_reconcile(observe(AWQ, [legacy], pods(legacy, 2)))
    kinds = {o["kind"]: o for o in plan.apply}
    canary = kinds["Deployment"]
    assert canary["metadata"]["name"] == f"x-{plan.revision}"
    assert canary["spec"]["selector"]["matchLabels"]["kvpilot.io/revision"] == plan.revision
    assert canary["spec"]["replicas"] == 4  # first step: half the final capacity, surged
    assert kinds["Service"]["spec"]["ports"][0]["port"] == 8000  # stable's, not 9000
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert plan.scale == ()
    assert plan.status is not None
    revs = plan.status["revisions"]
    assert (revs["canary"], revs["phase"], revs["canaryWeight"]) == (plan.revision, "Surging", 0)
    progressing = next(c for c in plan.status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "Surging"
    assert any(e.reason == "Surging" for e in plan.events)


def test_promotion_retires_the_old_deployment_and_the_port_follows() -> None:
    legacy = deployment(BF16, name="x", ready=0)
    legacy["spec"]["replicas"] = 0
    new = deployment(AWQ, ready=8)
    new["spec"]["replicas"] = 8
    prev = {"revisions": {"stable": "old", "canary": "c", "phase": "Promoting",
                          "baselineCapacity": 4499.0}}  # fmt: skip
    plan = plan_reconcile(observe(AWQ, [legacy, new], pods(new, 8), prev))
    assert plan.delete == ("x",)
    assert plan.status is not None
    assert plan.status["revisions"]["stable"] == plan.revision
    assert "canary" not in plan.status["revisions"]
    service = next(o for o in plan.apply if o["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 9000


def test_rollback_is_recorded_and_not_retried() -> None:
    legacy = deployment(BF16, name="x", ready=1)
    legacy["spec"]["replicas"] = 1
    new = deployment(AWQ, ready=4)
    new["spec"]["replicas"] = 4
    spec = copy.deepcopy(AWQ)
    spec["spec"]["rollout"]["abort"] = True
    prev = {"revisions": {"stable": "x", "canary": "c", "phase": "Waiting",
                          "baselineCapacity": 4499.0}}  # fmt: skip
    plan = plan_reconcile(observe(spec, [legacy, new], pods(legacy, 1) + pods(new, 4), prev))
    assert plan.status is not None
    failed = plan.status["revisions"]["failed"]
    assert (failed["revision"], failed["reason"]) == (plan.revision, "Aborted")
    assert ("x", 2) in plan.scale  # the stable revision restored
    canary = next(o for o in plan.apply if o["kind"] == "Deployment")
    assert canary["spec"]["replicas"] == 0
    assert any(e.type == "Warning" and e.reason == "Aborted" for e in plan.events)


def gated(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out["spec"]["rollout"]["qualityGate"] = {"enabled": True}
    return out


def gates(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dep["spec"]["template"]["spec"].get("readinessGates") or [])


GATE = [{"conditionType": QUALITY_GATE_CONDITION}]


def test_a_quality_gated_canary_gets_the_readiness_gate_and_the_first_revision_none() -> None:
    first = plan_reconcile(observe(gated(BF16), [], []))
    (dep,) = [o for o in first.apply if o["kind"] == "Deployment"]
    assert gates(dep) == []  # nothing to compare with: the first revision serves at once
    legacy = deployment(BF16, name="x", ready=2)
    plan = plan_reconcile(observe(gated(AWQ), [legacy], pods(legacy, 2)))
    canary = next(o for o in plan.apply if o["kind"] == "Deployment")
    assert gates(canary) == GATE
    assert plan.revision == first_revision_of(AWQ)  # rollout settings stay out of the hash
    assert plan.admit == ()


def first_revision_of(spec: dict[str, Any]) -> str | None:
    return plan_reconcile(observe(spec, [], [])).revision


def test_a_live_deployment_keeps_its_template_whatever_the_gate_setting() -> None:
    """Adding or removing the gate on a live Deployment would restart its pods: the stable
    revision when the gate is switched on, the canary at promotion."""
    stable = deployment(BF16, ready=2)
    plan = plan_reconcile(observe(gated(BF16), [stable], pods(stable, 2)))
    assert [o for o in plan.apply if o["kind"] == "Deployment"] == []
    promoted = build_gated(AWQ, 8)
    plan = plan_reconcile(observe(AWQ, [promoted], pods(promoted, 8), {"revisions": {
        "stable": first_revision_of(AWQ)}}))  # fmt: skip
    assert [o for o in plan.apply if o["kind"] == "Deployment"] == []


def build_gated(spec: dict[str, Any], ready: int) -> dict[str, Any]:
    isvc = parse_inference_service(spec)
    place = placement(spec)
    assert place.option is not None
    plan = render_plan(isvc, tensor_parallel=place.option.tensor_parallel,
                       gpu_product="NVIDIA-A100-SXM4-80GB", replicas=ready)  # fmt: skip
    cap = capacity_annotations(replica_capacity(place.option.memory))
    dep = build_deployment(isvc, plan, annotations=cap, quality_gate=True)
    dep["metadata"]["creationTimestamp"] = "2026-11-30T00:01:00Z"
    dep["status"] = {"replicas": ready, "readyReplicas": ready, "observedGeneration": 1}
    dep["metadata"]["generation"] = 1
    return dep


def with_template_spec(pod_list: list[dict[str, Any]], dep: dict[str, Any]) -> None:
    for p in pod_list:
        p["spec"]["readinessGates"] = gates(dep)
        p["status"]["conditions"] = [{"type": "Ready", "status": "False"}]


def test_the_canary_is_admitted_once_its_gate_passed_and_not_before() -> None:
    legacy = deployment(BF16, name="x", ready=2)
    legacy["spec"]["replicas"] = 2
    canary = build_gated(gated(AWQ), 0)
    canary["spec"]["replicas"] = 1
    mine = pods(canary, 1)
    with_template_spec(mine, canary)
    rev = first_revision_of(AWQ)
    prev = {"revisions": {"stable": "x", "canary": rev, "phase": "Waiting",
                          "baselineCapacity": 4499.0}}  # fmt: skip
    obs = observe(gated(AWQ), [legacy, canary], pods(legacy, 2) + mine, prev)
    held = plan_reconcile(replace(obs, quality=None))
    assert held.admit == ()
    assert held.rollout is not None and held.rollout.replicas[str(rev)] == 1
    record = {"revision": rev, "passed": True, "message": "token agreement 1.000",
              "reason": "QualityGatePassed"}  # fmt: skip
    passed = plan_reconcile(replace(obs, quality=True, quality_record=record))
    assert [(a.pod, a.reason) for a in passed.admit] == [(mine[0]["metadata"]["name"],
                                                          "QualityGatePassed")]  # fmt: skip
    assert passed.status is not None and passed.status["revisions"]["quality"] == record


def test_target_revision_is_the_one_the_reconcile_creates() -> None:
    obs = observe(AWQ, [], [])
    plan = plan_reconcile(obs)
    dep = next(o for o in plan.apply if o["kind"] == "Deployment")
    assert obs.isvc is not None
    rev = target_revision(obs.isvc, obs.placement, obs.gpu_product)
    assert rev == plan.revision and dep["metadata"]["name"] == f"x-{rev}"
    assert target_revision(obs.isvc, None, None) is None
