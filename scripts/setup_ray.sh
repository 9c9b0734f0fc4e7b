#!/usr/bin/env bash
# A two-node local Ray cluster on this machine, for the Ray tests (tests/test_ray*.py) and for trying
# `orchestr launch launch.backend=ray`: a head node and one more node process, each advertising
# a custom resource named after a node of conf/cluster/ray_local.yaml (`ray-head`, `ray-node-1`),
# so a worker pinned to one of them is visibly placed there. Idempotent: when both nodes already
# answer it only says so. The dashboard (state API) listens on 127.0.0.1; Ray's own servers
# (GCS, raylets, agents) use this machine's address whatever --node-ip-address says (Ray turns
# 127.0.0.1 into it), so keep the machine behind a firewall as for any Ray cluster. orchestr's
# services listen where the cluster YAML says (127.0.0.1 in conf/cluster/ray_local.yaml).
#
#   scripts/setup_ray.sh          start (installs ray[default] into .venv when missing)
#   scripts/setup_ray.sh --install  only install ray[default] when missing (what scripts/test.sh
#                                   runs: tests/test_ray.py starts the cluster and stops it after)
#   scripts/setup_ray.sh --check  exit 1 unless both nodes are up; change nothing
#   scripts/setup_ray.sh --stop   stop this machine's Ray processes (`ray stop`)
#
# ORCHESTR_RAY_PORT (6379) and ORCHESTR_RAY_DASHBOARD_PORT (8265) move the head's ports.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
RAY=$(dirname "$PY")/ray
PORT=${ORCHESTR_RAY_PORT:-6379}
DASH=${ORCHESTR_RAY_DASHBOARD_PORT:-8265}
ADDR=127.0.0.1:$PORT

nodes_up() {  # number of live nodes, 0 when no cluster answers
  timeout 60 "$PY" - "$PORT" <<'EOF' 2>/dev/null || echo 0
import socket, sys
port = int(sys.argv[1])
with socket.socket() as s:
    s.settimeout(1)
    if s.connect_ex(("127.0.0.1", port)) != 0:  # ray.init would retry for minutes
        print(0)
        raise SystemExit
import ray
ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
}

case "${1:-}" in
  --check) [[ $(nodes_up) -ge 2 ]] && exit 0 || exit 1 ;;
  --stop) "$RAY" stop --force >/dev/null 2>&1 || true; exit 0 ;;
esac

if ! "$PY" -c "import ray, aiohttp" 2>/dev/null; then
  # [default]: the dashboard, which serves the state API (`orchestr status`, placement checks)
  "$PY" -m pip install --quiet --disable-pip-version-check "ray[default]>=2.60"
fi
[[ "${1:-}" == "--install" ]] && exit 0

n=$(nodes_up)
if [[ $n -ge 2 ]]; then
  echo "ray already up: $n nodes at $ADDR"
  exit 0
fi
export RAY_USAGE_STATS_ENABLED=0
common=(--node-ip-address=127.0.0.1 --num-cpus=8 --object-store-memory=100000000 --disable-usage-stats)
if [[ $n -eq 0 ]]; then
  "$RAY" start --head --port="$PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASH" \
    --include-dashboard=true --resources='{"ray-head": 1000}' "${common[@]}" >/dev/null
fi
# a second node on the same address needs its own dashboard-agent port (logs, state API)
"$RAY" start --address="$ADDR" --resources='{"ray-node-1": 1000}' --dashboard-agent-listen-port=$((DASH + 44102)) \
  "${common[@]}" >/dev/null
for _ in $(seq 60); do
  [[ $(nodes_up) -ge 2 ]] && break
  sleep 1
done
n=$(nodes_up)
if [[ $n -lt 2 ]]; then
  echo "setup_ray.sh: only $n Ray node(s) came up at $ADDR" >&2
  exit 1
fi
echo "ray up: $n nodes at $ADDR (dashboard http://127.0.0.1:$DASH)"
