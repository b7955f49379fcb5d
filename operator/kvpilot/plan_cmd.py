"""`kvpilot plan`: a dry run of GPU placement for SREs.

Services come from manifest files (`-f`) or the cluster; nodes from an inventory file
(`--inventory`, the format of e2e/clusters/*.yaml) or the cluster. Prints, per service,
the GPU type, TP, replicas placed vs wanted, per-GPU memory and why anything does not
fit. Exit status: 0 when every service is fully placed, 1 when some is not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from kvpilot.planning.inventory import (
    Inventory,
    InventoryFileError,
    build_inventory,
    nodes_from_inventory_file,
    pods_for_used_gpus,
)
from kvpilot.planning.placement import RunningReplicas
from kvpilot.planning.report import catalog_rows, catalog_table, plan_dict, plan_table
from kvpilot.planning.service import ServiceSpec, plan_services, service_from_manifest

KIND = "InferenceService"


class PlanInputError(Exception):
    """Bad input: unreadable file, invalid manifest, unknown service in --replicas."""


def add_parser(subparsers: Any) -> None:
    """Register `plan` on the `kvpilot` command's subparsers."""
    p = subparsers.add_parser(
        "plan",
        help="dry-run GPU placement: GPU type, TP and replicas per service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="PATH",
        help="InferenceService manifests (YAML, several documents allowed, '-' for stdin, "
        "a directory for its *.yaml); repeatable. Default: the cluster's InferenceServices.",
    )
    p.add_argument(
        "--inventory",
        metavar="PATH",
        help="node inventory file (nodes: [{name, count, gpuType|gpuProduct, gpus, "
        "usedGpus}]). Default: the cluster's nodes and pods.",
    )
    p.add_argument(
        "-n", "--namespace", help="namespace of cluster InferenceServices (default: all)"
    )
    p.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="NAME=N",
        help="what-if: desired replicas of a service (name or namespace/name); repeatable",
    )
    p.add_argument(
        "--ignore-running",
        action="store_true",
        help="plan from scratch instead of keeping running services on their GPU type",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    m = subparsers.add_parser(
        "models",
        help="list the built-in model catalog the planner sizes models from",
        description="Models the planner knows by name: parameters, layers, heads, KV cache "
        "bytes per token, context length and published quantized variants. A model not "
        "listed needs spec.model.shape.",
    )
    m.add_argument("-o", "--output", choices=("table", "json"), default="table")


def run_models(args: argparse.Namespace) -> int:
    """`kvpilot models`: print the catalog."""
    rows = catalog_rows()
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(catalog_table(rows))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except PlanInputError as err:
        print(f"kvpilot plan: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    kube = None
    services: list[ServiceSpec]
    if args.filename:
        services = [service_from_object(obj) for obj in load_manifests(args.filename)]
    else:
        kube = _connect()
        from kvpilot.controller.inventory_io import read_cluster

        snapshot = read_cluster(kube, nodes=False, namespace=args.namespace)
        services = [service_from_object(obj) for obj in snapshot.services]
    services = apply_replica_overrides(services, args.replicas)

    running: dict[str, RunningReplicas] = {}
    if args.inventory:
        inventory = load_inventory_file(Path(args.inventory))
    else:
        from kvpilot.controller.inventory_io import cluster_inventory, read_cluster

        kube = kube or _connect()
        inventory, running = cluster_inventory(read_cluster(kube, services=False))

    plan = plan_services(services, inventory, running=running, keep_running=not args.ignore_running)
    if args.output == "json":
        print(json.dumps(plan_dict(plan, inventory), indent=2))
    else:
        print(plan_table(plan, inventory))
    return 0 if all(s.replicas_placed >= s.replicas_wanted for s in plan.services) else 1


def _connect() -> Any:
    from kvpilot.controller.inventory_io import connect

    try:
        return connect()
    except Exception as err:
        raise PlanInputError(
            f"cannot reach the cluster ({err}); pass -f and --inventory for an offline plan"
        ) from err


def load_manifests(paths: Iterable[str]) -> list[dict[str, Any]]:
    """InferenceService objects from files, directories and stdin (other kinds skipped)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        for text, where in _read(path):
            try:
                docs = list(yaml.safe_load_all(text))
            except yaml.YAMLError as err:
                raise PlanInputError(f"{where}: not YAML: {err}") from err
            for doc in _objects(docs):
                if doc.get("kind") == KIND:
                    out.append(doc)
    if not out:
        raise PlanInputError(f"no {KIND} objects in {', '.join(paths)}")
    return out


def service_from_object(obj: dict[str, Any]) -> ServiceSpec:
    """Validate the spec as the API server would, then take the planner's view of it."""
    name = (obj.get("metadata") or {}).get("name", "?")
    try:
        return service_from_manifest(obj)
    except ValueError as err:
        raise PlanInputError(f"{KIND} {name}: {err}") from err


def apply_replica_overrides(
    services: list[ServiceSpec], overrides: Iterable[str]
) -> list[ServiceSpec]:
    wanted: dict[str, int] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise PlanInputError(f"--replicas {item!r}: expected NAME=N")
        matches = [s.name for s in services if name in (s.name, s.name.split("/", 1)[1])]
        if len(matches) != 1:
            found = "no" if not matches else "more than one"
            raise PlanInputError(f"--replicas {item!r}: {found} service named {name!r}")
        wanted[matches[0]] = int(value)
    return [
        replace(s, desired_replicas=wanted[s.name]) if s.name in wanted else s for s in services
    ]


def load_inventory_file(path: Path) -> Inventory:
    try:
        data = yaml.safe_load(path.read_text())
        nodes = nodes_from_inventory_file(data if isinstance(data, dict) else {})
    except InventoryFileError as err:
        raise PlanInputError(f"inventory {path}:\n  " + "\n  ".join(err.problems)) from err
    except (OSError, yaml.YAMLError, ValueError) as err:
        raise PlanInputError(f"inventory {path}: {err}") from err
    return build_inventory(nodes, pods_for_used_gpus(nodes))


def _read(path: str) -> Iterator[tuple[str, str]]:
    if path == "-":
        yield sys.stdin.read(), "stdin"
        return
    p = Path(path)
    files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
    for f in files:
        try:
            yield f.read_text(), str(f)
        except OSError as err:
            raise PlanInputError(f"{f}: {err.strerror or err}") from err


def _objects(docs: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            yield from _objects(doc.get("items") or [])
        elif isinstance(doc, dict):
            yield doc
