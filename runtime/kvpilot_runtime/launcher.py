"""kvpilot-launch: turns the container kvpilot renders into an exec of vLLM or kvpilot-sim.

The operator renders the ``vllm`` container as
``python3 -m vllm.entrypoints.openai.api_server --model ... --port 8000 ...``.
The launcher takes that command line (after ``--``, or from a Pod /
Deployment / PodSpec JSON) plus the container's env, and replaces itself
(``os.execvpe`` with an argument list, never a shell) with either

* real vLLM: ``<python> -m vllm.entrypoints.openai.api_server <args>``, or
* the simulator: ``<python> -m kvpilot_runtime.server <args>``,

optionally overriding ``--host`` and ``--port`` (the e2e pod runner gives each
replica its own loopback port). ``hf://org/name`` model sources become the
plain Hugging Face id vLLM expects.

    kvpilot-launch --mode sim --port 18001 -- \\
        python3 -m vllm.entrypoints.openai.api_server --model m
    kvpilot-launch --mode vllm --python .venv-vllm/bin/python --pod-spec pod.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("kvpilot.launch")

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
SIM_MODULE = "kvpilot_runtime.server"
MODES = ("vllm", "sim")
# Programs that would re-parse a string as a command line: never the one exec'd.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox", "env"})
# Flags whose value is a credential: shown as *** in logs.
SECRET_FLAGS = ("--api-key", "--hf-token")
REDACTED = "***"


@dataclass(frozen=True)
class Container:
    """The parts of a rendered container the launcher uses."""

    command: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class LaunchPlan:
    """What to exec: the program, its argv and the environment additions."""

    argv: tuple[str, ...]
    env: Mapping[str, str]

    @property
    def program(self) -> str:
        return self.argv[0]


def container_from_spec(doc: Mapping[str, Any], name: str = "vllm") -> Container:
    """Finds the container in a Pod, a Deployment (or other template owner) or a PodSpec."""
    spec: Any = doc
    if "spec" in spec:
        spec = spec["spec"]
    if "template" in spec:
        spec = spec["template"]["spec"]
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not containers:
        raise ValueError("no containers found in the pod spec")
    chosen = next((c for c in containers if c.get("name") == name), None)
    if chosen is None:
        if len(containers) != 1:
            raise ValueError(f"no container named {name!r} among {len(containers)} containers")
        chosen = containers[0]
    command = [*(chosen.get("command") or []), *(chosen.get("args") or [])]
    env: dict[str, str] = {}
    for item in chosen.get("env") or []:
        if "value" in item:
            env[str(item["name"])] = str(item["value"])
        else:
            log.warning("Skipping env %s: only literal values can be resolved", item.get("name"))
    return Container(tuple(str(c) for c in command), env)


def vllm_args(command: Sequence[str]) -> list[str]:
    """The vLLM arguments of a rendered command line (module, ``vllm serve`` or bare args)."""
    cmd = list(command)
    if VLLM_MODULE in cmd:
        return cmd[cmd.index(VLLM_MODULE) + 1 :]
    for i, part in enumerate(cmd):
        if Path(part).name == "vllm" and i + 1 < len(cmd) and cmd[i + 1] == "serve":
            rest = cmd[i + 2 :]
            if rest and not rest[0].startswith("-"):
                return ["--model", rest[0], *rest[1:]]
            return rest
    if SIM_MODULE in cmd:
        return cmd[cmd.index(SIM_MODULE) + 1 :]
    if cmd and Path(cmd[0]).name == "kvpilot-sim":
        return cmd[1:]
    if not cmd or cmd[0].startswith("-"):
        return cmd
    raise ValueError(f"not a vLLM command line: {' '.join(cmd[:4])} ...")


def _drop_option(args: list[str], option: str) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def _model_source(args: list[str]) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == "--model" and i + 1 < len(out) and out[i + 1].startswith("hf://"):
            out[i + 1] = out[i + 1][len("hf://") :]
        elif a.startswith("--model=hf://"):
            out[i] = "--model=" + a[len("--model=hf://") :]
    return out


def redact(argv: Sequence[str]) -> list[str]:
    """argv for logs: the values of credential flags replaced by ***."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        flag = arg.split("=", 1)[0].replace("_", "-")
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif flag in SECRET_FLAGS and "=" in arg:
            out.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        else:
            out.append(arg)
            hide_next = flag in SECRET_FLAGS
    return out


def plan_launch(
    container: Container,
    *,
    mode: str,
    python: str,
    host: str | None = None,
    port: int | None = None,
    sim_args: Sequence[str] = (),
) -> LaunchPlan:
    """The exec that serves ``container`` in ``mode``; pure, so it is tested directly."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if Path(python).name in SHELLS:
        raise ValueError(f"the interpreter must be Python, not the shell {python!r}")
    if any("\0" in part for part in container.command):
        raise ValueError("an argument contains a NUL character")
    args = _model_source(vllm_args(container.command))
    if host is not None:
        args = [*_drop_option(args, "--host"), "--host", host]
    if port is not None:
        args = [*_drop_option(args, "--port"), "--port", str(port)]
    module = VLLM_MODULE if mode == "vllm" else SIM_MODULE
    extra = list(sim_args) if mode == "sim" else []
    return LaunchPlan((python, "-m", module, *args, *extra), dict(container.env))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raw = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in raw:
        i = raw.index("--")
        raw, command = raw[:i], raw[i + 1 :]
    p = argparse.ArgumentParser(prog="kvpilot-launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default=os.environ.get("KVPILOT_LAUNCH_MODE", "vllm"))
    p.add_argument(
        "--python",
        default=os.environ.get("KVPILOT_VLLM_PYTHON"),
        help="interpreter for vLLM (default: this one); the simulator always uses this one",
    )
    p.add_argument("--pod-spec", type=Path, help="Pod, Deployment or PodSpec JSON ('-' for stdin)")
    p.add_argument("--container", default="vllm")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--sim-arg", action="append", default=[], help="extra simulator argument")
    p.add_argument("--dry-run", action="store_true", help="print the exec as JSON instead")
    args = p.parse_args(raw)
    try:
        if args.pod_spec is not None:
            text = sys.stdin.read() if str(args.pod_spec) == "-" else args.pod_spec.read_text()
            container = container_from_spec(json.loads(text), args.container)
            if command:
                container = Container(tuple(command), container.env)
        elif command:
            container = Container(tuple(command), {})
        else:
            p.error("give the container's command after --, or --pod-spec")
        python = sys.executable if args.mode == "sim" else (args.python or sys.executable)
        plan = plan_launch(
            container,
            mode=args.mode,
            python=python,
            host=args.host,
            port=args.port,
            sim_args=args.sim_arg,
        )
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        log.error("Cannot launch: %s", exc)
        return 2
    if args.dry_run:
        print(json.dumps({"argv": list(plan.argv), "env": dict(plan.env)}))
        return 0
    log.info("Exec %s", " ".join(redact(plan.argv)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(plan.program, list(plan.argv), {**os.environ, **plan.env})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
