"""Pure helpers on Kubernetes objects as plain dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def contains(live: Any, desired: Any) -> bool:
    """True when every field of ``desired`` is present with the same value in ``live``.

    The API server adds defaults (and other managers add fields), so an object
    we own is up to date when what we would apply is a subset of what is there.
    Lists must match in length and element-wise.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(k in live and contains(live[k], v) for k, v in desired.items())
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
    return bool(desired == live)


def object_ref(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` for log lines and events."""
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')}/{ns + '/' if ns else ''}{name}"
