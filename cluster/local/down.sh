#!/usr/bin/env bash
# Stop the local cluster up.sh started (only its processes; other Ray instances are left alone).
# Idempotent: nothing running is not an error.
#
#   cluster/local/down.sh            # stop every node
#   cluster/local/down.sh worker 2   # stop one worker node (a node lost mid-run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${RP_CLUSTER_STATE:-$here/.state}
[ -f "$state/temp_dir" ] || { echo "no cluster state in $state: nothing to stop"; exit 0; }
tmp=$(cat "$state/temp_dir")
if [ "${1:-}" = worker ]; then
  # A node's raylet carries its name; killing it (and the workers it started) is a lost node.
  pattern="node-name=rp-worker-${2:?worker number}"
  pids=$(pgrep -f -- "$pattern" || true)
  for pid in $pids; do pkill -9 -P "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
  echo "worker ${2} stopped"
  exit 0
fi
if pgrep -f -- "$tmp" >/dev/null 2>&1; then
  pkill -TERM -f -- "$tmp" || true
  for _ in $(seq 1 50); do pgrep -f -- "$tmp" >/dev/null 2>&1 || break; sleep 0.2; done
  pkill -9 -f -- "$tmp" || true
  echo "cluster stopped"
else
  echo "cluster not running"
fi
