"""The reason text of a decision: what it does, on which signal, and what held it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvpilot.autoscaling.policy.contract import Constraint


@dataclass(frozen=True)
class Hold:
    """A constraint that shaped the desired replicas, with its note for the reason."""

    constraint: Constraint
    note: str | None = None


def headline(spec: int, desired: int) -> str:
    if desired > spec:
        return f"scaling up {spec} -> {desired}"
    if desired < spec:
        return f"scaling down {spec} -> {desired}"
    return f"holding {spec}"


def reason_text(spec: int, desired: int, explanation: str, holds: Sequence[Hold]) -> str:
    """``<headline>: <explanation>; <note>; <note>`` in the order the holds applied."""
    text = f"{headline(spec, desired)}: {explanation}"
    notes = [h.note for h in holds if h.note]
    if notes:
        text += "; " + "; ".join(notes)
    return text
