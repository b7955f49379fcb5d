"""The autoscaling policy: per-replica vLLM signals over time -> desired replicas.

Pure: no I/O, no clock of its own (``PolicyInput.now`` is wall-clock epoch
seconds, the same clock as metric timestamps). Everything that must survive
between decisions (and operator restarts) is in `PolicyState`, which
round-trips through a small JSON-able dict kept in the InferenceService status.

The package follows the stages of a decision: ``config`` (knobs, the policy
file), ``state`` (what is remembered), ``contract`` (input and Decision),
``signals`` (samples -> window statistics, fail-static), ``recommend`` (per
signal, panic), ``stabilize`` (windows), ``limits`` (rate limits, bounds),
``reason`` (the text) and ``decision`` (``decide()`` composing them).

How one decision is made (docs/autoscaling.md has the long form):

1. Signals. Over the stable window (180 s) and the panic window (60 s) the
   policy averages, per sample instant, the replicas' waiting requests, running
   requests and KV-cache utilization (and TTFT when a target is set). Each
   signal turns into a recommended replica count:

   * KV cache (sizes both ways): replicas needed = total KV in use / target.
   * Concurrency (sizes both ways, when a target is known: ``concurrencyPerReplica``,
     or ``batchUtilization`` x the engine's --max-num-seqs): requests in flight
     (running + waiting, the larger of the two windows' means) plus their rise
     projected ``forecastSeconds`` ahead (a cold start), over the target. Down it
     keeps the fewest replicas at which in flight per replica, grown with the cube
     of the load per replica, stays within tolerance below the target.
   * Queue (saturation): a queue only forms when replicas are saturated, so it
     can add replicas or veto removing them, never remove them. Above target,
     with completion rates (vllm:request_success_total) it sizes for the
     arrival rate (completions + growth of requests in the system) at the
     per-replica rate seen while saturated, plus draining the excess backlog
     within one stable window; KV may not ask for more than that (a saturated
     KV cache measures backlog being served, not demand). Without rates it
     asks for the replicas at which running + waiting, each replica keeping its
     observed concurrency, leaves ``queueDepthPerReplica`` waiting, unless the
     backlog is already shrinking fast enough to clear within a stable window.
     Within the band it holds; a queue within tolerance of empty has no opinion.
   * TTFT (optional, saturation): above target it asks for proportionally more
     (capped at ``panicThreshold`` per decision); near target it holds.

   The largest recommendation wins. KV within ``tolerance`` of its target
   holds the current replicas.
2. Panic. When the panic-window recommendation is at least ``panicThreshold``
   times the capacity (ready plus counted starting replicas), the policy scales
   up at once (skipping the scale-up stabilization window) and, until a full
   stable window passes without that condition, never scales down.
3. Cold start. Replicas that are not Ready yet count as capacity for
   ``coldStartGraceSeconds`` after the scale-up that asked for them (or after
   they were first seen). While they load, a growing backlog is expected: the
   queue level and TTFT may hold but not add replicas, and the arrival-rate
   queue need leaves out the backlog drain. After the grace, replicas still not
   Ready no longer count, so a stuck start never blocks scaling for good.
4. Stabilization (as the HPA's behavior): scale up to the lowest
   recommendation of the scale-up window, down to the highest of the
   scale-down window (300 s). Scale-down also needs a full scale-down window
   of valid metrics since the last gap (fail-static, manual change, restart
   without state), every Ready replica reporting, and no burst (panic
   triggered, or the panic window's queue over its target plus tolerance)
   within ``scaleDown.burstHoldSeconds`` (six scale-down windows by default):
   bursts recur, and a replica removed between two is a cold start late for
   the next.
5. Rate limits: at most ``maxReplicasPerStep`` added (removed) per
   ``periodSeconds``. Then min/max bounds, which win over everything.

Fail-static: metrics unavailable, no replica reporting, all replicas stale
(older than ``maxMetricAgeSeconds``), or any NaN/infinite/negative value (or
a KV utilization above 1) in the window -> hold the current replicas (clamped
to min/max), ``fail_static=True`` with the reason, and forget the
stabilization history so that scale-down again needs a full window of good
data afterwards. The policy never scales down on absent data.

Manual scale (``kubectl scale`` and the autoscaler both write spec.replicas
through the /scale subresource). The state remembers the last value the
autoscaler decided (``last_applied``). When spec.replicas differs from it, a
person or another controller changed it, and the policy:

* adopts that value as the new baseline, clamped to min/max;
* holds it for ``manualOverrideSeconds`` (default 300 s) in both directions,
  so it does not undo the change on its next tick;
* restarts its stabilization history there, so afterwards scale-down still
  needs a full window of lower recommendations, and a manual scale-up starts
  the cold-start grace like an autoscaler scale-up would.

After the hold it autoscales from that baseline. To pin replicas for longer,
change min/max or set the paused signal (``PolicyInput.paused``, mapped by
the controller from an annotation), which holds spec.replicas as-is.
spec.replicas = 0 is held (as the HPA does): with no replica there is nothing
to measure, so leaving zero takes a manual scale (or an activator) to 1 or
more, which the rule above adopts.
"""

from kvpilot.autoscaling.policy.config import (
    DEFAULT_POLICY,
    PolicyConfig,
    PolicyFileError,
    ScaleDownRules,
    ScaleToZero,
    ScaleUpRules,
    Targets,
    load_policy_defaults,
    query_window_seconds,
)
from kvpilot.autoscaling.policy.contract import (
    Constraint,
    Decision,
    Observed,
    PolicyInput,
    Signal,
)
from kvpilot.autoscaling.policy.decision import decide
from kvpilot.autoscaling.policy.state import PolicyState

__all__ = [
    "DEFAULT_POLICY",
    "Constraint",
    "Decision",
    "Observed",
    "PolicyConfig",
    "PolicyFileError",
    "PolicyInput",
    "PolicyState",
    "ScaleDownRules",
    "ScaleToZero",
    "ScaleUpRules",
    "Signal",
    "Targets",
    "decide",
    "load_policy_defaults",
    "query_window_seconds",
]
