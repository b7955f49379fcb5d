"""The quality gate's comparison: hand-checked cases, one table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvpilot.rollout.quality import (
    DEFAULT_PROMPTS,
    Completion,
    QualityGateConfig,
    common_prefix,
    compare,
)

DEFAULT = QualityGateConfig()


def c(text: str, logprobs: tuple[float, ...] | None = None) -> Completion:
    """A completion whose tokens are the characters of ``text``."""
    return Completion(tuple(text), logprobs)


@dataclass(frozen=True)
class Case:
    name: str
    stable: tuple[Completion, ...]
    canary: tuple[Completion, ...]
    agreement: float
    divergence: float | None
    reason: str
    cfg: QualityGateConfig = DEFAULT


CASES = [
    Case("identical", (c("abcd"), c("xy")), (c("abcd"), c("xy")), 1.0, None, "QualityGatePassed"),
    # 3 of 4 agree on the first prompt, 2 of 2 on the second: 5 of 6.
    Case(
        "last token differs",
        (c("abcd"), c("xy")),
        (c("abcX"), c("xy")),
        5 / 6,
        None,
        "TokenAgreementLow",
    ),
    # Prefix-aware: after the mismatch at position 1, the match at 2-3 does not count.
    Case("later match ignored", (c("abcd"),), (c("aXcd"),), 1 / 4, None, "TokenAgreementLow"),
    # The canary stops after 2 tokens: the stable one's other 2 positions disagree.
    Case("canary stops early", (c("abcd"),), (c("ab"),), 2 / 4, None, "TokenAgreementLow"),
    Case("canary runs on", (c("ab"),), (c("abcd"),), 2 / 4, None, "TokenAgreementLow"),
    Case("both empty", (c(""),), (c(""),), 1.0, None, "QualityGatePassed"),
    Case("one empty", (c(""),), (c("ab"),), 0.0, None, "TokenAgreementLow"),
    # Pooled over positions, not averaged per prompt: (0 + 9) / (1 + 9), not (0 + 1) / 2.
    Case(
        "pooled over positions",
        (c("a"), c("bbbbbbbbb")),
        (c("X"), c("bbbbbbbbb")),
        0.9,
        None,
        "QualityGatePassed",
    ),
    # Log-probabilities over the common prefix only: |(-1)-(-1.5)| and |(-2)-(-2)|.
    Case(
        "divergence over the prefix",
        (c("abc", (-1.0, -2.0, -3.0)),),
        (c("abX", (-1.5, -2.0, -9.0)),),
        2 / 3,
        0.25,
        "TokenAgreementLow",
    ),
    Case(
        "divergence too high",
        (c("ab", (-1.0, -1.0)),),
        (c("ab", (-2.0, -1.2)),),
        1.0,
        0.6,
        "LogprobDivergenceHigh",
    ),
    Case(
        "divergence check off",
        (c("ab", (-1.0, -1.0)),),
        (c("ab", (-2.0, -1.2)),),
        1.0,
        0.6,
        "QualityGatePassed",
        QualityGateConfig(max_logprob_divergence=None),
    ),
    # Only prompts where both engines returned log-probabilities count.
    Case(
        "one side without logprobs",
        (c("ab", (-1.0, -1.0)), c("cd")),
        (c("ab", (-1.1, -1.3)), c("cd", (-5.0, -5.0))),
        1.0,
        0.2,
        "QualityGatePassed",
    ),
    Case(
        "first token differs everywhere",
        (c("ab", (-1.0, -1.0)),),
        (c("Xb", (-1.0, -1.0)),),
        0.0,
        None,
        "TokenAgreementLow",
    ),
    Case(
        "threshold is inclusive",
        (c("abcd"), c("abcdef")),
        (c("abcd"), c("abcdeX")),
        0.9,
        None,
        "QualityGatePassed",
        QualityGateConfig(min_token_agreement=0.9),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_compare(case: Case) -> None:
    result = compare(case.stable, case.canary, case.cfg)
    assert result.token_agreement == pytest.approx(case.agreement)
    if case.divergence is None:
        assert result.logprob_divergence is None
    else:
        assert result.logprob_divergence == pytest.approx(case.divergence)
    assert result.reason == case.reason
    assert result.passed == (case.reason == "QualityGatePassed")
    assert result.prompts == len(case.stable)


def test_message_states_the_figures_and_the_threshold() -> None:
    result = compare((c("abcd", (-1.0,) * 4),), (c("aXcd", (-1.5,) * 4),), QualityGateConfig())
    assert result.message == (
        "token agreement 0.250 over 4 positions of 1 prompts, log-prob divergence 0.500: "
        "agreement below 0.9"
    )
    assert compare((c("ab"),), (c("ab"),), QualityGateConfig()).message == (
        "token agreement 1.000 over 2 positions of 1 prompts, no log-probabilities to compare"
    )


def test_common_prefix() -> None:
    assert [
        common_prefix(a, b) for a, b in [("", ""), ("ab", "ab"), ("ab", "abc"), ("ab", "b")]
    ] == [
        0,
        2,
        2,
        0,
    ]


@pytest.mark.parametrize(
    ("stable", "canary", "error"),
    [
        ((c("a"),), (), "1 stable answers but 0 canary answers"),
    ],
)
def test_compare_refuses_unpaired_answers(
    stable: tuple[Completion, ...], canary: tuple[Completion, ...], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        compare(stable, canary, QualityGateConfig())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prompts": ()}, "at least one prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_token_agreement": 1.5}, "min_token_agreement"),
        ({"max_logprob_divergence": -0.1}, "max_logprob_divergence"),
    ],
)
def test_config_refuses_nonsense(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        QualityGateConfig(**kwargs)  # type: ignore[arg-type]


def test_completion_refuses_mismatched_logprobs() -> None:
    with pytest.raises(ValueError, match="1 log-probabilities for 2 tokens"):
        Completion(("a", "b"), (-1.0,))


def test_default_prompts_are_distinct() -> None:
    assert len(set(DEFAULT_PROMPTS)) == len(DEFAULT_PROMPTS) >= 4
