"""Shared building blocks of the API models: model config, CEL rules, quantities.

Every cross-field rule exists twice: as CEL in the CRD (the API server refuses bad
objects at admission) and as a Python check (objects built in code, or read from a
cluster whose CRD is older, are held to the same rules). Both share one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

# Kubernetes resource.Quantity, as controller-gen renders it into CRDs.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# RFC 1123 subdomain (names of Secrets, PersistentVolumeClaims).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 1035 label: the InferenceService name becomes a Service name and a label value.
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class KvModel(BaseModel):
    """Base of all API models: immutable, camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry; `field_path` points the error at a field."""

    rule: str
    message: str
    field_path: str | None = None

    def schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out


class SpecRuleError(ValueError):
    """A Python-side check of a `CelRule` failed; carries the field path for messages."""

    def __init__(self, rule: CelRule) -> None:
        super().__init__(rule.message)
        self.rule = rule

    @property
    def field_path(self) -> tuple[str, ...]:
        path = self.rule.field_path or ""
        return tuple(part for part in path.split(".") if part)


def check(ok: bool, rule: CelRule) -> None:
    """Raise `SpecRuleError` for `rule` unless `ok`."""
    if not ok:
        raise SpecRuleError(rule)


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """json_schema_extra that attaches CEL rules to a model or a field."""
    return {"x-kubernetes-validations": [r.schema() for r in rules]}


def _quantity_text(value: object) -> object:
    # YAML turns `cpu: 4` into an int; Kubernetes accepts both, the model keeps text.
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity (`8Gi`, `500m`, `4`), kept as its text."""


def sub_object(factory: type[KvModel], description: str) -> Any:
    """A nested object that is always present: defaulted to `{}` by the API server too,
    so the defaults of its own fields apply even when the user leaves it out."""
    return Field(
        default_factory=factory, description=description, json_schema_extra={"default": {}}
    )
