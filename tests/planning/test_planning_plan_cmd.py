"""`kvpilot plan` offline: manifests and an inventory file in, table or JSON out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvpilot.cli import main
from kvpilot.controller.inventory_io import ClusterSnapshot, cluster_inventory
from kvpilot.planning.placement import RunningReplicas

INVENTORY = {
    "nodes": [
        {
            "name": "h100",
            "count": 2,
            "gpuType": "H100-80GB",
            "gpuProduct": "NVIDIA-H100-80GB-HBM3",
            "gpuMemoryMiB": 81559,
            "gpus": 8,
        },
        {
            "name": "l4",
            "count": 4,
            "gpuType": "L4-24GB",
            "gpuProduct": "NVIDIA-L4",
            "gpuMemoryMiB": 23034,
            "gpus": 1,
        },
    ]
}


def isvc(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kvpilot.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"model": {"source": source}} | spec,
    }


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    manifests = tmp_path / "services.yaml"
    manifests.write_text(
        yaml.safe_dump_all(
            [
                isvc(
                    "chat",
                    "hf://meta-llama/Llama-3.1-70B-Instruct",
                    replicas=3,
                    placement={"gpuTypes": ["H100-80GB"], "priority": 100},
                    scaling={"minReplicas": 1, "maxReplicas": 4},
                ),
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
                isvc(
                    "batch",
                    "hf://meta-llama/Llama-3.1-8B-Instruct",
                    replicas=8,
                    placement={"gpuTypes": ["H100-80GB"]},
                    scaling={"minReplicas": 1, "maxReplicas": 8},
                ),
                isvc(
                    "tiny",
                    "hf://Qwen/Qwen2.5-1.5B-Instruct",
                    placement={"gpuTypes": ["L4"]},
                ),
                isvc("mystery", "hf://example/private-model"),
            ]
        )
    )
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    return manifests, inventory


def test_table(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    manifests, inventory = files
    rc = main(["plan", "-f", str(manifests), "--inventory", str(inventory)])
    out = capsys.readouterr().out
    assert rc == 1  # batch and mystery are not fully placed
    lines = out.splitlines()
    assert lines[0].split() == [
        "SERVICE",
        "PRIORITY",
        "GPU",
        "TYPE",
        "TP",
        "REPLICAS",
        "GPUS",
        "WEIGHTS",
        "KV",
        "CACHE",
        "OVERHEAD",
        "BUDGET",
        "REASON",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert rows["ml/chat"][1:6] == ["100", "H100-80GB", "4", "3/3", "12"]
    assert rows["ml/batch"][1:6] == ["0", "H100-80GB", "1", "4/8", "4"]
    assert rows["ml/batch"][-1] == "InsufficientCapacity"
    assert rows["ml/tiny"][2:5] == ["L4-24GB", "1", "1/1"]
    assert rows["ml/mystery"][-1] == "UnknownModelShape"
    assert "Why:" in out
    assert "ml/batch: 4 of 8 replicas placed on H100-80GB at TP1" in out
    assert "higher-priority services hold ml/chat (priority 100, 12 GPUs)" in out
    assert "ml/mystery: model 'hf://example/private-model' is not in the built-in catalog" in out


def test_json_and_what_if(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    manifests, inventory = files
    rc = main(
        [
            "plan",
            "-f",
            str(manifests),
            "--inventory",
            str(inventory),
            "-o",
            "json",
            "--replicas",
            "chat=2",
            "--replicas",
            "ml/batch=4",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 1  # mystery still has no shape
    by_name = {s["name"]: s for s in data["services"]}
    assert {k: by_name["ml/chat"][k] for k in ("reason", "replicasPlaced", "replicasWanted")} == {
        "reason": "Placed",
        "replicasPlaced": 2,
        "replicasWanted": 2,
    }
    assert by_name["ml/batch"]["replicasPlaced"] == 4
    memory = by_name["ml/chat"]["memory"]
    assert (memory["kvBytesPerToken"], memory["weightsGiB"]) == (80 * 1024, 32.85)
    assert data["pool"] == [
        {"gpuType": "H100-80GB", "nodes": 2, "gpus": 16, "free": 16, "freeAfter": 4, "planned": 12},
        {"gpuType": "L4-24GB", "nodes": 4, "gpus": 4, "free": 4, "freeAfter": 3, "planned": 1},
    ]
    assert data["gpusPlanned"] == 13


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "nope=3"], "--replicas 'nope=3': no service named 'nope'"),
        (["--replicas", "chat"], "--replicas 'chat': expected NAME=N"),
    ],
)
def test_bad_arguments(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    manifests, inventory = files
    assert main(["plan", "-f", str(manifests), "--inventory", str(inventory), *args]) == 2
    assert capsys.readouterr().err.strip() == f"kvpilot plan: {message}"


def test_invalid_manifest_is_reported_with_its_field(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inventory = files
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(isvc("bad", "hf://a/b", parallelism={"tensor": 3})))
    assert main(["plan", "-f", str(bad), "--inventory", str(inventory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvpilot plan: InferenceService bad: invalid InferenceService spec: ")
    assert "spec.parallelism.tensor" in err


def test_cluster_inventory_separates_kvpilot_pods() -> None:
    node = {
        "metadata": {"name": "h-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }

    def pod(name: str, gpus: int, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "ml", "labels": labels},
            "spec": {
                "nodeName": "h-0",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            },
            "status": {"phase": "Running"},
        }

    ours = {"app.kubernetes.io/managed-by": "kvpilot", "kvpilot.io/inference-service": "chat"}
    snapshot = ClusterSnapshot(
        nodes=[node], pods=[pod("training", 3, {}), pod("chat-1", 4, ours)], services=[]
    )
    inventory, running = cluster_inventory(snapshot)
    assert inventory.free_by_type() == {"H100-80GB": 5}
    assert running == {"ml/chat": RunningReplicas("H100-80GB", 4, (("h-0", 1),))}


def test_table_shows_node_assignments(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifests, inventory = files
    main(["plan", "-f", str(manifests), "--inventory", str(inventory)])
    out = capsys.readouterr().out
    nodes = out.split("Nodes (replicas per node):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    data_rc = main(["plan", "-f", str(manifests), "--inventory", str(inventory), "-o", "json"])
    assert data_rc in (0, 1)
    data = json.loads(capsys.readouterr().out)
    expected = [
        f"  {s['name']}: " + ", ".join(f"{n} x{c}" for n, c in s["nodes"].items())
        for s in data["services"]
        if s["nodes"]
    ]
    assert nodes == expected and expected


def test_bad_inventory_values_each_get_a_line(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifests, _ = files
    bad = tmp_path / "inventory.yaml"
    bad.write_text(
        "nodes:\n"
        "  - {name: a100, gpuType: A100-80GB, gpus: eight}\n"
        "  - {name: l4, gpuType: L4, gpus: 1, count: -1}\n"
        "  - {name: h100, gpuType: H100-80GB, gpus: 8, usedGpus: 9}\n"
    )
    assert main(["plan", "-f", str(manifests), "--inventory", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"kvpilot plan: inventory {bad}:",
        "  nodes[0] (a100).gpus: 'eight' is not a whole number",
        "  nodes[1] (l4).count: -1 is below 1",
        "  nodes[2] (h100).usedGpus: 9 is more than the node's 8 GPUs",
    ]


def test_models_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "-o", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    llama = rows["llama-3.1-8b"]
    assert (llama["layers"], llama["kvHeads"], llama["kvBytesPerToken"]) == (32, 8, 131072)
    assert llama["contextLength"] == 131072
    assert {
        "repository": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "quantization": "awq",
    } in llama["quantizedVariants"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["MODEL", "PARAMS"]
    row = next(line.split() for line in table if line.startswith("llama-3.1-70b "))
    assert row == ["llama-3.1-70b", "70.55", "80", "64", "8", "327680", "131072", "awq,fp8,gptq"]
