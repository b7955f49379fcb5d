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

say "Installing the InferenceService CRD"
kubectl apply --server-side --force-conflicts -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/inferenceservices.kvpilot.io

say "Starting the operator (kvpilot run; log in $OP_LOG)"
stop_operator
mkdir -p "$(dirname "$OP_LOG")"
nohup $KVPILOT run --metrics-port 18080 --health-port 18081 --scheduler-name kvpilot-binpack \
  --prometheus-url "$(.venv/bin/python -c "from e2e import devcluster; print(devcluster.prometheus_url())")" --autoscale-interval 5 >"$OP_LOG" 2>&1 &
echo $! >"$OP_PID"
for _ in $(seq 1 60); do
  grep -q "Initial authentication has finished" "$OP_LOG" 2>/dev/null && break
  kill -0 "$(cat "$OP_PID")" 2>/dev/null || { cat "$OP_LOG"; exit 1; }
  sleep 0.5
done
# Let the dev cluster's Prometheus scrape the operator's metrics.
printf '[{"targets": ["127.0.0.1:18080"], "labels": {"component": "kvpilot-operator"}}]\n' \
  >.dev-cluster/prometheus/operator/operator.json

say "Starting the pod runner: a simulated vLLM replica for each Running pod in $NS (log in $RUNNER_LOG)"
stop_runner
nohup .venv/bin/python -m e2e.podrunner -n "$NS" >"$RUNNER_LOG" 2>&1 &
echo $! >"$RUNNER_PID"

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

The demo is running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$PWD/.dev-cluster/bin:\$PATH
  kubectl describe infsvc -n $NS llama-3-1-70b
  kubectl scale infsvc -n $NS llama-3-1-8b --replicas=2
  .venv/bin/kvpilot-loadgen -n $NS -s llama-3-1-8b --trace bench/traces/azure-llm-2023-conv.csv --time-scale 1
Stop everything with: make demo-down
MSG
