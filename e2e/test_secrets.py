"""No Secret value leaks: a full scenario with credentials, then a scan of everything.

A service takes a Hugging Face token, an API key and S3 credentials from Secrets, comes
up, is scaled, and is hit with hostile updates that try to write a credential as a
literal. Afterwards no Deployment, ReplicaSet, Pod, InferenceService (spec and status),
Event, operator log or replica log holds any of the Secret values, and the pods run
with the hardened security context.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster
from e2e.helpers import Kube, condition_true, wait_for
from e2e.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("operator")


def apply(kube: Kube, namespace: str, obj: dict[str, Any]) -> str | None:
    """None when accepted, else the API server's refusal."""
    proc = kube.run("apply", "-n", namespace, "-f", "-", input_text=json.dumps(obj), check=False)
    return None if proc.returncode == 0 else proc.stderr


def test_no_secret_value_reaches_objects_events_or_logs(
    cluster: Cluster, served_namespace: str, operator: OperatorProcess
) -> None:
    kube, ns = cluster.kube, served_namespace
    secrets = {
        "hf-token": ("token", f"hf_{uuid.uuid4().hex}{uuid.uuid4().hex}"),
        "vllm-api": ("key", f"apikey-{uuid.uuid4().hex}"),
        "s3": ("secret", f"s3secret-{uuid.uuid4().hex}"),
    }
    for name, (key, value) in secrets.items():
        kube("create", "secret", "generic", name, f"--from-literal={key}={value}", "-n", ns)
    values = [v for _, v in secrets.values()]

    svc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    name = svc["metadata"]["name"]
    svc["spec"]["runtime"].update(
        {
            "hfTokenSecretRef": {"name": "hf-token", "key": "token"},
            "apiKeySecretRef": {"name": "vllm-api", "key": "key"},
            "env": [
                {
                    "name": "AWS_SECRET_ACCESS_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}},
                }
            ],
        }
    )
    assert apply(kube, ns, svc) is None
    wait_for(
        lambda: kube.get("inferenceservice", name, ns),
        lambda o: condition_true(o, "Ready"),
        timeout=120,
        what=f"{ns}/{name} Ready",
    )
    kube("scale", f"inferenceservice/{name}", "-n", ns, "--replicas=2")
    wait_for(
        lambda: kube.get("inferenceservice", name, ns),
        lambda o: o is not None and o.get("status", {}).get("readyReplicas") == 2,
        timeout=120,
        what=f"{ns}/{name} at 2 ready replicas",
    )

    # Hostile updates: each writes a credential where a literal would leak it.
    hostile = [
        {"name": "HF_TOKEN", "value": values[0]},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": values[2]},
        {"name": "INNOCENT", "value": values[0]},
    ]
    for entry in hostile:
        bad = copy.deepcopy(svc)
        bad["spec"]["runtime"]["env"] = [entry]
        refusal = apply(kube, ns, bad)
        assert refusal is not None and "spec.runtime.env[0]" in refusal, refusal
        assert not any(v in refusal for v in values), refusal
    bad = copy.deepcopy(svc)
    bad["spec"]["runtime"]["extraArgs"] = ["--api-key", values[1]]
    refusal = apply(kube, ns, bad)
    assert refusal is not None and "spec.runtime.extraArgs" in refusal, refusal

    scanned = {
        kind: kube.json("get", kind, "-n", ns)["items"]
        for kind in ("deployments", "replicasets", "pods", "inferenceservices", "events")
    }
    assert scanned["pods"] and scanned["events"]
    text = json.dumps(scanned) + operator.log()
    replica_logs = cluster.layout.logs / "replicas"
    if replica_logs.is_dir():
        text += "".join(p.read_text(errors="replace") for p in replica_logs.glob(f"{ns}_*.log"))
    for value in values:
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in text

    for pod in scanned["pods"]:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert not any(
            m["mountPath"].startswith("/var/run/secrets/kubernetes.io")
            for c in spec["containers"]
            for m in c.get("volumeMounts", [])
        )
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        env = {e["name"]: e for e in container["env"]}
        for var in ("HF_TOKEN", "VLLM_API_KEY", "AWS_SECRET_ACCESS_KEY"):
            assert set(env[var]) == {"name", "valueFrom"}
