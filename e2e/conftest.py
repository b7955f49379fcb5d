"""Fixtures on the local control plane (``kvpilot dev-cluster``).

``cluster`` starts the dev cluster for the session when it is not running and
stops it at the end if it started it (set KVPILOT_KEEP_CLUSTER=1 to keep it).
``namespace`` gives each test a fresh namespace, deleted afterwards.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from e2e import devcluster
from e2e.helpers import Kube
from e2e.operator import OperatorProcess

if TYPE_CHECKING:
    from e2e.podrunner import PodRunner


@dataclass(frozen=True)
class Cluster:
    layout: devcluster.Layout
    kube: Kube

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def prometheus_url(self) -> str:
        return devcluster.prometheus_url()

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        return self.kube(*args, input_text=input_text)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    layout = devcluster.Layout.default()
    started = False
    if not devcluster.is_up(layout):
        devcluster.up(layout=layout)
        started = True
    yield Cluster(layout=layout, kube=Kube(layout.kubeconfig, layout.bin))
    if started and os.environ.get("KVPILOT_KEEP_CLUSTER") != "1":
        devcluster.down(layout)


@pytest.fixture
def kube(cluster: Cluster) -> Kube:
    return cluster.kube


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    cluster.kube("create", "namespace", name)
    # The ServiceAccount admission plugin needs the namespace's default account.
    from e2e.helpers import wait_for

    wait_for(
        lambda: cluster.kube.get("serviceaccount", "default", name),
        lambda sa: sa is not None,
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    """The kvpilot operator running against the dev cluster (CRDs installed first),
    reading serving metrics from the dev cluster's Prometheus. Restartable."""
    from e2e.operator import install_crds, running_operator

    install_crds(cluster.kube)
    log_file = cluster.layout.logs / "operator-e2e.log"
    log_file.write_text("")
    with running_operator(
        cluster.kubeconfig, log_file, prometheus_url=cluster.prometheus_url
    ) as op:
        yield op


@pytest.fixture(scope="session")
def pod_runner(cluster: Cluster) -> Iterator[PodRunner]:
    """The e2e pod runner: a live replica (kvpilot-sim) for each Running kvpilot pod.

    It serves only the namespaces handed to it (``pod_runner.serve_namespace`` or
    the ``served_namespace`` fixture), so pods that other users of the cluster
    run are left to kwok. Its log goes to ``.dev-cluster/logs/pod-runner-e2e.log``.
    """
    import logging

    from e2e.podrunner import PodRunner

    logger = logging.getLogger("kvpilot.podrunner")
    handler = logging.FileHandler(cluster.layout.logs / "pod-runner-e2e.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with PodRunner.for_dev_cluster(cluster.layout, namespaces=()) as runner:
            yield runner
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def served_namespace(namespace: str, pod_runner: PodRunner) -> str:
    """A fresh namespace whose kvpilot pods get live replicas from the pod runner."""
    pod_runner.serve_namespace(namespace)
    return namespace
