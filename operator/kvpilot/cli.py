"""The ``kvpilot`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="kvpilot", description="Serve LLMs with vLLM on Kubernetes GPU clusters."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the operator against the current kubeconfig", add_help=False)
    sub.add_parser("crd", help="generate the CustomResourceDefinitions into crds/", add_help=False)
    sub.add_parser(
        "simulate", help="replay a request trace through the autoscaling policy", add_help=False
    )
    sub.add_parser("tune", help="search a service's autoscaling knobs on a trace", add_help=False)
    import importlib

    try:
        plan_cmd: Any = importlib.import_module("kvpilot.plan_cmd")
    except ImportError:  # pragma: no cover - partial installs
        plan_cmd = None
    if plan_cmd is not None:
        plan_cmd.add_parser(sub)
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from kvpilot.controller import runner

        return runner.main(rest)
    if command == "crd":
        from kvpilot.api import crd

        return crd.main(rest)
    if command == "simulate":
        from kvpilot.sim import cli as sim_cli

        return sim_cli.main(rest)
    if command == "tune":
        from kvpilot.sim import tune

        return tune.main(rest)
    args = parser.parse_args(argv)
    if args.command == "plan" and plan_cmd is not None:
        return int(plan_cmd.run(args))
    if args.command == "models" and plan_cmd is not None:
        return int(plan_cmd.run_models(args))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
