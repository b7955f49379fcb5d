"""Pure helpers on Kubernetes objects as plain dicts."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

#: Keys whose string values are resource quantities, which the API server canonicalises
#: ("1000m" is stored as "1", "1e3" as "1k").
_QUANTITY_PARENTS = frozenset({"requests", "limits", "capacity", "allocatable", "hard"})
_QUANTITY_KEYS = frozenset({"sizeLimit", "storage"})
_SUFFIX = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse_quantity(value: str) -> Decimal | None:
    """A Kubernetes quantity as a number (None when it is not one)."""
    m = _QUANTITY.match(value.strip())
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        return None


def _empty(value: Any) -> bool:
    """Values the API server drops from a stored object (omitempty): "", false, [], {}."""
    return value is None or value is False or value in ("", [], {})


def contains(live: Any, desired: Any, *, _quantity: bool = False) -> bool:
    """True when every field of ``desired`` is present with the same value in ``live``.

    The API server adds defaults (and other managers add fields), so an object
    we own is up to date when what we would apply is a subset of what is there.
    Lists must match in length and element-wise. What the server normalises is
    compared as it normalises it: quantities by value, and empty values ("", false,
    [], {}), which it drops, equal to absent.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        for k, v in desired.items():
            if k not in live:
                if _empty(v):
                    continue
                return False
            quantity = k in _QUANTITY_KEYS or (_quantity and isinstance(v, str | int | float))
            if not contains(live[k], v, _quantity=quantity or k in _QUANTITY_PARENTS):
                return False
        return True
    if isinstance(desired, Sequence) and not isinstance(desired, str | bytes):
        if not isinstance(live, Sequence) or isinstance(live, str | bytes):
            return False
        return len(live) == len(desired) and all(
            contains(lv, dv) for lv, dv in zip(live, desired, strict=True)
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(desired) == float(live)
    if desired == live:
        return True
    if _quantity and isinstance(desired, str | int | float) and isinstance(live, str | int | float):
        a, b = parse_quantity(str(desired)), parse_quantity(str(live))
        return a is not None and a == b
    return False


def object_ref(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` for log lines and events."""
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')}/{ns + '/' if ns else ''}{name}"


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that turns ``old`` into ``new`` for ``new``'s keys.

    Nested keys that ``old`` has and ``new`` lacks are set to null, since a merge
    patch otherwise keeps them; top-level keys absent from ``new`` are left alone.
    """
    out: dict[str, Any] = {}
    old = old or {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            for gone in before.keys() - value.keys():
                nested[gone] = None
            out[key] = nested
        else:
            out[key] = value
    return out
