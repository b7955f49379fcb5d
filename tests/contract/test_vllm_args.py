"""Every vLLM argument kvpilot renders is accepted by real vLLM's argument parser."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvpilot_runtime.launcher import Container, plan_launch

pytestmark = pytest.mark.vllm

# Runs inside the vLLM virtualenv: parses each argv with the OpenAI server's parser
# and turns it into engine arguments (no model is loaded), and checks the names
# vLLM validates later (quantization methods).
PARSE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

results = []
for argv in json.loads(sys.stdin.read()):
    parser = make_arg_parser(FlexibleArgumentParser())
    try:
        ns = parser.parse_args(argv)
        engine = AsyncEngineArgs.from_cli_args(ns)
        q = engine.quantization
        if q is not None and q not in QUANTIZATION_METHODS:
            raise ValueError(f"unknown quantization {q}")
        results.append({"ok": True, "model": engine.model, "tp": engine.tensor_parallel_size,
                        "quantization": q, "kv_cache_dtype": engine.kv_cache_dtype,
                        "prefix_caching": engine.enable_prefix_caching,
                        "host": ns.host, "port": ns.port})
    except SystemExit as exc:
        results.append({"ok": False, "error": f"argparse exit {exc.code}"})
    except Exception as exc:
        results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
print("RESULT " + json.dumps(results))
"""

BASE = [
    "--model",
    "meta-llama/Llama-3.1-8B-Instruct",
    "--served-model-name",
    "llama-8b",
    "--tensor-parallel-size",
    "1",
    "--dtype",
    "auto",
    "--kv-cache-dtype",
    "auto",
    "--max-model-len",
    "8192",
    "--gpu-memory-utilization",
    "0.9",
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
    "--download-dir",
    "/model-cache/hub",
]


def with_args(**replace: str) -> list[str]:
    out = list(BASE)
    for flag, value in replace.items():
        key = "--" + flag.replace("_", "-")
        if key in out:
            out[out.index(key) + 1] = value
        else:
            out += [key, value]
    return out


CASES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("base", BASE, {"tp": 1, "quantization": None, "kv_cache_dtype": "auto"}),
    ("tp2", with_args(tensor_parallel_size="2"), {"tp": 2}),
    ("tp4", with_args(tensor_parallel_size="4"), {"tp": 4}),
    ("tp8", with_args(tensor_parallel_size="8"), {"tp": 8}),
    ("awq", with_args(quantization="awq"), {"quantization": "awq"}),
    ("gptq", with_args(quantization="gptq"), {"quantization": "gptq"}),
    ("fp8", with_args(quantization="fp8"), {"quantization": "fp8"}),
    # int8 (W8A8) checkpoints are detected from their config; compressed-tensors is
    # their method name, and one that runs on the CPU backend.
    ("compressed-tensors", with_args(quantization="compressed-tensors"), {}),
    ("bfloat16", with_args(dtype="bfloat16"), {}),
    ("float16", with_args(dtype="float16"), {}),
    ("kv-fp8", with_args(kv_cache_dtype="fp8"), {"kv_cache_dtype": "fp8"}),
    (
        "scheduler",
        with_args(max_num_seqs="256", max_num_batched_tokens="8192"),
        {},
    ),
    ("prefix-on", [*BASE, "--enable-prefix-caching"], {"prefix_caching": True}),
    ("prefix-off", [*BASE, "--no-enable-prefix-caching"], {"prefix_caching": False}),
    ("revision", with_args(revision="0e9e39f249a16976918f6564b8830bc894c89659"), {}),
    (
        "pvc",
        with_args(model="/model-source/llama"),
        {"model": "/model-source/llama"},
    ),
    ("s3", with_args(model="s3://bucket/llama", load_format="runai_streamer"), {}),
    (
        "extra-args",
        [*BASE, "--enable-chunked-prefill", "--max-num-seqs", "64", "--seed", "1"],
        {},
    ),
    ("long-context", with_args(max_model_len="131072", gpu_memory_utilization="0.95"), {}),
]


def parse_with_vllm(python: Path, argvs: list[list[str]]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(python), "-c", PARSE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"parser script failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result: list[dict[str, Any]] = json.loads(lines[-1][len("RESULT ") :])
    return result


@pytest.fixture(scope="module")
def parsed(vllm_python_path: Path) -> dict[str, dict[str, Any]]:
    results = parse_with_vllm(vllm_python_path, [argv for _, argv, _ in CASES])
    return {name: r for (name, _, _), r in zip(CASES, results, strict=True)}


@pytest.mark.parametrize(("name", "argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_vllm_accepts(
    parsed: dict[str, dict[str, Any]], name: str, argv: list[str], expected: dict[str, Any]
) -> None:
    result = parsed[name]
    assert result["ok"], f"vLLM refused {argv}: {result.get('error')}"
    for key, value in expected.items():
        assert result[key] == value, key


def test_operator_quantization_flags_are_vllm_methods(vllm_python_path: Path) -> None:
    """The operator's quantization mapping names methods real vLLM knows."""
    deployment = pytest.importorskip("kvpilot.resources.deployment")
    mapping: dict[str, str] = deployment.VLLM_QUANTIZATION
    argvs = [with_args(quantization=flag) for flag in mapping.values()]
    for flag, result in zip(
        mapping.values(), parse_with_vllm(vllm_python_path, argvs), strict=True
    ):
        assert result["ok"], f"--quantization {flag}: {result.get('error')}"


def test_launcher_output_is_accepted(vllm_python_path: Path) -> None:
    """The launcher's host/port override keeps the command line valid for vLLM."""
    command = ("python3", "-m", "vllm.entrypoints.openai.api_server", *BASE)
    plan = plan_launch(
        Container(command, {}), mode="vllm", python="python3", host="127.0.0.1", port=18123
    )
    (result,) = parse_with_vllm(vllm_python_path, [list(plan.argv[3:])])
    assert result["ok"], result.get("error")
    assert (result["host"], result["port"]) == ("127.0.0.1", 18123)
