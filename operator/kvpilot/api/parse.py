"""Parse at the edge: raw dicts from the API server into frozen models, errors with field paths.

Parsing is strict about types (as the API server is): `"4"` is not an integer and
`"yes"` is not a boolean, so a spec that reaches the operator unvalidated (an old CRD,
a test) is judged exactly as admission would judge it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import ErrorDetails

from kvpilot.api.base import KvModel, SpecRuleError
from kvpilot.api.spec import InferenceServiceSpec
from kvpilot.api.status import InferenceServiceStatus

M = TypeVar("M", bound=BaseModel)


class InvalidObjectError(ValueError):
    """An object failed validation; `problems` lists (field path, message) pairs."""

    def __init__(self, what: str, problems: Sequence[tuple[str, str]]) -> None:
        self.what = what
        self.problems = tuple(problems)
        detail = "; ".join(f"{path}: {msg}" for path, msg in self.problems)
        super().__init__(f"invalid {what}: {detail}")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.problems)


class InferenceService(KvModel):
    """An InferenceService as the operator works with it: identity plus parsed spec."""

    name: str = Field(description="metadata.name")
    namespace: str = Field(description="metadata.namespace")
    uid: str = Field(description="metadata.uid (for owner references)")
    generation: int | None = Field(None, description="metadata.generation")
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None

    @property
    def served_name(self) -> str:
        return self.spec.model.served_name or self.name


def _format_path(root: str, loc: Sequence[int | str]) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _problem(root: str, err: ErrorDetails) -> tuple[str, str]:
    loc: list[int | str] = list(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    message = err["msg"]
    if isinstance(cause, SpecRuleError):
        loc += list(cause.field_path)
        message = str(cause)
    elif isinstance(cause, ValueError):
        message = str(cause)
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    return _format_path(root, loc), message


def _plain(data: object) -> object:
    """Plain JSON types from any Mapping/Sequence views (kopf hands over its own)."""
    if isinstance(data, Mapping):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return [_plain(v) for v in data]
    return data


def _validate(model: type[M], data: object, root: str, what: str) -> M:
    try:
        return model.model_validate_json(json.dumps(_plain(data)), strict=True)
    except ValidationError as err:
        raise InvalidObjectError(what, [_problem(root, e) for e in err.errors()]) from None
    except (TypeError, ValueError) as err:  # not JSON-serialisable input
        raise InvalidObjectError(what, [(root, str(err))]) from None


def parse_spec(spec: Mapping[str, Any]) -> InferenceServiceSpec:
    """Validate `.spec` of an InferenceService; `InvalidObjectError` names every bad field."""
    return _validate(InferenceServiceSpec, spec, "spec", "InferenceService spec")


def parse_status(status: Mapping[str, Any] | None) -> InferenceServiceStatus:
    """Validate `.status`; an absent status is an empty one."""
    return _validate(InferenceServiceStatus, status or {}, "status", "InferenceService status")


def parse_inference_service(body: Mapping[str, Any]) -> InferenceService:
    """Parse a whole InferenceService object (as kopf or the API hands it over).

    Only identity and spec can make it invalid: a status the models cannot read (written
    by another version) is dropped to None rather than blocking reconciliation.
    """
    meta = body.get("metadata") or {}
    missing = [k for k in ("name", "namespace", "uid") if not meta.get(k)]
    if missing:
        raise InvalidObjectError(
            "InferenceService", [(f"metadata.{k}", "required") for k in missing]
        )
    spec = parse_spec(body.get("spec") or {})
    try:
        status = parse_status(body["status"]) if body.get("status") else None
    except InvalidObjectError:
        status = None
    return InferenceService(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=meta.get("generation"),
        spec=spec,
        status=status,
    )


def dump(model: BaseModel, *, exclude_none: bool = True) -> dict[str, Any]:
    """A model as the API expects it: camelCase keys, JSON types, unset optionals left out."""
    result: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)
    return result
