#!/usr/bin/env bash
# End-to-end on a throwaway kind cluster, as a user's CI would run it: two workers labelled as the inference
# and training pools, the images built and loaded (the mock-model image stands in for infer and train),
# `helm install`, an AgentQRound on 5 tasks with the scripted backend, then checks that it Succeeded, that the
# report artifacts are on the PVC, and that the sandbox pod cannot reach the network.
#
# Needs docker, kind, kubectl and helm on PATH. It cannot run on a machine without a Docker engine.
#   scripts/e2e-kind.sh            # create the cluster, run, delete it
#   KEEP_CLUSTER=1 scripts/e2e-kind.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${CLUSTER:-agentq-e2e}"
NS="${NS:-agentq-system}"
TAG=ci
ROUND_FILE="$ROOT/images/mock-model/round.yaml"
ROUND="$(awk '/^metadata:/{m=1} m && /name:/{print $2; exit}' "$ROUND_FILE")"
TIMEOUT="${TIMEOUT:-900}"
log() { printf '\n== %s\n' "$*" >&2; }

cleanup() {
  status=$?
  if [[ $status -ne 0 ]]; then
    log "failed: state for the log"
    kubectl get agentqrounds,jobs,pods -A -o wide || true
    kubectl -n "$NS" describe agentqround "$ROUND" || true
    kubectl -n "$NS" logs deploy/agentq-operator --tail=200 || true
  fi
  if [[ -z "${KEEP_CLUSTER:-}" ]]; then
    kind delete cluster --name "$CLUSTER" || true
    rm -rf "${SHARED:?}" 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT

# The artifact volume must be shared by both pools (collect writes on one node, train reads on the other);
# kind's default storage is node-local, so one host directory is mounted into both workers and offered as a
# ReadWriteMany hostPath PersistentVolume.
SHARED="$(mktemp -d "${RUNNER_TEMP:-/tmp}/agentq-artifacts.XXXX")"
chmod 0777 "$SHARED"

log "kind cluster $CLUSTER: a control plane and two workers (inference, training pools)"
kind create cluster --name "$CLUSTER" --wait 120s --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels: {agentq.dev/pool: inference}
    extraMounts: [{hostPath: "$SHARED", containerPath: /agentq-artifacts}]
  - role: worker
    labels: {agentq.dev/pool: training}
    extraMounts: [{hostPath: "$SHARED", containerPath: /agentq-artifacts}]
KIND
kubectl apply -f - <<'PV'
apiVersion: v1
kind: PersistentVolume
metadata: {name: agentq-artifacts-e2e}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: agentq-shared
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /agentq-artifacts, type: Directory}
PV

log "building and loading images"
for image in controller sandbox mock-model; do
  docker build -q -f "$ROOT/images/$image/Dockerfile" -t "agentq-$image:$TAG" "$ROOT"
  kind load docker-image --name "$CLUSTER" "agentq-$image:$TAG"
done

log "CEL variant of the round CRD (kind runs a current Kubernetes); helm keeps a CRD that exists"
kubectl apply --server-side -f "$ROOT/manifests/crd-cel.yaml"
kubectl wait --for=condition=Established crd/agentqrounds.agentq.dev --timeout=60s

log "helm install"
helm install agentq "$ROOT/charts/agentq" --namespace "$NS" --create-namespace \
  -f "$ROOT/charts/agentq/ci/kind-values.yaml" --wait --timeout 5m
helm test agentq --namespace "$NS" --timeout 2m

log "round $ROUND"
kubectl apply -n "$NS" -f "$ROUND_FILE"
deadline=$((SECONDS + TIMEOUT))
phase=""
while (( SECONDS < deadline )); do
  phase="$(kubectl -n "$NS" get agentqround "$ROUND" -o jsonpath='{.status.phase}')"
  printf '%s phase=%s\n' "$(date +%T)" "${phase:-Pending}"
  [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
  sleep 10
done
kubectl -n "$NS" get agentqround "$ROUND"
if kubectl -n "$NS" patch agentqround "$ROUND" --type=merge -p '{"spec":{"model":{"base":"edited/model"}}}' \
    2>"$SHARED/cel.err"; then
  echo "a model edit after the start was admitted" >&2; exit 1
fi
grep -q "spec.model cannot change after the round started" "$SHARED/cel.err" || { cat "$SHARED/cel.err" >&2; exit 1; }
kubectl -n "$NS" patch agentqround "$ROUND" --type=merge -p '{"spec":{"backoffLimit":3}}'
[[ "$phase" == Succeeded ]] || { echo "round ended as ${phase:-nothing} after ${TIMEOUT}s" >&2; exit 1; }

log "Jobs ran on their pools"
for step in collect train; do
  pool=$([[ $step == train ]] && echo training || echo inference)
  nodes="$(kubectl -n "$NS" get pods -l "agentq.dev/round=$ROUND,agentq.dev/step=$step" \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)"
  for node in $nodes; do
    [[ "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.agentq\.dev/pool}')" == "$pool" ]] \
      || { echo "$step pod ran on $node, not in pool $pool" >&2; exit 1; }
  done
done

log "report artifacts on the PVC"
kubectl -n "$NS" run artifacts-check --image="agentq-mock-model:$TAG" --restart=Never \
  --overrides='{"spec":{"containers":[{"name":"check","image":"agentq-mock-model:'"$TAG"'",
    "command":["ls","-l","/artifacts/rounds/'"$ROUND"'/eval/report.md","/artifacts/rounds/'"$ROUND"'/eval/summary.json",
               "/artifacts/rounds/'"$ROUND"'/merged/config.json","/artifacts/rounds/'"$ROUND"'/preferences.jsonl"],
    "volumeMounts":[{"name":"a","mountPath":"/artifacts"}]}],
    "volumes":[{"name":"a","persistentVolumeClaim":{"claimName":"agentq-artifacts"}}]}}'
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/artifacts-check --timeout=120s
kubectl -n "$NS" logs artifacts-check
kubectl -n "$NS" delete pod artifacts-check --wait=false

log "the sandbox pod cannot reach the network"
# No egress rule at all: DNS fails, and so does a connection to the API server's service IP.
api_ip="$(kubectl get svc kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
if kubectl -n "$NS" exec deploy/agentq-sandbox -- python -c "
import socket, sys
socket.setdefaulttimeout(5)
try:
    socket.create_connection(('$api_ip', 443)); sys.exit('sandbox reached $api_ip:443')
except OSError as err:
    print('blocked:', err)
try:
    socket.getaddrinfo('kubernetes.default', 443); sys.exit('sandbox resolved a name')
except OSError as err:
    print('no DNS:', err)
"; then
  echo "sandbox egress is blocked"
else
  echo "the sandbox pod reached the network" >&2; exit 1
fi

log "e2e passed"
