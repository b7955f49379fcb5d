"""The Helm chart in the dev cluster: install, the operator under the chart's identity,
RBAC refusals, the namespaced mode, CRD upgrade, uninstall keeping InferenceServices, and
the chart's alert and dashboard metrics against the real operator's /metrics.

The dev cluster's nodes run no containers, so the chart's Deployment is installed with no
replicas and the operator runs from the checkout as the chart's ServiceAccount (a token
from ``kubectl create token`` in a kubeconfig), with every other operator of the test
session paused so that only this identity acts.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from e2e.conftest import Cluster
from e2e.helpers import GC_TIMEOUT, Kube, condition_true, service_deployment, wait_for
from e2e.operator import OperatorProcess, running_operator, service_account_kubeconfig
from kvpilot.controller.kube import ApiError
from kvpilot.controller.kube import Kube as OperatorKube

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kvpilot"
DEV_VALUES = ROOT / "e2e" / "chart-values-devcluster.yaml"
RELEASE = "kvpilot"
RELEASE_NS = "kvpilot-system"
CRD = "inferenceservices.kvpilot.io"

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cluster.layout.bin / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def adopt_crd(kube: Kube, release: str, namespace: str) -> None:
    """Hand a CRD applied with kubectl (crds/) over to the release: Helm's documented
    adoption labels, the same a user runs once when moving to the chart."""
    if kube.get("crd", CRD) is None:
        return
    kube("label", "--overwrite", "crd", CRD, "app.kubernetes.io/managed-by=Helm")
    kube(
        "annotate", "--overwrite", "crd", CRD,
        f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}",
    )  # fmt: skip


def install(cluster: Cluster, release: str, namespace: str, *extra: str) -> str:
    return helm(
        cluster, "upgrade", "--install", release, str(CHART), "-n", namespace,
        "--create-namespace", "-f", str(DEV_VALUES), "--wait", "--timeout", "120s", *extra,
    ).stdout  # fmt: skip


def service(name: str, gpu: str = "L4-24GB", **scaling: int) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    obj["metadata"]["name"] = name
    obj["spec"]["placement"]["gpuTypes"] = [gpu]
    # Room for `kubectl scale` (the CRD refuses replicas above maxReplicas); without a
    # Prometheus URL the autoscaler holds whatever was set.
    obj["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 3, **scaling}
    return obj


def apply(kube: Kube, namespace: str, obj: dict[str, Any]) -> None:
    kube("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(obj))


def wait_ready(kube: Kube, ns: str, name: str, replicas: int) -> dict[str, Any]:
    obj = wait_for(
        lambda: kube.get("inferenceservice", name, ns),
        lambda o: (
            condition_true(o, "Ready") and (o or {})["status"].get("readyReplicas") == replicas
        ),
        timeout=120,
        what=f"{ns}/{name} Ready with {replicas} replica(s)",
    )
    assert obj is not None
    return obj


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kube("create", "namespace", name)
    return name


def as_sa(cluster: Cluster, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.layout.bin / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[str]:
    """The chart installed cluster-wide; its NOTES as the value."""
    adopt_crd(cluster.kube, RELEASE, RELEASE_NS)
    with OperatorProcess.others_paused():
        notes = install(cluster, RELEASE, RELEASE_NS)
        yield notes
        helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster: Cluster, release: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sa") / "kubeconfig"
    return service_account_kubeconfig(cluster.kube, RELEASE_NS, RELEASE, out)


def test_install_creates_what_the_operator_needs(cluster: Cluster, release: str) -> None:
    kube = cluster.kube
    assert "kvpilot 0.1.0 is installed as release kvpilot" in release  # NOTES.txt
    assert "`helm uninstall` keeps the CRD and your InferenceServices" in release
    crd = kube.get("crd", CRD)
    assert crd is not None
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert condition_true(crd, "Established")
    assert kube.get("serviceaccount", RELEASE, RELEASE_NS) is not None
    assert kube.get("clusterrole", RELEASE) is not None
    assert kube.get("role", f"{RELEASE}-leader-election", RELEASE_NS) is not None
    dep = kube.get("deployment", RELEASE, RELEASE_NS)
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == RELEASE
    status = json.loads(helm(cluster, "status", RELEASE, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"


def test_operator_as_the_chart_identity_creates_scales_rolls_and_deletes(
    cluster: Cluster, sa_kubeconfig: Path
) -> None:
    kube = cluster.kube
    ns = new_namespace(kube, "chart-sa")
    log = cluster.layout.logs / "operator-chart-sa.log"
    log.write_text("")
    try:
        with (
            OperatorProcess.others_paused(),
            running_operator(sa_kubeconfig, log, env={"POD_NAMESPACE": RELEASE_NS}),
        ):
            obj = service("llama")
            apply(kube, ns, obj)
            ready = wait_ready(kube, ns, "llama", 1)
            assert service_deployment(kube, ns, "llama") is not None  # llama-<revision>
            for kind in ("service", "poddisruptionbudget"):
                assert kube.get(kind, "llama", ns) is not None, kind
            kube("scale", "-n", ns, "inferenceservice/llama", "--replicas=2")
            wait_ready(kube, ns, "llama", 2)
            # A model change rolls out a new revision.
            edited = copy.deepcopy(obj)
            edited["spec"]["model"]["maxModelLen"] = 4096
            edited["spec"]["replicas"] = 2
            apply(kube, ns, edited)
            rolled = wait_for(
                lambda: kube.get("inferenceservice", "llama", ns),
                lambda o: (
                    (o or {})["status"].get("revision") != ready["status"]["revision"]
                    and condition_true(o, "Ready")
                ),
                timeout=120,
                what="the new revision Ready",
            )
            dep = service_deployment(kube, ns, "llama")
            assert dep is not None
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[args.index("--max-model-len") + 1] == "4096"
            assert rolled["status"]["readyReplicas"] == 2
            kube("delete", "inferenceservice", "llama", "-n", ns)
            wait_for(
                lambda: service_deployment(kube, ns, "llama"),
                lambda d: d is None,
                timeout=GC_TIMEOUT,
                what="the Deployment to go with its InferenceService",
            )
        text = log.read_text()
        assert "Forbidden" not in text and " 403" not in text, text[-3000:]
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_two_replicas_share_one_lease_under_the_chart_identity(
    cluster: Cluster, sa_kubeconfig: Path
) -> None:
    """The chart's two replicas: the Lease Role lets one lead and the other stand by, and
    the standby takes over when the leader goes (the Lease is in the release namespace)."""
    kube = cluster.kube
    logs = cluster.layout.logs
    ops = [
        OperatorProcess(
            sa_kubeconfig, logs / f"operator-chart-{pod}.log",
            env={"POD_NAMESPACE": RELEASE_NS, "POD_NAME": f"kvpilot-{pod}"},
            ready_marker="Initial authentication has finished" if pod == "a" else "Standing by",
        )
        for pod in ("a", "b")
    ]  # fmt: skip
    for op in ops:
        op.log_file.write_text("")

    def holder() -> str:
        lease = kube.get("lease", "kvpilot-operator", RELEASE_NS)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity"))

    try:
        with OperatorProcess.others_paused():
            ops[0].start()
            ops[1].start()
            assert holder() == "kvpilot-a"
            ops[0].forget()  # a clean exit hands the Lease over
            wait_for(ops[1].log, lambda t: "Became leader" in t, timeout=60, what="takeover")
            assert holder() == "kvpilot-b"
    finally:
        for op in ops:
            op.forget()
    for op in ops:
        text = op.log()
        assert "Forbidden" not in text and " 403" not in text, text[-3000:]


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["get", "secrets", "-A"], "list secrets"),
        (["get", "configmaps", "-n", "kube-system"], "read configmaps"),
        (["delete", "deployment", "anything", "-n", "default"], "delete deployments"),
        (["delete", "inferenceservice", "anything", "-n", "default"], "delete inferenceservices"),
        (["create", "clusterrolebinding", "x", "--clusterrole=cluster-admin",
          "--serviceaccount=kvpilot-system:kvpilot"], "grant itself more"),
        (["create", "namespace", "kvpilot-escape"], "create namespaces"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_actions_outside_the_granted_rbac_are_refused(
    cluster: Cluster, sa_kubeconfig: Path, args: list[str], what: str
) -> None:
    proc = as_sa(cluster, sa_kubeconfig, *args)
    assert proc.returncode != 0, f"the operator's identity may {what}: {proc.stdout}"
    assert "is forbidden" in proc.stderr, proc.stderr
    assert 'User "system:serviceaccount:kvpilot-system:kvpilot"' in proc.stderr


def test_node_patches_are_limited_to_the_reservation_taint(
    cluster: Cluster, sa_kubeconfig: Path
) -> None:
    """RBAC grants `patch nodes` for moves; the chart's admission policy narrows it to the
    kvpilot.io/reserved taint: labels and cordons are refused, the reservation is not."""
    try:
        refused = wait_for(
            lambda: as_sa(cluster, sa_kubeconfig, "label", "node", "h100-0",
                          f"kvpilot.io/test={uuid.uuid4().hex[:8]}", "--overwrite"),
            lambda p: p.returncode != 0,
            timeout=30,
            what="the admission policy in force",
        )  # fmt: skip
        assert "denied request" in refused.stderr and "kvpilot.io/reserved" in refused.stderr
        assert "denied request" in as_sa(cluster, sa_kubeconfig, "cordon", "h100-0").stderr
        taint = as_sa(cluster, sa_kubeconfig, "taint", "node", "h100-0",
                      "kvpilot.io/reserved=chart-test.none:NoSchedule")  # fmt: skip
        assert taint.returncode == 0, taint.stderr
    finally:
        cluster.kube.run("taint", "node", "h100-0", "kvpilot.io/reserved-", check=False)
        cluster.kube.run("label", "node", "h100-0", "kvpilot.io/test-", check=False)
        cluster.kube.run("uncordon", "h100-0", check=False)


def test_pod_status_patches_are_limited_to_the_quality_gate_condition(
    cluster: Cluster, sa_kubeconfig: Path
) -> None:
    """RBAC grants `patch pods/status` for the quality gate's readinessGate; the admission
    policy lets the operator's identity set that condition and nothing else in a status."""
    kube = cluster.kube
    ns = new_namespace(kube, "chart-gate")
    pod = "gated"
    try:
        made = kube.apply(json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "x"}],
                     "readinessGates": [{"conditionType": "kvpilot.io/quality-gate"}]},
        }))  # fmt: skip
        assert made.returncode == 0, made.stderr

        # The operator's own client and call (kubectl would GET pods/status first, which
        # the operator neither does nor may).
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(sa_kubeconfig), client_configuration=cfg)
        client = OperatorKube(cfg, retries=0)

        def condition_patch(ctype: str) -> str:
            # A new message each time: a patch that changes nothing would pass any policy.
            cond = {"type": ctype, "status": "True", "message": uuid.uuid4().hex}
            try:
                client.patch_pod_condition(ns, pod, cond)
            except ApiError as exc:
                return exc.body
            return ""

        refused = wait_for(
            lambda: condition_patch("Ready"),
            bool,
            timeout=30,
            what="the admission policy in force for pods/status",
        )
        assert "denied request" in refused and "kvpilot.io/quality-gate" in refused, refused
        assert condition_patch("kvpilot.io/quality-gate") == ""
        got = kube.get("pod", pod, ns)
        assert got is not None
        conds = {c["type"]: c["status"] for c in got["status"].get("conditions") or []}
        assert conds.get("kvpilot.io/quality-gate") == "True" and conds.get("Ready") != "True"
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_namespaced_mode_works_with_only_a_role(cluster: Cluster, release: str) -> None:
    """A second release serves one namespace: the Role there grants everything namespaced;
    the only cluster-wide grant is reading Nodes (the GPU inventory) and patching them
    (the reservation taint of moves, narrowed by the admission policy)."""
    kube = cluster.kube
    served = new_namespace(kube, "chart-served")
    other = new_namespace(kube, "chart-other")
    rel, rel_ns = "kvpilot-ns", new_namespace(kube, "chart-rel")
    log = cluster.layout.logs / "operator-chart-ns.log"
    log.write_text("")
    try:
        install(cluster, rel, rel_ns, "--set", "crds.enabled=false",
                "--set-json", f'watchNamespaces=["{served}"]')  # fmt: skip
        role = kube.get("role", rel, served)
        assert role is not None
        bound = kube.json("get", "clusterrolebindings", "-l", f"app.kubernetes.io/instance={rel}")
        names = {b["roleRef"]["name"] for b in bound["items"]}
        assert names == {f"{rel}-cluster-read"}
        read = ["get", "list", "watch"]
        assert kube.get("clusterrole", f"{rel}-cluster-read")["rules"] == [  # type: ignore[index]
            {"apiGroups": [""], "resources": ["nodes"], "verbs": [*read, "patch"]},
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": read,
            },
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": read},
        ]
        kubeconfig = service_account_kubeconfig(kube, rel_ns, rel, log.with_suffix(".kubeconfig"))
        assert as_sa(cluster, kubeconfig, "get", "infsvc", "-n", served).returncode == 0
        refused = as_sa(cluster, kubeconfig, "get", "infsvc", "-n", other)
        assert "is forbidden" in refused.stderr
        refused = as_sa(cluster, kubeconfig, "get", "infsvc", "-A")
        assert "is forbidden" in refused.stderr
        with (
            OperatorProcess.others_paused(),
            running_operator(kubeconfig, log, namespaces=[served], env={"POD_NAMESPACE": rel_ns}),
        ):
            apply(kube, served, service("small", gpu="L4-24GB"))
            wait_ready(kube, served, "small", 1)
            kube("scale", "-n", served, "inferenceservice/small", "--replicas=2")
            wait_ready(kube, served, "small", 2)
            apply(kube, other, service("ignored"))
            assert service_deployment(kube, served, "small") is not None
        text = log.read_text()
        assert "Forbidden" not in text and " 403" not in text, text[-3000:]
        ignored = kube.get("inferenceservice", "ignored", other)
        assert ignored is not None and not ignored.get("status"), "outside its namespace"
    finally:
        helm(cluster, "uninstall", rel, "-n", rel_ns, "--wait", check=False)
        for ns in (served, other, rel_ns):
            kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_metrics_cover_the_alerts_and_dashboard(
    cluster: Cluster, sa_kubeconfig: Path
) -> None:
    """Every kvpilot_* name the PrometheusRule and dashboard read is a family of the real
    operator's /metrics (vLLM's names: tests/chart/test_chart.py, against real vLLM)."""
    from prometheus_client.parser import text_string_to_metric_families
    from tests.chart.chart_helpers import chart_promql, family_of, metric_names

    kube = cluster.kube
    ns = new_namespace(kube, "chart-metrics")
    port = free_port()
    log = cluster.layout.logs / "operator-chart-metrics.log"
    log.write_text("")
    try:
        with OperatorProcess.others_paused(), running_operator(
            sa_kubeconfig, log, metrics_port=port, prometheus_url=cluster.prometheus_url,
            env={"POD_NAMESPACE": RELEASE_NS},
        ):  # fmt: skip
            apply(kube, ns, service("observed", maxReplicas=2))
            wait_ready(kube, ns, "observed", 1)

            def scrape() -> set[str]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                return {f.name for f in text_string_to_metric_families(text)}

            # The autoscaler's gauges appear with its first decision on the service.
            families = wait_for(
                scrape,
                lambda f: "kvpilot_autoscaler_desired_replicas" in f,
                timeout=60,
                what="the autoscaler's first decision in /metrics",
            )
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
    used = {n for e in chart_promql().values() for n in metric_names(e) if n.startswith("kvpilot_")}
    missing = sorted(n for n in used if family_of(n, families) is None)
    assert not missing, f"not in the operator's /metrics: {missing}"


def test_helm_upgrade_upgrades_the_crd(cluster: Cluster, release: str, tmp_path: Path) -> None:
    """A changed CRD in the chart reaches the cluster on `helm upgrade`; objects stay."""
    kube = cluster.kube
    ns = new_namespace(kube, "chart-upgrade")
    try:
        apply(kube, ns, service("kept"))
        changed = tmp_path / "kvpilot"
        shutil.copytree(CHART, changed)
        crd_file = changed / "files" / "crds" / "kvpilot.io_inferenceservices.yaml"
        crd = yaml.safe_load(crd_file.read_text())
        columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        columns.insert(
            0, {"name": "Served", "type": "string", "jsonPath": ".spec.model.servedName"}
        )
        crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
        with OperatorProcess.others_paused():
            helm(cluster, "upgrade", RELEASE, str(changed), "-n", RELEASE_NS,
                 "-f", str(DEV_VALUES), "--wait")  # fmt: skip
            live = kube.get("crd", CRD)
            assert live is not None
            names = [c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]]
            assert names[0] == "Served"
            assert "SERVED" in kube("get", "infsvc", "-n", ns)
            assert kube.get("inferenceservice", "kept", ns) is not None
            # And back: the chart as it is.
            helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS,
                 "-f", str(DEV_VALUES), "--wait")  # fmt: skip
            live = kube.get("crd", CRD)
            assert live is not None
            names = [c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]]
            assert "Served" not in names
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_uninstall_leaves_inferenceservices_in_place(cluster: Cluster, release: str) -> None:
    """Runs last in this module: it uninstalls the module's release."""
    kube = cluster.kube
    ns = new_namespace(kube, "chart-uninstall")
    try:
        apply(kube, ns, service("survivor"))
        uid = kube.get("inferenceservice", "survivor", ns)["metadata"]["uid"]  # type: ignore[index]
        with OperatorProcess.others_paused():
            out = helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait").stdout
            assert "kept due to the resource policy" in out or "uninstalled" in out
            assert kube.get("deployment", RELEASE, RELEASE_NS) is None
            assert kube.get("clusterrole", RELEASE) is None
            assert kube.get("crd", CRD) is not None
            still = kube.get("inferenceservice", "survivor", ns)
            assert still is not None and still["metadata"]["uid"] == uid
            # Installing again adopts the kept CRD and serves the same objects.
            install(cluster, RELEASE, RELEASE_NS)
            assert kube.get("inferenceservice", "survivor", ns)["metadata"]["uid"] == uid  # type: ignore[index]
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
