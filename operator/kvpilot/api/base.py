"""Shared building blocks of the API models: model config, CEL rules, quantities.

Every cross-field rule exists twice: as CEL in the CRD (the API server refuses bad
objects at admission) and as a Python check (objects built in code, or read from a
cluster whose CRD is older, are held to the same rules). Both share one message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

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


# A resource size: no sign and no exponent (`-1` and `1e1000` are quantities to the API
# server, but no container can have them).
SIZE_PATTERN = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|[kMGTPE]|[KMGTPE]i)?$"
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000**i) for i, s in enumerate("kMGTPE", 1)},
    **{f"{s}i": Decimal(1024**i) for i, s in enumerate("KMGTPE", 1)},
}


def quantity_value(text: str) -> Decimal:
    """The value of a size written as SIZE_PATTERN allows (`8Gi` -> 8589934592)."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


def _size(maximum: str) -> Any:
    """A size type: SIZE_PATTERN, above zero and at most `maximum`, in CRD and model."""
    rule = CelRule(
        rule="!isQuantity(string(self)) || "
        f"(quantity(string(self)).compareTo(quantity('0')) > 0 && "
        f"quantity(string(self)).compareTo(quantity('{maximum}')) <= 0)",
        message=f"must be greater than 0 and at most {maximum}",
    )

    def bounded(value: str) -> str:
        check(Decimal(0) < quantity_value(value) <= quantity_value(maximum), rule)
        return value

    return Annotated[
        str,
        BeforeValidator(_quantity_text),
        Field(pattern=SIZE_PATTERN, max_length=64),
        AfterValidator(bounded),
        WithJsonSchema(
            {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": SIZE_PATTERN,
                "maxLength": 64,
                "x-kubernetes-int-or-string": True,
                **cel_rules(rule),
            }
        ),
    ]


if TYPE_CHECKING:
    CPUQuantity = str
    Quantity = str
else:
    CPUQuantity = _size("1024")
    """CPU cores (`4`, `500m`): above zero, at most 1024, no sign or exponent."""
    Quantity = _size("64Ti")
    """A memory or volume size (`8Gi`): above zero, at most 64Ti, no sign or exponent."""


def sub_object(factory: type[KvModel], description: str) -> Any:
    """A nested object that is always present: defaulted to `{}` by the API server too,
    so the defaults of its own fields apply even when the user leaves it out."""
    return Field(
        default_factory=factory, description=description, json_schema_extra={"default": {}}
    )
