"""What the API refuses so that a spec cannot turn a vLLM pod against its cluster.

Each policy is one list here, rendered twice: as CEL in the CRD (admission) and as a
Python check (specs built in code or read under an older CRD). docs/security.md states
the policy for users. Values a user cannot see in the pod (Secret contents) are never
needed: credentials arrive by `secretKeyRef` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from kvpilot.api.base import CelRule

# --- model sources --------------------------------------------------------------------

# Control, zero-width and bidirectional-formatting characters: invisible in `kubectl get`
# output, so a source could read differently from what vLLM loads.
_INVISIBLE_RE2: Final = (
    r"[\x00-\x1f\x7f-\x{9f}\x{200b}-\x{200f}\x{202a}-\x{202e}\x{2060}-\x{2069}\x{feff}]"
)
INVISIBLE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# A "." or ".." path segment: pvc://claim/../../etc would leave the mounted claim.
_DOT_SEGMENT: Final = r"(^|/)\.\.?(/|$)"
DOT_SEGMENT: Final = re.compile(_DOT_SEGMENT)
# Query strings, fragments and user info carry credentials (presigned S3 URLs, user:pass@).
_URL_EXTRAS: Final = r"[?#@]"
URL_EXTRAS: Final = re.compile(_URL_EXTRAS)

SOURCE_INVISIBLE = CelRule(
    rule=f"!self.matches(r'{_INVISIBLE_RE2}')",
    message="source must not contain control, zero-width or bidirectional-formatting characters",
)
SOURCE_TRAVERSAL = CelRule(
    rule=f"!self.matches(r'{_DOT_SEGMENT}')",
    message='source must not contain "." or ".." path segments: '
    "the path stays inside the claim or bucket",
)
SOURCE_CREDENTIALS = CelRule(
    rule=f"!self.matches(r'{_URL_EXTRAS}')",
    message="source must not carry a query string, fragment or user info: credentials "
    "belong in a Secret (spec.runtime.env[].valueFrom.secretKeyRef)",
)


def source_problem(source: str) -> CelRule | None:
    """The first source rule `source` breaks, in the order a reader would fix them."""
    if INVISIBLE.search(source):
        return SOURCE_INVISIBLE
    if DOT_SEGMENT.search(source):
        return SOURCE_TRAVERSAL
    if URL_EXTRAS.search(source):
        return SOURCE_CREDENTIALS
    return None


# --- secrets written as literals ------------------------------------------------------

# Variable names that hold credentials by convention (HF_TOKEN, AWS_SECRET_ACCESS_KEY,
# AWS_ACCESS_KEY_ID, WANDB_API_KEY, DB_PASSWORD, ...). TOKENIZERS_PARALLELISM is no match.
_SECRET_NAME: Final = (
    r"(?i)(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|APIKEY|API_KEY|ACCESS_KEY|"
    r"PRIVATE_KEY)(_|$)"
)
SECRET_NAME: Final = re.compile(_SECRET_NAME)
# Values that are credentials whatever they are called: Hugging Face, AWS, OpenAI-style,
# GitHub and Slack tokens, PEM private keys.
_SECRET_VALUE: Final = (
    r"(hf_[A-Za-z0-9]{30,}|(AKIA|ASIA)[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{20,}|"
    r"gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY)"
)
SECRET_VALUE: Final = re.compile(_SECRET_VALUE)


# --- vLLM engine flags in spec.runtime.extraArgs --------------------------------------

# Flags kvpilot renders from spec fields (placement, memory planning and networking
# depend on them), with the field to use instead.
DERIVED_FLAGS: Final = (
    "--model",
    "--served-model-name",
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "-pp",
    "--data-parallel",  # and every --data-parallel-* flag
    "-dp",  # and -dpl, -dpa, ...
    "--prefill-context-parallel-size",  # multiplies the GPUs of a replica
    "-pcp",
    "--nnodes",  # multi-node replicas: placement is per node
    "-n",
    "--node-rank",
    "-r",
    "--master-addr",
    "--master-port",
    "--quantization",
    "-q",
    "--quantization-config",
    "--dtype",
    "--kv-cache-dtype",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--host",
    "--port",
    "--uds",
    "--headless",
)
# Flags that run code from the model repository or hold a secret: each has a field.
OPT_IN_FLAGS: Final = {
    "--trust-remote-code": "spec.runtime.trustRemoteCode",
    "--api-key": "spec.runtime.apiKeySecretRef",
    "--hf-token": "spec.runtime.hfTokenSecretRef",
}
# Flags that import Python code, read files of the container, or change how the server
# listens (TLS would also break the health probes). Refused outright.
UNSAFE_FLAGS: Final = (
    "--middleware",
    "--ssl-",  # --ssl-keyfile, --ssl-certfile, --ssl-ca-certs, --ssl-cert-reqs
    "--enable-ssl-refresh",
    "--tool-parser-plugin",
    "--reasoning-parser-plugin",
    "--logits-processors",
    "--worker-cls",
    "--worker-extension-cls",
    "--scheduler-cls",
    "--distributed-executor-backend",
    "--kv-transfer-config",
    "--ec-transfer-config",
    "--model-class-overrides",
    "--logging-config",
    "--allowed-local-media-path",
    "--log-config-file",
    "--config",
)
# Entries that stand for a family of flags: every flag starting with them matches.
FLAG_FAMILIES: Final = frozenset({"--data-parallel", "-dp", "--ssl-"})
# vLLM flags of their own that are also prefixes of a listed flag (not abbreviations).
OWN_FLAGS: Final = ("--reasoning-parser",)

_WHITESPACE: Final = r"[\t\n\f\r ]"
WHITESPACE: Final = re.compile(_WHITESPACE)


def flag_name(arg: str) -> str | None:
    """The flag an extraArgs item spells, normalised as vLLM's parser reads it.

    `--tensor_parallel_size=3` -> `--tensor-parallel-size`, `--compilation-config.level`
    -> `--compilation-config`; None for a value (an item not starting with `-`).
    """
    if not arg.startswith("-"):
        return None
    name = arg.split("=", maxsplit=1)[0].split(" ", maxsplit=1)[0].split(".", maxsplit=1)[0]
    return name.replace("_", "-")


def flag_matches(name: str, entry: str) -> bool:
    """Whether the normalised flag `name` selects `entry` for argparse.

    argparse takes any prefix of a flag as the flag (`--trust` is `--trust-remote-code`
    when unambiguous; an ambiguous prefix is an error, so refusing it costs nothing), and
    a two-character flag takes its value glued on (`-qawq` is `-q awq`).
    """
    if name in OWN_FLAGS:
        return False
    return entry.startswith(name) or (
        (entry in FLAG_FAMILIES or len(entry) == 2) and name.startswith(entry)
    )


def _flag_rule(entries: Iterable[str], message: str) -> CelRule:
    listed = ", ".join(f"'{e}'" for e in entries)
    families = ", ".join(f"'{e}'" for e in sorted(FLAG_FAMILIES))
    own = ", ".join(f"'{e}'" for e in OWN_FLAGS)
    name = "a.split('=')[0].split(' ')[0].split('.')[0].replace('_', '-')"
    return CelRule(
        # [x].all(n, ...) binds n to x: CRD validation has no cel.bind.
        rule=f"self.all(a, !a.startsWith('-') || [{name}].all(n, n in [{own}] || ![{listed}]"
        f".exists(f, f.startsWith(n) || ((f in [{families}] || size(f) == 2) && "
        "n.startsWith(f)))))",
        message=message,
    )


EXTRA_ARGS_CHARACTERS = CelRule(
    rule=f"self.all(a, !a.matches(r'{_INVISIBLE_RE2}'))",
    message="extraArgs must not contain control, zero-width or bidirectional-formatting characters",
)
EXTRA_ARGS_ONE_FLAG = CelRule(
    rule=f"self.all(a, !a.startsWith('-') || !a.split('=')[0].matches(r'{_WHITESPACE}'))",
    message='extraArgs: write a flag and its value as two items ("--flag", "value") or as '
    'one "--flag=value"',
)
EXTRA_ARGS_DERIVED = _flag_rule(
    DERIVED_FLAGS,
    "extraArgs must not set --model, --served-model-name, --tensor-parallel-size, "
    "--pipeline-parallel-size, --data-parallel-*, --prefill-context-parallel-size, --nnodes, "
    "--node-rank, --master-addr, --master-port, --quantization, --quantization-config, "
    "--dtype, --kv-cache-dtype, --max-model-len, --gpu-memory-utilization, --host, --port, "
    "--uds or --headless, in any spelling or abbreviation: kvpilot derives them from "
    "spec.model, spec.parallelism and spec.runtime",
)
EXTRA_ARGS_OPT_IN = _flag_rule(
    OPT_IN_FLAGS,
    "extraArgs must not set --trust-remote-code, --api-key or --hf-token: use "
    "spec.runtime.trustRemoteCode, spec.runtime.apiKeySecretRef or "
    "spec.runtime.hfTokenSecretRef (secrets stay in a Secret)",
)
EXTRA_ARGS_UNSAFE = _flag_rule(
    UNSAFE_FLAGS,
    "extraArgs must not set --middleware, --ssl-*, --tool-parser-plugin, "
    "--reasoning-parser-plugin, --logits-processors, --worker-cls, --worker-extension-cls, "
    "--scheduler-cls, --distributed-executor-backend, --kv-transfer-config, "
    "--ec-transfer-config, --model-class-overrides, --logging-config, "
    "--allowed-local-media-path, --log-config-file or --config: they load code or files "
    "from the container (see docs/security.md)",
)
EXTRA_ARGS_SECRET = CelRule(
    rule=f"self.all(a, !a.matches(r'{_SECRET_VALUE}'))",
    message="extraArgs must not contain credentials (a Hugging Face, AWS or API token, or a "
    "private key): pass them by Secret reference",
)


def extra_args_problem(args: Iterable[str]) -> tuple[CelRule, str] | None:
    """The first extraArgs rule broken, with the item that breaks it."""
    for arg in args:
        if INVISIBLE.search(arg):
            return EXTRA_ARGS_CHARACTERS, arg
        if SECRET_VALUE.search(arg):
            return EXTRA_ARGS_SECRET, arg
        name = flag_name(arg)
        if name is None:
            continue
        if WHITESPACE.search(arg.split("=")[0]):
            return EXTRA_ARGS_ONE_FLAG, arg
        for entries, rule in (
            (DERIVED_FLAGS, EXTRA_ARGS_DERIVED),
            (tuple(OPT_IN_FLAGS), EXTRA_ARGS_OPT_IN),
            (UNSAFE_FLAGS, EXTRA_ARGS_UNSAFE),
        ):
            if any(flag_matches(name, e) for e in entries):
                return rule, arg
    return None


# --- environment variables --------------------------------------------------------------

# Set from dedicated fields, so a literal cannot replace the Secret reference.
FIELD_ENV: Final = {
    "HF_TOKEN": "spec.runtime.hfTokenSecretRef",
    "VLLM_API_KEY": "spec.runtime.apiKeySecretRef",
}
# Variables that make the dynamic loader, Python or vLLM load code or config from
# elsewhere (a writable volume, the model claim): refused. LD_* is refused as a family.
CODE_LOADING_ENV: Final = (
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "PYTHONPLATLIBDIR",
    "PYTHONPYCACHEPREFIX",
    "BASH_ENV",
    "ENV",
    "GCONV_PATH",
    "VLLM_LOGGING_CONFIG_PATH",
)
CODE_LOADING_ENV_PREFIX: Final = "LD_"

_env_fields = ", ".join(f"'{n}'" for n in FIELD_ENV)
_env_denied = ", ".join(f"'{n}'" for n in CODE_LOADING_ENV)
ENV_ONE_SOURCE = CelRule(
    rule="!(has(self.value) && has(self.valueFrom))",
    message="set value or valueFrom, not both",
    field_path=".valueFrom",
)
ENV_FROM_FIELD = CelRule(
    rule=f"!(self.name in [{_env_fields}])",
    message="HF_TOKEN is set from spec.runtime.hfTokenSecretRef and VLLM_API_KEY from "
    "spec.runtime.apiKeySecretRef",
    field_path=".name",
)
ENV_CODE_LOADING = CelRule(
    rule=f"!(self.name in [{_env_denied}] || self.name.startsWith('{CODE_LOADING_ENV_PREFIX}'))",
    message="LD_*, PATH, PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONUSERBASE, "
    "PYTHONEXECUTABLE, PYTHONWARNINGS, PYTHONBREAKPOINT, PYTHONPLATLIBDIR, "
    "PYTHONPYCACHEPREFIX, BASH_ENV, ENV, GCONV_PATH and VLLM_LOGGING_CONFIG_PATH are "
    "refused: they make the container load code from elsewhere",
    field_path=".name",
)
ENV_SECRET_NAME = CelRule(
    rule=f"!has(self.value) || !self.name.matches(r'{_SECRET_NAME}')",
    message="a variable named like a credential (*TOKEN*, *SECRET*, *PASSWORD*, *API_KEY*, "
    "*ACCESS_KEY*, ...) must come from a Secret: valueFrom.secretKeyRef",
    field_path=".value",
)
ENV_SECRET_VALUE = CelRule(
    rule=f"!has(self.value) || !self.value.matches(r'{_SECRET_VALUE}')",
    message="value looks like a credential (a Hugging Face, AWS or API token, or a private "
    "key): use valueFrom.secretKeyRef",
    field_path=".value",
)


def env_problem(name: str, value: str | None, has_value_from: bool) -> CelRule | None:
    """The first environment rule a variable breaks."""
    if value is not None and has_value_from:
        return ENV_ONE_SOURCE
    if name in FIELD_ENV:
        return ENV_FROM_FIELD
    if name in CODE_LOADING_ENV or name.startswith(CODE_LOADING_ENV_PREFIX):
        return ENV_CODE_LOADING
    if value is not None and SECRET_NAME.search(name):
        return ENV_SECRET_NAME
    if value is not None and SECRET_VALUE.search(value):
        return ENV_SECRET_VALUE
    return None
