"""The extraArgs policy (kvpilot.api.security) checked against real vLLM's parser.

- Hostile spellings the policy refuses really do set the flag in vLLM (underscores,
  abbreviations, glued short values, `=` forms): the normalisation is needed.
- No flag of vLLM's own is refused as if it were an abbreviation: a refused flag is
  listed exactly or belongs to a listed family.
- Every listed flag exists in vLLM, so the lists do not go stale silently.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvpilot.api import InvalidObjectError, parse_spec
from kvpilot.api.security import (
    DERIVED_FLAGS,
    FLAG_FAMILIES,
    OPT_IN_FLAGS,
    UNSAFE_FLAGS,
    flag_matches,
    flag_name,
)

pytestmark = pytest.mark.vllm

LISTED = (*DERIVED_FLAGS, *OPT_IN_FLAGS, *UNSAFE_FLAGS)
# (extraArgs, the parser destination they change, its value then)
SPELLINGS: list[tuple[list[str], str, Any]] = [
    (["--tensor_parallel_size=3"], "tensor_parallel_size", 3),
    (["--tensor-para", "2"], "tensor_parallel_size", 2),
    (["-tp=2"], "tensor_parallel_size", 2),
    (["--pipeline_parallel_size", "2"], "pipeline_parallel_size", 2),
    (["-qawq"], "quantization", "awq"),
    (["--trust-rem"], "trust_remote_code", True),
    (["--trust_remote_code"], "trust_remote_code", True),
    (["--api-k", "secret"], "api_key", ["secret"]),
    (["--max_model_len=4096"], "max_model_len", 4096),
    (["--ssl_keyfile=/etc/shadow"], "ssl_keyfile", "/etc/shadow"),
    (["--midd", "os.system"], "middleware", ["os.system"]),
]

SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
parser = make_arg_parser(FlexibleArgumentParser())
out = {"options": sorted(parser._option_string_actions), "parsed": []}
for argv, dest in json.loads(sys.stdin.read()):
    try:
        ns = parser.parse_args(["--model", "m", *argv])
        out["parsed"].append({"ok": True, "value": getattr(ns, dest)})
    except SystemExit as exc:
        out["parsed"].append({"ok": False, "error": f"exit {exc.code}"})
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def vllm(vllm_python_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(vllm_python_path), "-c", SCRIPT],
        input=json.dumps([[argv, dest] for argv, dest, _ in SPELLINGS]),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"parser script failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


@pytest.mark.parametrize(("index", "argv"), list(enumerate(s[0] for s in SPELLINGS)), ids=str)
def test_spelling_sets_the_flag_in_vllm_and_is_refused(
    vllm: dict[str, Any], index: int, argv: list[str]
) -> None:
    value = SPELLINGS[index][2]
    parsed = vllm["parsed"][index]
    assert parsed == {"ok": True, "value": value}, (argv, parsed)
    with pytest.raises(InvalidObjectError) as err:
        parse_spec({"model": {"source": "hf://org/m"}, "runtime": {"extraArgs": argv}})
    assert err.value.paths == ("spec.runtime.extraArgs",)


def test_no_vllm_flag_is_refused_as_an_abbreviation(vllm: dict[str, Any]) -> None:
    wrongly = []
    for option in vllm["options"]:
        name = flag_name(option)
        assert name is not None
        hits = [e for e in LISTED if flag_matches(name, e)]
        if hits and not any(name == e or (e in FLAG_FAMILIES and name.startswith(e)) for e in hits):
            wrongly.append((option, hits))
    assert not wrongly


def test_every_listed_flag_exists_in_vllm(vllm: dict[str, Any]) -> None:
    options = vllm["options"]
    missing = [e for e in LISTED if not any(o == e or o.startswith(e) for o in options)]
    assert not missing
