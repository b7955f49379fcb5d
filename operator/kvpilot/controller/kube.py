"""The operator's only Kubernetes client: server-side apply, reads, status writes."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import kubernetes
import urllib3

FIELD_MANAGER = "kvpilot"
GROUP = "kvpilot.io"
VERSION = "v1alpha1"
PLURAL = "inferenceservices"

log = logging.getLogger("kvpilot.kube")

#: (apiVersion, kind) -> plural resource name
RESOURCES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("v1", "Pod"): "pods",
    ("v1", "Node"): "nodes",
    (f"{GROUP}/{VERSION}", "InferenceService"): PLURAL,
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

    def __init__(self, status: int, reason: str, body: str) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"{status} {reason}: {body[:500]}")


class Kube:
    """Thin synchronous client; every call maps to one API request.

    Connection settings (server, CA, client certificate, token) come from the
    kubernetes package's configuration; requests go through urllib3 directly
    so that server-side apply's content type is sent as it is.
    """

    def __init__(
        self, cfg: kubernetes.client.Configuration | None = None, timeout: float = 30.0
    ) -> None:
        self.cfg = cfg or kubernetes.client.Configuration.get_default_copy()
        self.timeout = timeout
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=8,
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
            raise ApiError(resp.status, reason, text)
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

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under kvpilot's field manager, taking ownership of conflicts."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body=dict(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the InferenceService's status subresource."""
        url = path(f"{GROUP}/{VERSION}", "InferenceService", namespace, name) + "/status"
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        return result

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Write replicas through the InferenceService's scale subresource."""
        url = path(f"{GROUP}/{VERSION}", "InferenceService", namespace, name) + "/scale"
        result: dict[str, Any] = self._call(
            "PATCH",
            url,
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )
        return result
