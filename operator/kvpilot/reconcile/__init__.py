"""The pure core of reconciliation: the pool plan, one service's plan, its status.

Nothing in this package talks to the API server; the controller gathers
observations, calls these functions and executes what they return.
"""

from kvpilot.reconcile.plan import (
    CHILD_KINDS,
    Event,
    Observation,
    ReconcilePlan,
    plan_reconcile,
)
from kvpilot.reconcile.pool import Pool, plan_pool, service_key
from kvpilot.reconcile.status import (
    Observed,
    autoscaler_status,
    compute_status,
    placement_status,
    policy_config,
    scaling_condition,
    serving_conditions,
    status_changed,
)

__all__ = [
    "CHILD_KINDS",
    "Event",
    "Observation",
    "Observed",
    "Pool",
    "ReconcilePlan",
    "autoscaler_status",
    "compute_status",
    "placement_status",
    "plan_pool",
    "plan_reconcile",
    "policy_config",
    "scaling_condition",
    "service_key",
    "serving_conditions",
    "status_changed",
]
