#!/usr/bin/env bash
# Build .venv-fastchat: FastChat 0.2.36 (controller + model_worker + openai_api_server) as a
# benchmark peer for `orchestr bench serve` (issue 10). Start it with scripts/run_fastchat.sh.
#
# Why a separate venv: FastChat 0.2.36 pins nothing, but it predates transformers 5 and pydantic 2
# and breaks on each in one line; the venv gets the same transformers/pydantic/fastapi versions
# as orchestr's main environment (so a comparison isolates the serving design) plus two
# minimal, idempotent patches to the installed FastChat:
#   1. fastchat/utils.py get_context_length: transformers 5 always fills config.rope_scaling
#      (rope_type/rope_theta) without "factor" -> KeyError when model_worker starts.
#      Patched to rope_scaling.get("factor", 1) (1 is what it used when rope_scaling was unset).
#   2. fastchat/serve/openai_api_server.py streams with `chunk.json(..., ensure_ascii=False)`,
#      which pydantic 2 rejects (no json.dumps kwargs) -> every streamed request fails.
#      Patched to chunk.model_dump_json(...) (pydantic 2 already writes non-ASCII unescaped).
# Why not pin an older transformers 4.x and pydantic 1 instead: transformers 4.x cannot read
# the folder orchestr converts the embedded model into (written by transformers 5:
# tokenizer_class "TokenizersBackend", rope_theta only under "rope_parameters"), and
# transformers 5 needs pydantic>=2 (through typer), which FastChat's stream code cannot use.
#
# Usage: scripts/setup_fastchat.sh [VENV_DIR]   (default: .venv-fastchat at the repository root)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-fastchat}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo ">> creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

# First and alone: torch==2.13.0 is the CPU build; anything that pulled torch unpinned would
# bring a CUDA build.
echo ">> installing torch==2.13.0 (CPU)"
"${pip[@]}" install -q torch==2.13.0

echo ">> installing fschat==0.2.36 and the model_worker/controller/API server dependencies"
# torch stays pinned in the same resolve so nothing replaces it.
"${pip[@]}" install -q \
  torch==2.13.0 \
  fschat==0.2.36 \
  transformers==5.24.0 \
  pydantic==2.14.4 \
  fastapi==0.165.0 \
  uvicorn==0.54.0 \
  accelerate==1.15.0 \
  shortuuid httpx requests sentencepiece protobuf safetensors

echo ">> patching FastChat for transformers 5 and pydantic 2 (see the header)"
site="$("$venv/bin/python" -c 'import fastchat, os; print(os.path.dirname(fastchat.__file__))')"
sed -i 's/rope_scaling_factor = config\.rope_scaling\["factor"\]/rope_scaling_factor = config.rope_scaling.get("factor", 1)/' \
  "$site/utils.py"
sed -i 's/\.json(\(exclude_[a-z]*=True\), ensure_ascii=False)/.model_dump_json(\1)/g' \
  "$site/serve/openai_api_server.py"
# Fail loudly if a line was not there to patch (another FastChat version).
if ! grep -q 'rope_scaling.get("factor", 1)' "$site/utils.py" \
   || grep -q '\.json(exclude_[a-z_]*=True, ensure_ascii' "$site/serve/openai_api_server.py"; then
  echo "FastChat's sources differ from 0.2.36: patches not applied" >&2; exit 1
fi

echo ">> checking"
"$venv/bin/python" - <<'PY'
import fastapi, pydantic, torch, transformers
import fastchat
import fastchat.serve.controller  # noqa: F401
import fastchat.serve.model_worker  # noqa: F401
import fastchat.serve.openai_api_server  # noqa: F401
assert not torch.version.cuda, f"torch is a CUDA build ({torch.__version__})"
print(f"fschat {fastchat.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"pydantic {pydantic.VERSION}, fastapi {fastapi.__version__}")
PY
echo ">> done: scripts/run_fastchat.sh PORT_BASE"
