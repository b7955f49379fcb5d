#!/usr/bin/env bash
# kvpilot demo on the local dev cluster: control plane with fake GPU nodes,
# the operator running as `kvpilot run`, the examples applied, status shown.
#   bash e2e/demo.sh        start (idempotent)
#   bash e2e/demo.sh down   stop the operator and the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
KVPILOT=.venv/bin/kvpilot
export KUBECONFIG="$PWD/.dev-cluster/kubeconfig"
export PATH="$PWD/.dev-cluster/bin:$PATH"
NS=kvpilot-demo
OP_PID=.dev-cluster/operator.pid
OP_LOG=.dev-cluster/logs/operator.log

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

stop_operator() {
  if [ -f "$OP_PID" ] && kill -0 "$(cat "$OP_PID")" 2>/dev/null; then
    kill "$(cat "$OP_PID")" && echo "stopped the operator"
  fi
  rm -f "$OP_PID"
}

if [ "${1:-}" = "down" ]; then
  stop_operator
  [ -f "$KVPILOT" ] && $KVPILOT dev-cluster down
  exit 0
fi

say "Local control plane with fake GPU nodes (first run builds Kubernetes, kwok and helm: many minutes)"
$KVPILOT dev-cluster up
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count

say "Installing the InferenceService CRD"
kubectl apply --server-side --force-conflicts -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/inferenceservices.kvpilot.io

say "Starting the operator (kvpilot run; log in $OP_LOG)"
stop_operator
mkdir -p "$(dirname "$OP_LOG")"
nohup $KVPILOT run --metrics-port 18080 --health-port 18081 >"$OP_LOG" 2>&1 &
echo $! >"$OP_PID"
for _ in $(seq 1 60); do
  grep -q "Initial authentication has finished" "$OP_LOG" 2>/dev/null && break
  kill -0 "$(cat "$OP_PID")" 2>/dev/null || { cat "$OP_LOG"; exit 1; }
  sleep 0.5
done
# Let the dev cluster's Prometheus scrape the operator's metrics.
printf '[{"targets": ["127.0.0.1:18080"], "labels": {"component": "kvpilot-operator"}}]\n' \
  >.dev-cluster/prometheus/operator/operator.json

say "Applying the examples to namespace $NS"
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

cat <<MSG

The demo is running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$PWD/.dev-cluster/bin:\$PATH
  kubectl describe infsvc -n $NS llama-3-1-70b
  kubectl scale infsvc -n $NS llama-3-1-8b --replicas=2
Stop everything with: make demo-down
MSG
