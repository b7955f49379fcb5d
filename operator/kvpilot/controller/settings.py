"""The operator's settings: one frozen object made by `kvpilot run`, passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvpilot.autoscaling.policy import DEFAULT_POLICY, PolicyConfig
from kvpilot.autoscaling.prometheus import PromQLTemplates
from kvpilot.reconcile.tenancy import TenantPolicy


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one operator process."""

    namespaces: tuple[str, ...] = ()
    repair_interval: float = 30.0
    autoscale_interval: float = 15.0
    replan_debounce: float = 0.5
    workers: int = 16
    prometheus_url: str | None = None
    metrics_step: float = 15.0
    templates: PromQLTemplates = field(default_factory=PromQLTemplates)
    policy: PolicyConfig = DEFAULT_POLICY
    metrics_port: int = 8080
    health_port: int = 8081
    leader_election: bool = True
    lease_name: str = "kvpilot-operator"
    lease_namespace: str = "default"
    lease_duration: float = 15.0
    lease_renew: float = 2.0
    identity: str = ""
    #: schedulerName of kvpilot's pods (a bin-packing profile, Volcano, KAI...); None: default
    scheduler_name: str | None = None
    #: per-namespace caps on priority and GPUs (kvpilot run --tenant-policy)
    tenants: TenantPolicy = field(default_factory=TenantPolicy)
