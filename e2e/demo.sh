#!/usr/bin/env bash
# kvpilot demo on the local dev cluster: control plane with fake GPU nodes, the Helm
# chart installed with helm, the operator running from the checkout as the chart's
# ServiceAccount, sample services of different sizes placed and autoscaled under load.
#   bash e2e/demo.sh        start (idempotent)
#   bash e2e/demo.sh down   stop the operator and the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
KVPILOT=.venv/bin/kvpilot
export KUBECONFIG="$PWD/.dev-cluster/kubeconfig"
export PATH="$PWD/.dev-cluster/bin:$PATH"
NS=kvpilot-demo
RELEASE=kvpilot
RELEASE_NS=kvpilot-system
SA_KUBECONFIG="$PWD/.dev-cluster/kvpilot-operator.kubeconfig"
# Several dev clusters may run on one machine: the operator's ports follow the offset.
METRICS_PORT=$((18080 + ${KVPILOT_DEV_CLUSTER_PORT_OFFSET:-0}))
HEALTH_PORT=$((18081 + ${KVPILOT_DEV_CLUSTER_PORT_OFFSET:-0}))
OP_PID=.dev-cluster/operator.pid
OP_LOG=.dev-cluster/logs/operator.log
RUNNER_PID=.dev-cluster/pod-runner.pid
RUNNER_LOG=.dev-cluster/logs/pod-runner.log
LOAD_LOG=.dev-cluster/logs/demo-load.log

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

stop_pid() {  # stop_pid PIDFILE WHAT
  if [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill "$(cat "$1")" && echo "stopped the $2"
    for _ in $(seq 1 40); do kill -0 "$(cat "$1")" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$1"
}
stop_operator() { stop_pid "$OP_PID" operator; }
stop_runner() { stop_pid "$RUNNER_PID" "pod runner"; }

if [ "${1:-}" = "down" ]; then
  stop_operator
  stop_runner
  [ -f "$KVPILOT" ] && .venv/bin/python -m e2e.devcluster down
  exit 0
fi

say "Local control plane with fake GPU nodes (first run builds Kubernetes, kwok and helm: many minutes)"
.venv/bin/python -m e2e.devcluster up
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count

PROM_URL="$(.venv/bin/python -c "from e2e import devcluster; print(devcluster.prometheus_url())")"
CRD=inferenceservices.kvpilot.io
say "Installing the chart: helm upgrade --install $RELEASE charts/kvpilot -n $RELEASE_NS"
if kubectl get crd "$CRD" >/dev/null 2>&1 &&
   [ -z "$(kubectl get crd "$CRD" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')" ]; then
  echo "adopting the CRD applied earlier from crds/ into the release"
  kubectl label --overwrite crd "$CRD" app.kubernetes.io/managed-by=Helm
  kubectl annotate --overwrite crd "$CRD" meta.helm.sh/release-name="$RELEASE" \
    meta.helm.sh/release-namespace="$RELEASE_NS"
fi
# The dev cluster's nodes run no containers: the chart's Deployment keeps 0 replicas and
# the operator runs below from this checkout, as the chart's ServiceAccount.
helm upgrade --install "$RELEASE" charts/kvpilot -n "$RELEASE_NS" --create-namespace \
  -f e2e/chart-values-devcluster.yaml --set operator.prometheusUrl="$PROM_URL" \
  --set operator.autoscaleInterval=5 --set operator.schedulerName=kvpilot-binpack --wait --timeout 120s | sed -n '/^NOTES:/,$p'
kubectl get -n "$RELEASE_NS" serviceaccount,deployment,role,rolebinding -l app.kubernetes.io/instance="$RELEASE"
kubectl get clusterrole,clusterrolebinding -l app.kubernetes.io/instance="$RELEASE"

say "The operator's identity: a token of ServiceAccount $RELEASE_NS/$RELEASE (kubectl create token)"
.venv/bin/python - "$SA_KUBECONFIG" "$RELEASE_NS" "$RELEASE" <<'PY'
import sys
from pathlib import Path
from e2e import devcluster
from e2e.helpers import Kube
from e2e.operator import service_account_kubeconfig
layout = devcluster.Layout.default()
out = service_account_kubeconfig(Kube(layout.kubeconfig, layout.bin), sys.argv[2], sys.argv[3], Path(sys.argv[1]))
print(f"wrote {out}")
PY
echo "what the chart's RBAC refuses it, for example reading Secrets:"
kubectl --kubeconfig "$SA_KUBECONFIG" get secrets -A 2>&1 | sed 's/^/  /' || true

say "Starting the operator (kvpilot run as system:serviceaccount:$RELEASE_NS:$RELEASE; log in $OP_LOG)"
stop_operator
mkdir -p "$(dirname "$OP_LOG")"
KUBECONFIG="$SA_KUBECONFIG" POD_NAMESPACE="$RELEASE_NS" nohup $KVPILOT run \
  --metrics-port "$METRICS_PORT" --health-port "$HEALTH_PORT" --scheduler-name kvpilot-binpack \
  --prometheus-url "$PROM_URL" --autoscale-interval 5 >"$OP_LOG" 2>&1 &
echo $! >"$OP_PID"
for _ in $(seq 1 60); do
  grep -q "Initial authentication has finished" "$OP_LOG" 2>/dev/null && break
  kill -0 "$(cat "$OP_PID")" 2>/dev/null || { cat "$OP_LOG"; exit 1; }
  sleep 0.5
done
# Let the dev cluster's Prometheus scrape the operator's metrics.
printf '[{"targets": ["127.0.0.1:%s"], "labels": {"component": "kvpilot-operator"}}]\n' "$METRICS_PORT" \
  >.dev-cluster/prometheus/operator/operator.json

say "Starting the pod runner: a simulated vLLM replica for each Running pod in $NS (log in $RUNNER_LOG)"
stop_runner
nohup .venv/bin/python -m e2e.podrunner -n "$NS" >"$RUNNER_LOG" 2>&1 &
echo $! >"$RUNNER_PID"

say "Applying sample services of three sizes to namespace $NS: 70B at TP4 on H100, 8B and a 7B AWQ on L4"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NS" -f examples/

say "Waiting for every InferenceService to be Ready"
kubectl wait -n "$NS" --for=condition=Ready --timeout=180s inferenceservices --all

say "kubectl get inferenceservices"
kubectl get -n "$NS" inferenceservices
say "What kvpilot created"
kubectl get -n "$NS" deployments,services,poddisruptionbudgets,pods -o wide
say "Events"
kubectl get -n "$NS" events --sort-by=.lastTimestamp --field-selector involvedObject.kind=InferenceService | tail -15
say "Placement of the pool (kvpilot plan)"
$KVPILOT plan 2>/dev/null || true

if [ "${KVPILOT_DEMO_LOAD:-1}" = "1" ]; then
  SVC=llama-3-1-8b
  say "Autoscaling: a load ramp on $SVC, then quiet (windows shortened for the demo)"
  # Three more L4s are free: up to 3 replicas stay on the GPU type the service runs on.
  kubectl patch -n "$NS" infsvc "$SVC" --type merge -p '{"spec":{"scaling":{
    "maxReplicas":3,"stableWindowSeconds":30,"panicWindowSeconds":10,
    "coldStartGraceSeconds":60,"scaleUp":{"periodSeconds":10},
    "scaleDown":{"stabilizationWindowSeconds":30,"periodSeconds":10}}}}'
  .venv/bin/kvpilot-loadgen -n "$NS" -s "$SVC" --schedule "20:0.5..6,40:6" \
    --prompt-tokens 512 --output-tokens 128 --out .dev-cluster/logs/demo-load.jsonl \
    >"$LOAD_LOG" 2>&1 &
  LOAD=$!
  printf '%-7s %-5s %-8s %-6s %s\n' TIME LOAD DESIRED READY "AUTOSCALER REASON"
  start=$(date +%s)
  quiet=""
  while true; do
    now=$(( $(date +%s) - start ))
    if kill -0 "$LOAD" 2>/dev/null; then phase=on; else phase=off; quiet=${quiet:-$now}; fi
    row=$(kubectl get -n "$NS" infsvc "$SVC" -o \
      jsonpath='{.status.desiredReplicas}|{.status.readyReplicas}|{.status.autoscaler.reason}')
    IFS='|' read -r want ready reason <<<"$row"
    printf '%-7s %-5s %-8s %-6s %s\n' "+${now}s" "$phase" "$want" "${ready:-0}" "${reason:0:110}"
    if [ -n "$quiet" ] && { [ "$want" = 1 ] || [ $(( now - quiet )) -gt 120 ]; }; then break; fi
    sleep 5
  done
  wait "$LOAD" || { cat "$LOAD_LOG"; exit 1; }
  echo "load generator:"; grep -E '"(requests|ok|errors|ttft_p50_s|ttft_p90_s)"' "$LOAD_LOG" || true
  kubectl get -n "$NS" events --sort-by=.lastTimestamp \
    --field-selector "involvedObject.name=$SVC" | grep -E "Scaled(Up|Down)|REASON" || true
fi

cat <<MSG

The demo is running: the chart is installed as release $RELEASE in $RELEASE_NS and the
operator runs as its ServiceAccount (log: $OP_LOG). Look around:
  export KUBECONFIG=$KUBECONFIG PATH=$PWD/.dev-cluster/bin:\$PATH
  kubectl get infsvc -n $NS                        # placement: GPU type, TP, replicas
  kubectl describe infsvc -n $NS llama-3-1-70b     # conditions, placement, Events
  kubectl get pods -n $NS -o wide                  # which fake GPU node each replica is on
  kubectl scale infsvc -n $NS llama-3-1-8b --replicas=2
  .venv/bin/kvpilot-loadgen -n $NS -s llama-3-1-8b --trace bench/traces/azure-llm-2023-conv.csv --time-scale 1
  curl -s localhost:$METRICS_PORT/metrics | grep '^kvpilot_'    # the operator's metrics
  helm status $RELEASE -n $RELEASE_NS; helm get values $RELEASE -n $RELEASE_NS
  kubectl --kubeconfig $SA_KUBECONFIG auth can-i --list   # what the chart lets the operator do
  helm uninstall $RELEASE -n $RELEASE_NS   # keeps the CRD and the InferenceServices
Stop everything with: make demo-down
MSG
