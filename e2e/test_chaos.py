"""Chaos on the real control plane: the operator is SIGKILLed in the middle of creates,
scales, spec edits, rollouts, deletions and placement moves, and restarted; after every
restart the cluster converges and no invariant is broken at any moment (e2e/chaos.py).

CI runs a few seeded trials; ``make bench-chaos`` runs the full count."""

from __future__ import annotations

import json
import os

import pytest

from e2e.chaos import run_chaos
from e2e.conftest import Cluster
from e2e.operator import OperatorProcess, install_crds

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("KVPILOT_CHAOS_TRIALS", "4"))
SEED = int(os.environ.get("KVPILOT_CHAOS_SEED", "7"))


def test_operator_killed_mid_change_converges(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    install_crds(cluster.kube)
    operator.stop()  # the chaos run has its own operator (one Lease)
    try:
        result = run_chaos(
            cluster.kube, cluster.kubeconfig, cluster.layout.logs, namespace,
            trials=TRIALS, seed=SEED,
        )  # fmt: skip
    finally:
        operator.start()
    (cluster.layout.logs / "chaos-e2e.json").write_text(json.dumps(result, indent=2))
    failed = [t for t in result["trials"] if not t["ok"]]
    assert result["figures"]["trials"] == TRIALS
    assert not failed, json.dumps(failed, indent=1)
