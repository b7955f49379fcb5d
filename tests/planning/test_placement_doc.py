"""docs/placement.md: the worked examples' numbers are what the planner computes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kvpilot.cli import main
from kvpilot.planning.gpus import GIB, gpu_type
from kvpilot.planning.memory import ServingConfig, estimate_memory
from kvpilot.planning.models import catalog_shape

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "placement.md").read_text()


def section(name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", DOC, re.S)
    assert match, name
    return match.group(1)


def table(name: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in section(name).splitlines() if line]
    return [[c.strip() for c in row] for row in rows[2:]]


def gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def test_memory_example() -> None:
    shape = catalog_shape("hf://meta-llama/Llama-3.1-8B-Instruct")
    assert shape is not None
    columns = []
    for name in ("H100-80GB", "L4-24GB"):
        gpu = gpu_type(name)
        assert gpu is not None
        m = estimate_memory(shape, ServingConfig(), gpu, 1)
        columns.append(
            [
                gib(m.budget_bytes),
                gib(m.weights_bytes),
                gib(m.activation_bytes),
                gib(m.cuda_graph_bytes + m.runtime_overhead_bytes),
                gib(m.kv_cache_bytes),
                gib(m.kv_allocated_bytes),
            ]
        )
    assert [row[1:] for row in table("memory-example")] == [
        list(r) for r in zip(*columns, strict=True)
    ]


def test_tp_example() -> None:
    shape = catalog_shape("hf://meta-llama/Llama-3.1-70B-Instruct")
    gpu = gpu_type("H100-80GB")
    assert shape is not None and gpu is not None
    rows = []
    for tp in (1, 2, 4):
        m = estimate_memory(shape, ServingConfig(), gpu, tp)
        rows.append(
            [str(tp), gib(m.weights_bytes), gib(m.required_bytes), "yes" if m.fits_target else "no"]
        )
    assert table("tp-example") == rows


def test_plan_example(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    block = section("plan-example").split("```console\n", 1)[1].rsplit("```", 1)[0]
    command, expected = block.split("\n", 1)
    monkeypatch.chdir(ROOT)
    args = shlex.split(command.removeprefix("$ "))
    assert args[0] == "kvpilot"
    main(args[1:])
    assert capsys.readouterr().out == expected


def test_moves_example() -> None:
    from tests.controller.test_moves import SERVICES, a100, gpu_pod

    from kvpilot.reconcile import plan_pool

    pods = [gpu_pod(f"s{i}", "small", f"a100-{i % 2}", 1) for i in range(6)]
    pool = plan_pool(SERVICES, [a100("a100-0"), a100("a100-1")], pods)
    shown = section("moves-example").strip().removeprefix("```text").removesuffix("```")
    assert [m.describe() for m in pool.plan.moves] == shown.strip().splitlines()


def test_type_move_example() -> None:
    from tests.controller.test_moves import gpu_pod
    from tests.controller.test_upgrade_reconcile import NODES, SERVICES

    from kvpilot.reconcile import plan_pool

    pods = [gpu_pod(f"c{i}", "chat", "a-0", 1) for i in range(2)]
    pool = plan_pool(SERVICES, NODES, pods)
    shown = section("type-move-example").strip().removeprefix("```text").removesuffix("```")
    assert [m.describe() for m in pool.plan.type_moves] == shown.strip().splitlines()
