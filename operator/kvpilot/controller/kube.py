"""The operator's only Kubernetes client: server-side apply, reads, status writes."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import kubernetes
import urllib3

from kvpilot.api.names import API_VERSION, KIND, PLURAL

FIELD_MANAGER = "kvpilot"
#: Answers worth retrying in place: conflicts of optimistic writes are not among them
#: (the caller re-reads); throttling and server errors are, honouring Retry-After.
RETRYABLE = frozenset({429, 500, 502, 503, 504})

log = logging.getLogger("kvpilot.kube")

#: (apiVersion, kind) -> plural resource name
RESOURCES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("v1", "Pod"): "pods",
    ("v1", "Node"): "nodes",
    ("v1", "Event"): "events",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    (API_VERSION, KIND): PLURAL,
}


def load_config() -> None:
    """Kubeconfig (KUBECONFIG or ~/.kube/config) first, then in-cluster."""
    try:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, FileNotFoundError, TypeError):
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = RESOURCES[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(
        self, status: int, reason: str, body: str, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"{status} {reason}: {body[:500]}")


def retry_delay(
    attempt: int, retry_after: float | None, base: float = 0.5, cap: float = 30.0
) -> float:
    """Seconds before retry number ``attempt`` (0-based): the server's Retry-After when it
    gives one, else exponential backoff with jitter, both capped."""
    if retry_after is not None:
        return float(min(cap, max(0.0, retry_after)))
    return float(min(cap, base * 2**attempt) * (0.5 + random.random() / 2))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class Kube:
    """Thin synchronous client; every call maps to one API request.

    Connection settings (server, CA, client certificate, token) come from the
    kubernetes package's configuration; requests go through urllib3 directly
    so that server-side apply's content type is sent as it is.
    """

    def __init__(
        self,
        cfg: kubernetes.client.Configuration | None = None,
        timeout: float = 30.0,
        *,
        retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg or kubernetes.client.Configuration.get_default_copy()
        self.timeout = timeout
        self.retries = retries
        self.sleep = sleep
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if self.cfg.verify_ssl else "CERT_NONE",
            ca_certs=self.cfg.ssl_ca_cert,
            cert_file=self.cfg.cert_file,
            key_file=self.cfg.key_file,
        )

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "Content-Type": content_type,
            "User-Agent": "kvpilot",
        }
        auth_settings: Mapping[str, Any] = self.cfg.auth_settings()
        for auth in auth_settings.values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    def _call(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return self._call_once(
                    method, url, body=body, query=query, content_type=content_type
                )
            except ApiError as exc:
                if exc.status not in RETRYABLE or attempt == self.retries:
                    raise
                delay = retry_delay(attempt, exc.retry_after)
                log.info(
                    "Retrying method=%s path=%s status=%d after=%.1fs",
                    method,
                    url,
                    exc.status,
                    delay,
                )
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _call_once(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        full = str(self.cfg.host).rstrip("/") + url
        if query:
            full += "?" + urlencode(query)
        resp = self.pool.request(
            method,
            full,
            body=json.dumps(body).encode() if body is not None else None,
            headers=self._headers(content_type),
            timeout=self.timeout,
            retries=False,
        )
        text = resp.data.decode("utf-8", errors="replace")
        if not 200 <= resp.status < 300:
            reason = str(resp.reason or "")
            with contextlib.suppress(ValueError, AttributeError):
                reason = str(json.loads(text).get("reason", reason))
            raise ApiError(resp.status, reason, text, _retry_after(resp.headers.get("Retry-After")))
        return json.loads(text) if text else {}

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call("GET", path(api_version, kind, namespace), query=query)
        return list(result.get("items", []))

    def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply under kvpilot's field manager, taking ownership of conflicts.

        Only for objects kvpilot owns (the controller checks the owner reference first).
        ``dry_run`` validates without persisting, so a set of objects is applied all or none.
        """
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        result: dict[str, Any] = self._call(
            "PATCH", url, body=dict(obj), query=query, content_type="application/apply-patch+yaml"
        )
        return result

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the InferenceService's status subresource."""
        url = path(API_VERSION, KIND, namespace, name) + "/status"
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        return result

    def patch_pod_condition(
        self, namespace: str, name: str, condition: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set one condition of a Pod (pods/status, strategic merge: conditions merge by
        type, so the kubelet's own conditions are left as they are)."""
        url = path("v1", "Pod", namespace, name) + "/status"
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body={"status": {"conditions": [dict(condition)]}},
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/strategic-merge-patch+json",
        )
        return result

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Write replicas through the InferenceService's scale subresource."""
        url = path(API_VERSION, KIND, namespace, name) + "/scale"
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )
        return result

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Resize a Deployment (an older revision's, which is never re-rendered)."""
        url = path("apps/v1", "Deployment", namespace, name)
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body={"spec": {"replicas": replicas}},
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )
        return result

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
    ) -> dict[str, Any]:
        """JSON merge patch of one object (with metadata.resourceVersion: optimistic)."""
        result: dict[str, Any] = self._call(
            "PATCH",
            path(api_version, kind, namespace, name),
            body=dict(body),
            content_type="application/merge-patch+json",
        )
        return result

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """DELETE (foreground-free: the garbage collector removes the dependents); a
        missing object is already gone."""
        try:
            self._call("DELETE", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new object (409 when the name is taken)."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        result: dict[str, Any] = self._call("POST", url, body=dict(obj))
        return result

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT (optimistic: the object's resourceVersion must still be current, else 409)."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result: dict[str, Any] = self._call("PUT", url, body=dict(obj))
        return result
