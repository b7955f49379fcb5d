"""Leader election on a coordination.k8s.io/v1 Lease: exactly one operator replica acts.

A standby polls the Lease and takes it over when the holder has not renewed it for
``lease_duration`` seconds. The leader renews every ``renew`` seconds; if it cannot
renew before the Lease would expire it stops acting (the process exits and its
Deployment restarts it as a standby), the same contract as client-go's leaderelection.
Writes use the Lease's resourceVersion, so two candidates can never both win.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kvpilot.controller.kube import ApiError, Kube

log = logging.getLogger("kvpilot.leader")
LEASE_API = "coordination.k8s.io/v1"


def _micro(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.strptime(ts.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        try:
            return datetime.strptime(ts.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            return None


def expired(lease: Mapping[str, Any], now: float) -> bool:
    """True when the holder has not renewed within its lease duration (or none holds it)."""
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or 15)
    return renewed is None or now > renewed + duration


class LeaderElector:
    """Acquire, then keep, the Lease; ``on_lost`` runs if it is ever lost."""

    def __init__(
        self,
        kube: Kube,
        *,
        name: str,
        namespace: str,
        identity: str,
        duration: float = 15.0,
        renew: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.renew = renew
        self.clock = clock
        self.is_leader = threading.Event()
        self._stop = threading.Event()

    def _body(
        self, lease: Mapping[str, Any] | None, now: float, transitions: int
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        spec = dict((lease or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = _micro(now)
            spec["leaseTransitions"] = transitions
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.duration)),
            renewTime=_micro(now),
        )
        return {"apiVersion": LEASE_API, "kind": "Lease", "metadata": meta, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        now = self.clock()
        lease = self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
        try:
            if lease is None:
                self.kube.create(self._body(None, now, 0))
                return True
            holder = (lease.get("spec") or {}).get("holderIdentity")
            if holder != self.identity and not expired(lease, now):
                return False
            transitions = int((lease.get("spec") or {}).get("leaseTransitions") or 0)
            if holder != self.identity:
                transitions += 1
            self.kube.replace(self._body(lease, now, transitions))
            return True
        except ApiError as exc:
            # 409: someone wrote the Lease since we read it. That is no proof that another
            # replica holds it, so it is not a loss: the caller retries (within the Lease
            # duration) and the next attempt reads who holds it.
            log.info("Lease write refused status=%d err=%s", exc.status, exc.reason)
            raise

    def acquire(self) -> None:
        """Block until this process holds the Lease."""
        announced = False
        while not self._stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info(
                        "Became leader lease=%s/%s identity=%s",
                        self.namespace,
                        self.name,
                        self.identity,
                    )
                    self.is_leader.set()
                    return
            except (ApiError, OSError) as exc:
                log.warning(
                    "Lease attempt failed lease=%s/%s err=%s", self.namespace, self.name, exc
                )
            if not announced:
                log.info(
                    "Standing by lease=%s/%s identity=%s", self.namespace, self.name, self.identity
                )
                announced = True
            self._stop.wait(self.renew)

    def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew until stopped; call ``on_lost`` when the Lease could not be kept."""
        last_ok = self.clock()
        while not self._stop.wait(self.renew):
            try:
                if self.try_acquire_or_renew():
                    last_ok = self.clock()
                    continue
                log.error(
                    "Lost the lease to another replica lease=%s/%s", self.namespace, self.name
                )
            except (ApiError, OSError) as exc:
                if self.clock() - last_ok < self.duration - self.renew:
                    log.warning("Lease renewal failed, retrying err=%s", exc)
                    continue
                log.error("Could not renew the lease in time err=%s", exc)
            self.is_leader.clear()
            on_lost()
            return

    def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        self._stop.set()
        if not self.is_leader.is_set():
            return
        try:
            lease = self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = dict(lease)
                body["spec"] = {**lease["spec"], "holderIdentity": None, "renewTime": None}
                self.kube.replace(body)
        except (ApiError, OSError) as exc:
            log.warning("Releasing the lease failed err=%s", exc)
        self.is_leader.clear()
