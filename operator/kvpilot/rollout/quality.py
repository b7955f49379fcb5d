"""The quality gate: do the canary's greedy answers match the stable revision's?

A quantized variant (or a new revision) can serve fast and error-free and still
answer differently. Before a canary takes traffic, the operator sends one fixed
prompt set with greedy decoding to a stable and a canary replica and compares
the answers here:

* **token agreement**: the share of generated positions where both chose the
  same token. Only the common prefix counts as agreement: after the first
  mismatch the two continuations are conditioned on different text, so a
  later coincidental match says nothing. Positions are counted up to the
  longer answer, so an answer that stops early (or runs on) disagrees on the
  positions the other one has.
* **log-probability divergence**: the mean absolute difference of the chosen
  tokens' log-probabilities over the common prefix (same context, same
  token), where both engines returned them; None otherwise.

Pure: the HTTP side is ``kvpilot.controller.quality``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

#: Short, varied prompts; fixed so that two runs of the gate are comparable.
DEFAULT_PROMPTS: Final[tuple[str, ...]] = (
    "The capital of France is",
    "def fibonacci(n):",
    "Translate to German: good morning, how are you?",
    "The three primary colours are",
    "Water boils at a temperature of",
    "Q: What is 17 times 3?\nA:",
    "Once upon a time, in a small village,",
    "The model serves tokens from the cache",
)

QualityReason = Literal["QualityGatePassed", "TokenAgreementLow", "LogprobDivergenceHigh"]


@dataclass(frozen=True)
class QualityGateConfig:
    """What to send and the thresholds (``spec.rollout.qualityGate``, snake_case)."""

    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_tokens: int = 16
    min_token_agreement: float = 0.9
    #: None turns the log-probability check off (agreement alone decides).
    max_logprob_divergence: float | None = 0.5

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("the quality gate needs at least one prompt")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0.0 <= self.min_token_agreement <= 1.0:
            raise ValueError("min_token_agreement must be within [0, 1]")
        if self.max_logprob_divergence is not None and self.max_logprob_divergence < 0:
            raise ValueError("max_logprob_divergence must not be negative")


@dataclass(frozen=True)
class Completion:
    """One greedy answer: its tokens and, where the engine returned them, their log-probs."""

    tokens: tuple[str, ...]
    logprobs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.logprobs is not None and len(self.logprobs) != len(self.tokens):
            raise ValueError(
                f"{len(self.logprobs)} log-probabilities for {len(self.tokens)} tokens"
            )


@dataclass(frozen=True)
class QualityResult:
    """The gate's verdict with the figures behind it."""

    passed: bool
    token_agreement: float
    logprob_divergence: float | None
    reason: QualityReason
    message: str
    prompts: int
    positions: int


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def compare(
    stable: Sequence[Completion], canary: Sequence[Completion], cfg: QualityGateConfig
) -> QualityResult:
    """Compares the answers to the same prompts, in order, against ``cfg``'s thresholds."""
    if len(stable) != len(canary):
        raise ValueError(f"{len(stable)} stable answers but {len(canary)} canary answers")
    matched = positions = 0
    diffs: list[float] = []
    for s, c in zip(stable, canary, strict=True):
        prefix = common_prefix(s.tokens, c.tokens)
        matched += prefix
        positions += max(len(s.tokens), len(c.tokens))
        if s.logprobs is not None and c.logprobs is not None:
            pairs = zip(s.logprobs[:prefix], c.logprobs[:prefix], strict=True)
            diffs.extend(abs(x - y) for x, y in pairs)
    # Two engines that both answered nothing at all agree.
    agreement = matched / positions if positions else 1.0
    divergence = sum(diffs) / len(diffs) if diffs else None

    figures = f"token agreement {agreement:.3f} over {positions} positions of {len(stable)} prompts"
    figures += (
        f", log-prob divergence {divergence:.3f}"
        if divergence is not None
        else ", no log-probabilities to compare"
    )
    reason: QualityReason
    if agreement < cfg.min_token_agreement:
        reason, passed = "TokenAgreementLow", False
        message = f"{figures}: agreement below {cfg.min_token_agreement:g}"
    elif (
        divergence is not None
        and cfg.max_logprob_divergence is not None
        and divergence > cfg.max_logprob_divergence
    ):
        reason, passed = "LogprobDivergenceHigh", False
        message = f"{figures}: divergence above {cfg.max_logprob_divergence:g}"
    else:
        reason, passed = "QualityGatePassed", True
        message = figures
    return QualityResult(
        passed=passed,
        token_agreement=agreement,
        logprob_divergence=divergence,
        reason=reason,
        message=message,
        prompts=len(stable),
        positions=positions,
    )
