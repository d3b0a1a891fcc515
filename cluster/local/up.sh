#!/usr/bin/env bash
# Start a real local Ray cluster: a head and N worker nodes, each its own `ray start` (own raylet,
# own resources), token authentication on. Idempotent: what already runs is left as it is.
#
#   cluster/local/up.sh [N]          # N worker nodes (default 2)
#   source cluster/local/.state/env  # RAY_ADDRESS (job API), RP_GCS_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN
#
# Settings (environment): RP_CLUSTER_STATE (default cluster/local/.state), RP_HEAD_PORT (6380),
# RP_DASHBOARD_PORT (8266), RP_HEAD_CPUS (1), RP_WORKER_CPUS (1), RAY (the project's .venv/bin/ray).
set -euo pipefail
n=${1:-2}
here=$(cd "$(dirname "$0")" && pwd)
state=${RP_CLUSTER_STATE:-$here/.state}
port=${RP_HEAD_PORT:-6380}
dashboard=${RP_DASHBOARD_PORT:-8266}
ray_bin=${RAY:-$here/../../.venv/bin/ray}
[ -x "$ray_bin" ] || ray_bin=$(command -v ray)
python_bin=$(dirname "$ray_bin")/python
# Jobs run with the nodes' environment: the project's Python and `ray-pipeline` come first on PATH.
export PATH="$(dirname "$ray_bin"):$PATH"
mkdir -p "$state"
state=$(cd "$state" && pwd)
# Ray's unix sockets live under the temp dir and must stay under 107 bytes: keep it short, and
# unique per state dir so down.sh stops exactly this cluster's processes.
tmp="/tmp/rpc-$(printf '%s' "$state" | sha1sum | cut -c1-10)"
[ -s "$state/token" ] || "$python_bin" -c 'import secrets; print(secrets.token_hex(32))' > "$state/token"
chmod 600 "$state/token"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat "$state/token")" RAY_USAGE_STATS_ENABLED=0
# Fast failure detection: a lost node is declared dead after ~3 s instead of ~30 s.
export RAY_health_check_period_ms=1000 RAY_health_check_timeout_ms=1000 RAY_health_check_failure_threshold=3
export RAY_TRAIN_ENABLE_PRINT_PATCH=0
# RAY_ADDRESS is the job API (ray job submit/list/logs); a driver run by hand joins with
# `--address $RP_GCS_ADDRESS` (or RAY_ADDRESS=$RP_GCS_ADDRESS).
cat > "$state/env" <<ENV
export RAY_ADDRESS=http://127.0.0.1:$dashboard
export RP_GCS_ADDRESS=127.0.0.1:$port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$RAY_AUTH_TOKEN
ENV
echo "$tmp" > "$state/temp_dir"

node_ports() {  # each node's agents on their own free ports: several nodes (and other Ray instances) share this box
  # Below the OS's ephemeral range (32768+) and above Ray's worker ports (10002-19999): a port the
  # OS hands out as ephemeral could be taken by the raylet's own gRPC servers before the agent binds
  # it (seen: "dashboard_agent ... Address already in use" and the node never registering).
  "$python_bin" - <<'PY'
import random, socket
picked = []
for port in random.sample(range(20000, 25000), 5000):
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
    picked.append(port)
    if len(picked) == 4:
        break
a, b, c, d = picked
print(f"--dashboard-agent-listen-port={a} --dashboard-agent-grpc-port={b} --metrics-export-port={c} --runtime-env-agent-port={d}")
PY
}

alive_nodes() {  # names of the alive nodes of this cluster, one per line (nothing if no head)
  "$python_bin" - "$port" <<'PY' 2>/dev/null || true
import sys, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="ERROR", log_to_driver=False)
for node in ray.nodes():
    if node["Alive"]:
        print(node.get("NodeName") or "")
PY
}

if ! pgrep -f -- "$tmp/session" >/dev/null 2>&1; then
  "$ray_bin" start --head --port="$port" --dashboard-host=127.0.0.1 --dashboard-port="$dashboard" \
    --num-cpus="${RP_HEAD_CPUS:-1}" --resources='{"head": 1}' --node-name=rp-head \
    --temp-dir="$tmp" --disable-usage-stats $(node_ports) >"$state/head.log" 2>&1
  echo "head started: 127.0.0.1:$port (dashboard and job API http://127.0.0.1:$dashboard)"
else
  echo "head already running: 127.0.0.1:$port"
fi
running=$(alive_nodes)
for i in $(seq 1 "$n"); do
  if grep -qx "rp-worker-$i" <<<"$running"; then
    echo "worker $i already running"
    continue
  fi
  "$ray_bin" start --address="127.0.0.1:$port" --num-cpus="${RP_WORKER_CPUS:-1}" \
    --resources="{\"worker_$i\": 1}" --node-name="rp-worker-$i" $(node_ports) >"$state/worker-$i.log" 2>&1
  echo "worker $i started (resource worker_$i)"
done
echo "clients: source $state/env"
