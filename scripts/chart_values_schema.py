"""Write charts/kvpilot/values.schema.json: the chart's strict values schema.

Every object refuses keys it does not list (``additionalProperties: false``), so a typo in
a values file fails `helm install` with the key named instead of being ignored. The
schema of ``operator.scalingDefaults`` is derived from the CRD's ``spec.scaling`` (less
the per-service bounds), so the site policy is checked with the very rules the API server
applies to each service. Run by `make crds`; tests/chart/test_chart_values.py checks the
file is current.

    python scripts/chart_values_schema.py [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kvpilot"
SCHEMA_FILE = CHART / "values.schema.json"
CRD_FILE = ROOT / "crds" / "kvpilot.io_inferenceservices.yaml"

DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = "^[0-9]+(ms|s|m|h|d|w|y)$"
GPU_TYPE = "^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$"
_PER_SERVICE = ("minReplicas", "maxReplicas")


def obj(props: dict[str, Any], description: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if description:
        out["description"] = description
    out.update(properties=props, additionalProperties=False, **extra)
    return out


def string_map(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def k8s(description: str, kind: str = "object") -> dict[str, Any]:
    """A Kubernetes object passed through as it is (the API server validates it)."""
    return {"type": kind, "description": description}


def openapi_to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD (OpenAPI v3, structural) schema node as strict JSON Schema."""
    out: dict[str, Any] = {}
    for key in ("type", "description", "enum", "minimum", "maximum", "pattern", "minLength",
                "maxLength"):  # fmt: skip
        if key in node:
            out[key] = node[key]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(bound) is True:
            out[bound] = out.pop(limit)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if "properties" in node:
        out["properties"] = {k: openapi_to_jsonschema(v) for k, v in node["properties"].items()}
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = openapi_to_jsonschema(node["items"])
    return out


def scaling_defaults_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    scaling = openapi_to_jsonschema(spec["properties"]["scaling"])
    for key in _PER_SERVICE:
        scaling["properties"].pop(key)
    scaling["description"] = (
        "Operator-wide autoscaling policy in spec.scaling's spelling (kvpilot run "
        "--scaling-defaults); each service's spec.scaling overrides it knob by knob. "
        "minReplicas and maxReplicas belong to each service."
    )
    return scaling


def schema() -> dict[str, Any]:
    optional = ("completed", "ttft", "lastScrape")
    promql = {
        key: {"type": ["string", "null"] if key in optional else "string", "minLength": 1}
        for key in ("selector", "revisionSelector", "waiting", "running", "kvCache", "completed",
                    "ttft", "lastScrape", "podLabel")
    }  # fmt: skip
    promql["revisionSelector"]["minLength"] = 0
    monitor = obj(
        {
            "enabled": {"type": "boolean"},
            "interval": {"type": "string", "pattern": DURATION},
            "labels": string_map("Labels your Prometheus selects monitors by."),
        }
    )
    probe = obj(
        {
            k: {"type": "integer", "minimum": 0 if k == "initialDelaySeconds" else 1}
            for k in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
        }
    )
    limits = obj(
        {
            "maxPriority": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
            "maxGPUs": {"type": "integer", "minimum": 0},
        },
        "Caps of one namespace; a cap left out is unlimited.",
    )
    tenants = obj(
        {
            "default": limits,
            "namespaces": {
                "type": "object",
                "propertyNames": {"pattern": DNS_LABEL, "maxLength": 63},
                "additionalProperties": limits,
            },
        },
        "Per-namespace caps on placement priority and GPUs (kvpilot run --tenant-policy).",
    )
    quantities = {
        "type": "object",
        "additionalProperties": {"type": ["string", "number"]},
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "kvpilot chart values",
        **obj(
            {
                "nameOverride": {"type": "string", "maxLength": 40},
                "fullnameOverride": {"type": "string", "maxLength": 52},
                "crds": obj(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "Install and upgrade the CRD with the release.",
                        },
                        "keep": {
                            "type": "boolean",
                            "description": "Keep the CRD and every InferenceService on uninstall.",
                        },
                    }
                ),
                "image": obj(
                    {
                        "repository": {"type": "string", "minLength": 1},
                        "tag": {"type": "string"},
                        "digest": {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"},
                        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                    }
                ),
                "imagePullSecrets": {
                    "type": "array",
                    "items": obj({"name": {"type": "string", "minLength": 1}}, required=["name"]),
                },
                "replicaCount": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 10,
                    "description": "Operator replicas; one acts, the rest stand by.",
                },
                "leaderElection": obj(
                    {
                        "enabled": {"type": "boolean"},
                        "leaseName": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                    }
                ),
                "watchNamespaces": {
                    "type": "array",
                    "uniqueItems": True,
                    "description": "Namespaces served; empty for the whole cluster.",
                    "items": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
                },
                "rbac": obj(
                    {
                        "create": {"type": "boolean"},
                        "clusterRead": {"type": "boolean"},
                        "admissionPolicy": {"type": "boolean"},
                        "aggregateToDefaultRoles": {"type": "boolean"},
                    }
                ),
                "serviceAccount": obj(
                    {
                        "create": {"type": "boolean"},
                        "name": {"type": "string", "pattern": f"^$|{DNS_SUBDOMAIN}"},
                        "annotations": string_map("ServiceAccount annotations."),
                        "automount": {"type": "boolean"},
                    }
                ),
                "operator": obj(
                    {
                        "prometheusUrl": {
                            "type": "string",
                            "pattern": "^(https?://[^\\s]+)?$",
                            "description": "http(s) URL of Prometheus, or empty.",
                        },
                        "autoscaleInterval": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 3600,
                        },
                        "metricsStep": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                        "repairInterval": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 86400,
                        },
                        "workers": {"type": "integer", "minimum": 1, "maximum": 64},
                        "scalingDefaults": scaling_defaults_schema(),
                        "promqlTemplates": obj(
                            promql, "The autoscaler's PromQL (docs/autoscaling.md)."
                        ),
                        "tenantPolicy": tenants,
                        "gpuCosts": {
                            "type": "object",
                            "description": "Relative hourly cost per GPU type name.",
                            "propertyNames": {"pattern": GPU_TYPE},
                            "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                        },
                        "gpuTypes": {
                            "type": "array",
                            "uniqueItems": True,
                            "items": {"type": "string", "pattern": GPU_TYPE},
                        },
                        "schedulerName": {"type": "string", "pattern": f"^$|{DNS_SUBDOMAIN}"},
                        "verbose": {"type": "boolean"},
                        "extraArgs": {"type": "array", "items": {"type": "string"}},
                        "extraEnv": {"type": "array", "items": k8s("An EnvVar.")},
                    }
                ),
                "metrics": obj(
                    {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "service": obj(
                            {
                                "enabled": {"type": "boolean"},
                                "annotations": string_map("Service annotations."),
                            }
                        ),
                    }
                ),
                "health": obj({"port": {"type": "integer", "minimum": 1, "maximum": 65535}}),
                "resources": obj({"requests": quantities, "limits": quantities}),
                "livenessProbe": probe,
                "readinessProbe": probe,
                "podSecurityContext": k8s("A PodSecurityContext."),
                "securityContext": k8s("The container's SecurityContext."),
                "podLabels": string_map("Extra pod labels."),
                "podAnnotations": string_map("Extra pod annotations."),
                "priorityClassName": {"type": "string"},
                "nodeSelector": string_map("Node labels the operator pods require."),
                "tolerations": {"type": "array", "items": k8s("A Toleration.")},
                "affinity": k8s("An Affinity."),
                "topologySpreadConstraints": {"type": "array", "items": k8s("A constraint.")},
                "podDisruptionBudget": obj(
                    {
                        "enabled": {"type": "boolean"},
                        "minAvailable": {"type": ["integer", "string"]},
                    }
                ),
                "podMonitor": monitor,
                "serviceMonitor": monitor,
                "servingPodMonitor": monitor,
                "prometheusRule": obj(
                    {
                        "enabled": {"type": "boolean"},
                        "labels": string_map("Labels your Prometheus selects rules by."),
                        "for": obj(
                            {
                                k: {"type": "string", "pattern": DURATION}
                                for k in (
                                    "notReady",
                                    "scalingBlocked",
                                    "kvCacheSaturated",
                                    "operatorDown",
                                )
                            }
                        ),
                        "kvCacheSaturation": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 1,
                        },
                    }
                ),
                "grafanaDashboard": obj(
                    {
                        "enabled": {"type": "boolean"},
                        "namespace": {"type": "string", "pattern": f"^$|{DNS_LABEL}"},
                        "labels": string_map("Labels Grafana's dashboard sidecar looks for."),
                        "annotations": string_map("ConfigMap annotations."),
                    }
                ),
                "tests": obj({"image": {"type": "string", "minLength": 1}}),
            }
        ),
        "allOf": [
            {
                "if": {
                    "properties": {"replicaCount": {"minimum": 2}},
                    "required": ["replicaCount"],
                },
                "then": {
                    "properties": {
                        "leaderElection": {
                            "properties": {"enabled": {"const": True}},
                            "description": "more than one replica needs leader election",
                        }
                    }
                },
            }
        ],
    }


def render() -> str:
    return json.dumps(schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""
        if current != text:
            sys.stderr.write(f"{SCHEMA_FILE} is out of date: run `make crds`\n")
            return 1
        return 0
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
