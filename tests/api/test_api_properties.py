"""Properties of spec parsing and rendering, over generated specs (hypothesis).

- Any spec the models accept renders vLLM arguments that parse back to the spec's values,
  with the user's extraArgs after kvpilot's and unable to override them.
- Any input at all either parses or raises InvalidObjectError naming spec fields: never
  another exception, and nothing hostile survives into the rendered arguments.
- Every spelling of a refused flag (underscores, abbreviations, glued values, dotted
  keys) is refused.
"""

from __future__ import annotations

import argparse
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpilot.api import InvalidObjectError, dump, parse_spec
from kvpilot.api.parse import InferenceService
from kvpilot.api.security import (
    DERIVED_FLAGS,
    INVISIBLE,
    OPT_IN_FLAGS,
    OWN_FLAGS,
    UNSAFE_FLAGS,
    flag_matches,
    flag_name,
)
from kvpilot.resources import RenderPlan, build_deployment, vllm_args

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DENIED = (*DERIVED_FLAGS, *OPT_IN_FLAGS, *UNSAFE_FLAGS)

segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,12}", fullmatch=True)
claim = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
bucket = st.from_regex(r"[a-z0-9][a-z0-9-]{1,10}[a-z0-9]", fullmatch=True)
path = st.lists(segment, max_size=3).map(lambda parts: "".join(f"/{p}" for p in parts))
hf_part = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True).filter(
    lambda s: ".." not in s
)
sources = st.one_of(
    st.builds(lambda o, n: f"hf://{o}/{n}", hf_part, hf_part),
    st.builds(lambda c, p: f"pvc://{c}{p}", claim, path),
    st.builds(lambda b, p: f"s3://{b}{p}", bucket, path),
)
# Engine flags kvpilot leaves to the user, with values.
safe_extra = st.lists(
    st.one_of(
        st.just(["--enforce-eager"]),
        st.just(["--disable-log-requests"]),
        st.integers(0, 2**31).map(lambda n: ["--seed", str(n)]),
        st.integers(1, 512).map(lambda n: [f"--max-num-seqs={n}"]),
        st.sampled_from(["auto", "slow"]).map(lambda m: ["--tokenizer-mode", m]),
    ),
    max_size=4,
).map(lambda groups: [a for g in groups for a in g])
served_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,20}", fullmatch=True)
env_name = st.from_regex(r"[A-Z][A-Z0-9]{0,8}", fullmatch=True).filter(
    lambda n: not n.startswith("LD") and n not in ("PATH", "ENV")
)
env_value = st.text(alphabet=string.ascii_letters + string.digits + "-_./:", max_size=20)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    quantization = draw(st.sampled_from(["none", "awq", "gptq", "fp8", "int8"]))
    dtypes = ["auto", "float16"] if quantization in ("awq", "gptq") else ["auto", "bfloat16"]
    model: dict[str, Any] = {
        "source": draw(sources),
        "quantization": quantization,
        "dtype": draw(st.sampled_from(dtypes)),
        "kvCacheDtype": draw(st.sampled_from(["auto", "fp8"])),
        "maxModelLen": draw(st.integers(128, 10_485_760)),
    }
    if draw(st.booleans()):
        model["servedName"] = draw(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,20}", fullmatch=True)
        )
    names = draw(st.lists(env_name, unique=True, max_size=3))
    runtime: dict[str, Any] = {
        "extraArgs": draw(safe_extra),
        "env": [{"name": n, "value": draw(env_value)} for n in names],
        "trustRemoteCode": draw(st.booleans()),
        "port": draw(st.integers(1, 65535)),
        "gpuMemoryUtilization": draw(st.floats(0.05, 1.0)),
    }
    if draw(st.booleans()):
        runtime["cpu"] = f"{draw(st.integers(1, 1024))}"
        runtime["memory"] = f"{draw(st.integers(1, 4096))}Gi"
    low = draw(st.integers(0, 10))
    return {
        "model": model,
        "runtime": runtime,
        "parallelism": {"tensor": draw(st.sampled_from(["auto", 1, 2, 4, 8]))},
        "scaling": {"minReplicas": low, "maxReplicas": max(1, low + draw(st.integers(0, 10)))},
    }


def rendered_parser() -> argparse.ArgumentParser:
    """The flags kvpilot renders, parsed strictly (no abbreviations)."""
    p = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    for flag in (
        "--model",
        "--served-model-name",
        "--tensor-parallel-size",
        "--quantization",
        "--dtype",
        "--kv-cache-dtype",
        "--max-model-len",
        "--gpu-memory-utilization",
        "--host",
        "--port",
        "--download-dir",
        "--revision",
        "--load-format",
    ):
        p.add_argument(flag)
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def service(spec: dict[str, Any]) -> InferenceService:
    return InferenceService(name="svc", namespace="ns", uid="u", spec=parse_spec(spec))


def plan(tp: int = 1) -> RenderPlan:
    return RenderPlan(
        tensor_parallel=tp, gpus_per_replica=tp, gpu_product="P", replicas=1, revision="r"
    )


@SETTINGS
@given(valid_specs())
def test_accepted_spec_renders_arguments_that_round_trip(raw: dict[str, Any]) -> None:
    isvc = service(raw)
    assert parse_spec(dump(isvc.spec)) == isvc.spec  # the model itself round-trips
    tp = raw["parallelism"]["tensor"] if raw["parallelism"]["tensor"] != "auto" else 2
    args = vllm_args(isvc, plan(tp))
    extra = list(isvc.spec.runtime.extra_args)
    own = args[: len(args) - len(extra)]
    assert args[len(own) :] == extra
    parsed = rendered_parser().parse_args(own)
    model = isvc.spec.model
    expected_model = model.source.removeprefix("hf://")
    if model.source.startswith("pvc://"):
        claim_path = model.source.removeprefix("pvc://").partition("/")[2]
        expected_model = "/model-source" + (f"/{claim_path}" if claim_path else "")
    assert parsed.model == expected_model
    assert ".." not in parsed.model.split("/")
    assert parsed.served_model_name == isvc.served_name
    assert int(parsed.tensor_parallel_size) == tp
    assert int(parsed.max_model_len) == model.max_model_len
    assert parsed.dtype == model.dtype
    assert int(parsed.port) == isvc.spec.runtime.port
    assert parsed.trust_remote_code == isvc.spec.runtime.trust_remote_code
    # The user's flags cannot restate anything kvpilot derives.
    for arg in extra:
        name = flag_name(arg)
        assert name is None or not any(flag_matches(name, f) for f in DENIED)


# Pieces of hostile strings: separators, traversal, invisible characters, flag prefixes.
hostile_text = st.lists(
    st.sampled_from(
        [*"-_=./ ?#@:aZ0", "\0", "\n", "\t", "\u202e", "\u200b", "..", "--", "hf_", "port"]
    ),
    max_size=20,
).map("".join)


@SETTINGS
@given(
    source=st.one_of(sources, hostile_text.map(lambda t: "pvc://models/" + t), hostile_text),
    served=st.one_of(st.none(), hostile_text),
    extra=st.lists(hostile_text, max_size=4),
    env=st.lists(st.tuples(hostile_text, hostile_text), max_size=3),
)
def test_any_input_parses_or_is_refused_cleanly(
    source: str, served: str | None, extra: list[str], env: list[tuple[str, str]]
) -> None:
    model: dict[str, Any] = {"source": source}
    if served is not None:
        model["servedName"] = served
    runtime = {"extraArgs": extra, "env": [{"name": n, "value": v} for n, v in env]}
    raw = {"model": model, "runtime": runtime}
    try:
        isvc = service(raw)
    except InvalidObjectError as err:
        assert err.problems
        assert all(path.startswith("spec.") for path in err.paths), err.problems
        return
    deployment = build_deployment(isvc, plan())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for arg in container["args"]:
        assert not INVISIBLE.search(arg), arg
    model_arg = container["args"][container["args"].index("--model") + 1]
    assert ".." not in model_arg.split("/")
    assert not any(c in model_arg for c in "?#@ ")


# A prefix that is itself a whole flag of vLLM's (`--reasoning-parser` of
# `--reasoning-parser-plugin`) is that flag, not an abbreviation.
abbreviations = (
    st.sampled_from([f for f in DENIED if f.startswith("--")])
    .flatmap(lambda f: st.integers(3, len(f)).map(lambda n: f[:n]))
    .filter(lambda f: f not in OWN_FLAGS)
)


@SETTINGS
@given(
    flag=st.one_of(st.sampled_from(DENIED), abbreviations),
    underscores=st.booleans(),
    tail=st.sampled_from(["", "=1", " 1", ".key=1", "=--enforce-eager"]),
    position=st.integers(0, 3),
)
def test_every_spelling_of_a_refused_flag_is_refused(
    flag: str, underscores: bool, tail: str, position: int
) -> None:
    spelled = (flag.replace("-", "_") if underscores else flag).replace("__", "--", 1)
    if spelled.startswith("_"):
        spelled = "-" + spelled[1:]
    if flag.startswith("-") and not flag.startswith("--"):
        spelled = flag  # short flags have no underscore spelling
    extra = ["--enforce-eager", "--seed", "1"]
    extra.insert(position, spelled + tail)
    raw = {"model": {"source": "hf://org/name"}, "runtime": {"extraArgs": extra}}
    try:
        parse_spec(raw)
    except InvalidObjectError as err:
        assert err.paths == ("spec.runtime.extraArgs",)
    else:
        raise AssertionError(f"accepted {spelled + tail!r}")
