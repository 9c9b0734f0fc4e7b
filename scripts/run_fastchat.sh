#!/usr/bin/env bash
# Run FastChat 0.2.36 (controller + model_worker + openai_api_server) on the embedded model as a
# benchmark peer for `orchestr bench serve` (issue 10). Needs .venv-fastchat
# (scripts/setup_fastchat.sh) and the main .venv (to locate orchestr's converted safetensors folder).
#
# Usage:
#   scripts/run_fastchat.sh PORT_BASE     start: controller on PORT_BASE, model_worker on +1,
#                                         API server on +2; waits until /v1/models lists the
#                                         model, then prints the base URL (last line of stdout)
#   scripts/run_fastchat.sh stop [PORT_BASE]   stop that instance (default: every one started)
#
# Environment: FASTCHAT_MODEL_PATH (default: orchestr's converted embedded model),
#   FASTCHAT_MODEL_NAME (smollm2-135m), FASTCHAT_CONV_TEMPLATE (qwen-7b-chat; set it empty
#   for FastChat's own pick), FASTCHAT_START_TIMEOUT (300 s), FASTCHAT_LOG_DIR
#   (${TMPDIR:-/tmp}/fastchat-PORT_BASE), FASTCHAT_VENV (.venv-fastchat).
# The worker runs with FastChat's CPU defaults: --device cpu, fp32, --limit-worker-concurrency 5.
#
# Why a conversation template: FastChat picks templates by folder name and falls back to
# "one_shot" for this one, a ~450-token Human/Assistant example prompt after which SmolLM2 stops
# at "###" within ~20 tokens, so a 128-token load would measure mostly prefill. SmolLM2 is a
# ChatML model; qwen-7b-chat is FastChat 0.2.36's plain ChatML template (<|im_start|>/<|im_end|>,
# default system "You are a helpful assistant."), which gives the same prompt format orchestr's
# worker renders from the model's own chat template and lets answers run to max_tokens.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTCHAT_VENV:-$repo/.venv-fastchat}"
state_dir="${TMPDIR:-/tmp}/orchestr-fastchat"
usage="usage: $0 PORT_BASE | $0 stop [PORT_BASE]"

stop_instance() {  # $1: pid file; each service is its own process-group leader (setsid)
  local pidfile="$1" pid
  while read -r pid; do
    [ -n "$pid" ] || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
  done <"$pidfile"
  sleep 2
  while read -r pid; do
    [ -n "$pid" ] || continue
    kill -KILL -- "-$pid" 2>/dev/null || true
  done <"$pidfile"
  rm -f "$pidfile"
}

if [ "${1:-}" = "stop" ]; then
  shopt -s nullglob
  if [ -n "${2:-}" ]; then files=("$state_dir/$2.pids"); else files=("$state_dir"/*.pids); fi
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    echo ">> stopping FastChat on port base $(basename "$f" .pids)"
    stop_instance "$f"
  done
  exit 0
fi

base="${1:-}"
[[ "$base" =~ ^[0-9]+$ ]] || { echo "$usage" >&2; exit 2; }
[ -x "$venv/bin/python" ] || { echo "no $venv: run scripts/setup_fastchat.sh first" >&2; exit 1; }
controller_port=$base
worker_port=$((base + 1))
api_port=$((base + 2))
name="${FASTCHAT_MODEL_NAME:-smollm2-135m}"
timeout="${FASTCHAT_START_TIMEOUT:-300}"
log_dir="${FASTCHAT_LOG_DIR:-${TMPDIR:-/tmp}/fastchat-$base}"
mkdir -p "$state_dir" "$log_dir"
pidfile="$state_dir/$base.pids"
[ ! -s "$pidfile" ] || { echo "FastChat already started on $base (stop it: $0 stop $base)" >&2; exit 1; }

model_path="${FASTCHAT_MODEL_PATH:-}"
if [ -z "$model_path" ]; then
  # orchestr converts the embedded GGUF once into a safetensors folder FastChat can load.
  model_path="$("$repo/.venv/bin/python" -c 'from orchestr.engine.loader import resolve_model_path
print(resolve_model_path("embedded://SmolLM2-135M-Instruct"))')"
fi

for port in "$controller_port" "$worker_port" "$api_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use" >&2; exit 1
  fi
done

py="$venv/bin/python"
# FastChat writes its own log files into $LOGDIR (default: the working directory).
export LOGDIR="$log_dir"
start() {  # $1: log name, rest: command; setsid makes it a process-group leader for `stop`
  local log="$log_dir/$1.out"; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo $! >>"$pidfile"
}
fail() {
  echo "FastChat did not start: $1 (logs in $log_dir)" >&2
  tail -n 20 "$log_dir"/*.out >&2 || true
  stop_instance "$pidfile"
  exit 1
}

controller="http://127.0.0.1:$controller_port"
start controller "$py" -m fastchat.serve.controller --host 127.0.0.1 --port "$controller_port"
worker_args=(--host 127.0.0.1 --port "$worker_port" --worker-address "http://127.0.0.1:$worker_port"
  --controller-address "$controller" --model-path "$model_path" --model-names "$name" --device cpu)
conv_template="${FASTCHAT_CONV_TEMPLATE-qwen-7b-chat}"
[ -z "$conv_template" ] || worker_args+=(--conv-template "$conv_template")
start model_worker "$py" -m fastchat.serve.model_worker "${worker_args[@]}"
start openai_api_server "$py" -m fastchat.serve.openai_api_server --host 127.0.0.1 \
  --port "$api_port" --controller-address "$controller"

url="http://127.0.0.1:$api_port/v1"
deadline=$((SECONDS + timeout))
until "$py" - "$url/models" "$name" <<'PY' 2>/dev/null
import sys, requests
ids = [m["id"] for m in requests.get(sys.argv[1], timeout=5).json().get("data", [])]
sys.exit(0 if sys.argv[2] in ids else 1)
PY
do
  while read -r pid; do
    kill -0 "$pid" 2>/dev/null || fail "a service exited"
  done <"$pidfile"
  [ $SECONDS -lt $deadline ] || fail "no model '$name' at $url/models after ${timeout}s"
  sleep 2
done
echo ">> FastChat 0.2.36 serving '$name' from $model_path (logs in $log_dir; stop: $0 stop $base)" >&2
echo "$url"
