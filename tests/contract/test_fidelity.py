"""The simulator with the CPU profile reproduces real vLLM-CPU under open-loop load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvpilot_runtime.fidelity import TARGET, run_fidelity
from kvpilot_runtime.vllm_cpu import Server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_fidelity_within_target(vllm_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    report = run_fidelity(vllm_server, tiny_model, tmp_path, duration=15.0, log=print)
    print(json.dumps(report["errors"], indent=2))
    assert report["real"]["overload"]["mean_queue_depth"] > 5, "overload built no queue"
    failures = {
        f"{rate}/{metric}": err
        for rate, errs in report["errors"].items()
        for metric, err in errs.items()
        if err > TARGET
    }
    assert failures == {}, json.dumps(report, indent=2)
