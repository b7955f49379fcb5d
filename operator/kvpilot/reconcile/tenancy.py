"""What each namespace may claim of the shared GPU pool, set by the cluster's operator.

A service's author writes `spec.placement.priority`; the site's tenant policy caps it per
namespace (`maxPriority`) and bounds the GPUs a namespace's services may hold together
(`maxGPUs`), so one tenant cannot outrank or crowd out another by editing its own spec.
`kvpilot run --tenant-policy FILE` loads it:

    default: {maxPriority: 100}
    namespaces:
      prod: {maxPriority: 1000, maxGPUs: 64}
      research: {maxPriority: 10, maxGPUs: 16}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class TenantLimits(BaseModel):
    """Limits of one namespace (None: unlimited)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    max_priority: int | None = Field(None, alias="maxPriority", ge=0, le=1_000_000_000)
    max_gpus: int | None = Field(None, alias="maxGPUs", ge=0)


class TenantPolicy(BaseModel):
    """Limits by namespace; namespaces not listed get ``default``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    default: TenantLimits = TenantLimits()
    namespaces: dict[str, TenantLimits] = Field(default_factory=dict)

    def limits(self, namespace: str) -> TenantLimits:
        return self.namespaces.get(namespace, self.default)

    def priority(self, namespace: str, wanted: int) -> int:
        cap = self.limits(namespace).max_priority
        return wanted if cap is None else min(wanted, cap)

    @property
    def unlimited(self) -> bool:
        return self == TenantPolicy()


class TenantPolicyError(ValueError):
    """A tenant policy file that cannot be used, with the key at fault."""


def load_tenant_policy(text: str, source: str = "tenant policy") -> TenantPolicy:
    """Parse the YAML file; errors name the file and the key."""
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TenantPolicyError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise TenantPolicyError(f"{source}: expected a mapping with 'default' and 'namespaces'")
    try:
        return TenantPolicy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise TenantPolicyError(f"{source}: {problems}") from None
