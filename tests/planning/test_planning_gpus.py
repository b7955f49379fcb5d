"""GPU catalog: product-label mapping and name lookup."""

from __future__ import annotations

import pytest

from kvpilot.planning.gpus import GPU_TYPES, cost_order, gpu_type, gpu_type_for_product


@pytest.mark.parametrize(
    ("product", "memory_mib", "expected"),
    [
        ("NVIDIA-H100-80GB-HBM3", 81559, "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3", None, "H100-80GB"),
        ("NVIDIA-H100-PCIe", 81559, "H100-80GB"),
        ("NVIDIA-A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA-A100-80GB-PCIe", None, "A100-80GB"),
        ("NVIDIA-A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA-A100-PCIE-40GB", None, "A100-40GB"),
        # Unknown A100 spelling: the memory label decides the size.
        ("NVIDIA-A100-SXM-NEW", 40960, "A100-40GB"),
        ("NVIDIA-A100-SXM-NEW", 81920, "A100-80GB"),
        ("NVIDIA-A100-SXM-NEW", None, None),
        ("NVIDIA-L4", 23034, "L4-24GB"),
        ("nvidia-l4", None, "L4-24GB"),
        ("NVIDIA-L40S", 46068, "L40S-48GB"),
        ("NVIDIA-A10G", 23028, "A10G-24GB"),
        ("NVIDIA-H200", 143771, "H200-141GB"),
        # Partitioned GPUs are never handed out whole.
        ("NVIDIA-A100-SXM4-80GB-MIG-1g.10gb", 9728, None),
        ("NVIDIA-L4-SHARED", 23034, None),
        ("Tesla-T4", 15360, None),
        ("", None, None),
    ],
)
def test_gpu_type_for_product(product: str, memory_mib: int | None, expected: str | None) -> None:
    found = gpu_type_for_product(product, memory_mib)
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("H100-80GB", "H100-80GB"),
        ("h100-80gb", "H100-80GB"),
        ("H100", "H100-80GB"),
        ("L4", "L4-24GB"),
        ("A100", None),  # ambiguous: 40 or 80 GB
        ("A100-40GB", "A100-40GB"),
        ("T4", None),
    ],
)
def test_gpu_type_lookup(name: str, expected: str | None) -> None:
    found = gpu_type(name)
    assert (found.name if found else None) == expected


def test_catalog_names_match_contract() -> None:
    assert {g.name for g in GPU_TYPES} == {
        "H100-80GB",
        "A100-80GB",
        "A100-40GB",
        "L40S-48GB",
        "L4-24GB",
        "A10G-24GB",
        "H200-141GB",
    }


def test_cost_order_uses_table_then_catalog() -> None:
    names = ["H100-80GB", "L4-24GB", "A100-80GB", "Unknown"]
    assert cost_order(names) == ["L4-24GB", "A100-80GB", "H100-80GB", "Unknown"]
    assert cost_order(names, {"H100-80GB": 0.1}) == ["H100-80GB", "L4-24GB", "A100-80GB", "Unknown"]
