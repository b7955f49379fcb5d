"""Status conditions (Kubernetes API conventions), computed purely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    """A condition as the controller decides it, without its transition time."""

    type: str
    status: Status
    reason: str
    message: str


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Iterable[Condition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """New condition list; ``lastTransitionTime`` moves only when the status flips.

    Conditions not decided this time are kept as they were, so a partial
    reconcile never drops what another part of the controller reported.
    """
    old = {str(c.get("type")): dict(c) for c in previous or []}
    out: dict[str, dict[str, Any]] = dict(old)
    for c in current:
        before = old.get(c.type)
        changed = before is None or before.get("status") != c.status
        out[c.type] = {
            "type": c.type,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "observedGeneration": generation,
            "lastTransitionTime": now
            if changed or before is None
            else before.get("lastTransitionTime", now),
        }
    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(out.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))


CONDITION_ORDER = ("Ready", "Placed", "Progressing", "Degraded", "ScalingActive")


def find(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == ctype:
            return c
    return None
