"""The canary analysis through the reconcile plan: its state lands in status, its
Events are posted, and a rollback removes the canary's Deployment (pure, a toy cluster)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tests.controller.test_reconcile_plan import BODY, observe, placement

from kvpilot.reconcile import Event, Observation, ReconcilePlan, plan_reconcile
from kvpilot.rollout.analysis import Decision

REVISION_LABEL = "kvpilot.io/revision"


class ToyCluster:
    """Deployments as planned; every replica a Ready pod at once."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.events: list[Event] = []

    def pods(self) -> list[dict[str, Any]]:
        out = []
        for name, dep in self.deployments.items():
            labels = dep["spec"]["template"]["metadata"]["labels"]
            for i in range(int(dep["spec"]["replicas"])):
                out.append({
                    "metadata": {"name": f"{name}-{i}", "labels": dict(labels)},
                    "spec": {"nodeName": "l4-0"},
                    "status": {"phase": "Running",
                               "conditions": [{"type": "Ready", "status": "True"}]},
                })  # fmt: skip
        return out

    def reconcile(
        self,
        spec: Mapping[str, Any],
        *,
        analysis: Decision | None = None,
        state: Mapping[str, Any] | None = None,
        events: tuple[Event, ...] = (),
    ) -> ReconcilePlan:
        place = placement(2, 2)
        assert place.option is not None
        base: Observation = observe(previous=self.status, spec=spec, place=place)
        obs = replace(
            base,
            free_gpus={place.option.gpu_type: 8},
            pods=tuple(self.pods()),
            deployments=tuple(copy.deepcopy(list(self.deployments.values()))),
            analysis=analysis,
            analysis_message="error rate 20.0 % vs stable 0.0 %" if analysis else "",
            analysis_state=state,
            analysis_events=events,
        )
        plan = plan_reconcile(obs)
        for obj in plan.apply:
            if obj["kind"] == "Deployment":
                live = copy.deepcopy(obj)
                n = int(obj["spec"]["replicas"])
                live["status"] = {"replicas": n, "readyReplicas": n, "observedGeneration": 1}
                live["metadata"].update(generation=1, creationTimestamp=f"t{len(self.deployments)}")
                self.deployments[obj["metadata"]["name"]] = live
        for name, replicas in plan.scale:
            self.deployments[name]["spec"]["replicas"] = replicas
        for name in plan.delete:
            del self.deployments[name]
        if plan.status is not None:
            self.status = plan.status
        self.events.extend(plan.events)
        return plan

    def revisions(self) -> dict[str, Any]:
        return dict(self.status.get("revisions") or {})


def spec(variant: str) -> dict[str, Any]:
    out = copy.deepcopy(BODY["spec"])
    out["scaling"] = {"minReplicas": 2, "maxReplicas": 2}
    out["runtime"] = {"env": [{"name": "VARIANT", "value": variant}]}
    out["rollout"] = {"steps": [50], "analysis": {"enabled": True}}
    return out


def settle(c: ToyCluster, variant: str, **kw: Any) -> None:
    for _ in range(10):
        if not c.reconcile(spec(variant), **kw).writes:
            return


def test_rollback_stores_state_posts_events_and_removes_the_canary() -> None:
    c = ToyCluster()
    settle(c, "a")
    stable = c.revisions()["stable"]
    assert len(c.deployments) == 1
    c.reconcile(spec("b"))
    canary = c.revisions()["canary"]
    assert canary != stable
    assert len(c.deployments) == 2, "the canary surges onto free GPUs"
    state = {"revision": canary, "failures": 1, "lastVerdict": "Fail"}
    failed = Event("Warning", "CanaryAnalysisFailed", f"revision {canary}: error rate 20.0 %")
    c.reconcile(spec("b"), analysis="Continue", state=state, events=(failed,))
    assert c.revisions()["analysis"] == state
    assert failed in c.events
    settle(c, "b", analysis="Rollback", state={**state, "failures": 2})
    rev = c.revisions()
    assert rev.get("canary") is None and rev["stable"] == stable
    assert rev["failed"]["revision"] == canary and rev["failed"]["reason"] == "AnalysisFailed"
    # The canary's Deployment is gone, not left at 0 replicas; none is created again.
    assert [d["metadata"]["labels"][REVISION_LABEL] for d in c.deployments.values()] == [stable]
    assert any(e.type == "Warning" and e.reason == "AnalysisFailed" for e in c.events)


def test_state_of_another_canary_is_not_stored() -> None:
    c = ToyCluster()
    settle(c, "a")
    c.reconcile(spec("b"), analysis="Continue", state={"revision": "stale", "failures": 1})
    assert "analysis" not in c.revisions()
