#!/usr/bin/env bash
# The real single-node Kubernetes cluster of `make e2e` (tests/e2e/cluster.py), by hand:
#   scripts/cluster.sh up       # prints `export KUBECONFIG=... PATH=...` to eval
#   scripts/cluster.sh status   # JSON: which daemons run
#   scripts/cluster.sh down     # removes everything `up` made
# One cluster per machine (kubelet's fixed paths): a second `up` refuses with one line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[[ -x "$ROOT/.venv/bin/python" ]] || { echo "cluster: run \`make setup\` first" >&2; exit 2; }
if [[ "${1:-}" == up ]]; then
  # kubelet, kube-scheduler, kube-proxy and pause are built once from the Kubernetes source (cached).
  AGENTQ_TESTENV_BIN="$("$ROOT/scripts/testenv.sh" --node)"
  export AGENTQ_TESTENV_BIN
fi
PYTHONPATH="$ROOT/tests" exec "$ROOT/.venv/bin/python" -m e2e.cluster "$@"
