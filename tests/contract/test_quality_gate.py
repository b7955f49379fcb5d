"""The quality gate against two real vLLM-CPU replicas.

The stable replica serves the tiny test model; the canary serves either the
same weights (the gate must pass) or a copy with seeded noise of 0.2 times
each weight matrix's standard deviation (the gate must fail). At most two
servers run at once. The figures go to the test's output (``-s``) and to
``docs/quality-gate.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvpilot.controller.quality import probe, run_gate
from kvpilot.rollout.quality import QualityGateConfig, QualityResult
from kvpilot_runtime.vllm_cpu import SERVED_NAME, Server, perturbed_model_dir, run_vllm

pytestmark = pytest.mark.vllm

#: Strong enough that greedy answers part within the first few tokens.
PERTURBATION_SCALE = 0.2
PERTURBATION_SEED = 1
CFG = QualityGateConfig()
TIMEOUT_S = 300.0


def gate(stable: Server, canary: Server) -> tuple[float, QualityResult]:
    started = time.monotonic()
    result = run_gate(stable.url, canary.url, SERVED_NAME, CFG, TIMEOUT_S)
    return time.monotonic() - started, result


def test_real_vllm_returns_what_the_gate_compares(vllm_server: Server) -> None:
    answers = probe(vllm_server.url, SERVED_NAME, CFG, TIMEOUT_S)
    assert len(answers) == len(CFG.prompts)
    for a in answers:
        assert len(a.tokens) == CFG.max_tokens
        assert all(t.startswith("token_id:") for t in a.tokens)
        assert a.logprobs is not None
        assert all(lp <= 0.0 for lp in a.logprobs)


def test_gate_passes_for_identical_weights(
    vllm_server: Server, vllm_python_path: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with run_vllm(vllm_python_path, tiny_model, tmp_path) as canary:
        seconds, result = gate(vllm_server, canary)
    print(f"\nidentical weights: {result} in {seconds:.1f}s")
    assert result.passed, result.message
    assert result.token_agreement == 1.0
    assert result.logprob_divergence is not None
    assert result.logprob_divergence < 0.01


def test_gate_fails_for_perturbed_weights(
    vllm_server: Server, vllm_python_path: Path, tiny_model: Path, tmp_path: Path
) -> None:
    perturbed = perturbed_model_dir(
        vllm_python_path, tiny_model, PERTURBATION_SCALE, PERTURBATION_SEED
    )
    with run_vllm(vllm_python_path, perturbed, tmp_path) as canary:
        seconds, result = gate(vllm_server, canary)
    print(f"\nperturbed weights: {result} in {seconds:.1f}s")
    assert not result.passed
    assert result.reason == "TokenAgreementLow"
    assert result.token_agreement < 0.5
