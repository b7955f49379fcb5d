"""kopf handlers: the watches that feed the controller's caches. Nothing else.

Index handlers store every listed or changed object in the `ClusterView` (kopf runs
them for the initial listing of every kind before any other handler, so the first
event handler call means the caches are complete); event handlers catch deletions
and mark the caches synced. No timers or daemons are registered, so kopf puts no
finalizer on InferenceServices: deleting one never waits for the operator.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kvpilot.api.names import GROUP, PLURAL, VERSION
from kvpilot.controller.cache import holds_gpus, is_gpu_node
from kvpilot.controller.core import Controller
from kvpilot.resources.labels import MANAGED_BY, MANAGER

log = logging.getLogger("kvpilot.handlers")

OWNED = {MANAGED_BY: MANAGER}


def _ctl(memo: Any) -> Controller:
    ctl: Controller = memo["controller"]
    return ctl


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # Events are posted by the controller, once per decision
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]


def _upsert(kind: str, body: kopf.Body, memo: Any) -> None:
    _ctl(memo).upsert(kind, dict(body))


def _event(kind: str, body: kopf.Body, type: str | None, memo: Any) -> None:
    ctl = _ctl(memo)
    if type == "DELETED":
        ctl.delete(kind, dict(body))
    ctl.mark_synced()


# ---------------------------------------------------------------- InferenceServices


@kopf.index(GROUP, VERSION, PLURAL)
async def kvpilot_services(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _upsert("InferenceService", body, memo)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_service(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _event("InferenceService", body, type, memo)


# ---------------------------------------------------------------- nodes and GPU pods


@kopf.index("", "v1", "nodes")
async def kvpilot_nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if is_gpu_node(body):
        _upsert("Node", body, memo)
    else:
        _ctl(memo).delete("Node", dict(body))


@kopf.on.event("", "v1", "nodes")
async def on_node(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _event("Node", body, type, memo)


@kopf.index("", "v1", "pods", when=lambda body, **_: holds_gpus(body))
async def kvpilot_gpu_pods(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _upsert("Pod", body, memo)


@kopf.on.event("", "v1", "pods", when=lambda body, **_: holds_gpus(body))
async def on_pod(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _event("Pod", body, type, memo)


# ---------------------------------------------------------------- what kvpilot renders


@kopf.index("apps", "v1", "deployments", labels=OWNED)
async def kvpilot_deployments(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _upsert("Deployment", body, memo)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def on_deployment(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _event("Deployment", body, type, memo)


@kopf.index("", "v1", "services", labels=OWNED)
async def kvpilot_k8s_services(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _upsert("Service", body, memo)


@kopf.on.event("", "v1", "services", labels=OWNED)
async def on_k8s_service(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _event("Service", body, type, memo)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=OWNED)
async def kvpilot_pdbs(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _upsert("PodDisruptionBudget", body, memo)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OWNED)
async def on_pdb(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _event("PodDisruptionBudget", body, type, memo)
