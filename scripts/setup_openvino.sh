#!/usr/bin/env bash
# Set up the OpenVINO worker (backend: openvino):
#  * openvino-genai in orchestr's own .venv: all the worker needs at run time;
#  * .venv-openvino: optimum-intel + CPU torch, which export a model to OpenVINO IR once
#    (orchestr.engine.openvino_export calls it; the IR is cached in ~/.cache/orchestr/models).
#
# Why a separate venv for the export: optimum-intel pins transformers<5.6 (orchestr needs >=5)
# and pulls torchvision. The runtime packages are pinned to one version in both environments, so
# the exported tokenizer's custom operations load in the worker.
#
# Usage: scripts/setup_openvino.sh [EXPORT_VENV_DIR]   (default: .venv-openvino at the repo root)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-openvino}"
python="${PYTHON:-python3}"
OV_VERSION="${ORCHESTR_OPENVINO_VERSION:-2026.4.1}"
runtime=("openvino==$OV_VERSION" "openvino-tokenizers==$OV_VERSION.0" "openvino-genai==$OV_VERSION.0")

echo ">> installing ${runtime[*]} into $repo/.venv (the worker's runtime)"
"$repo/.venv/bin/python" -m pip install -q --disable-pip-version-check "${runtime[@]}"

if [ ! -x "$venv/bin/python" ]; then
  echo ">> creating $venv (the exporter)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch pinned first: an unpinned torch would pull the registry's CUDA build
"${pip[@]}" "torch==${ORCHESTR_TORCH_VERSION:-2.13.0}"
"${pip[@]}" "torch==${ORCHESTR_TORCH_VERSION:-2.13.0}" "optimum-intel[openvino]" "${runtime[@]}"
# The registry's torchvision is a CUDA build: it breaks `import optimum.intel`
# (`operator torchvision::nms does not exist`); text models do not need it.
"$venv/bin/python" -m pip uninstall -q -y torchvision || true

echo ">> checking"
"$venv/bin/python" -c "import optimum.intel, openvino, transformers, torch; print('exporter: optimum-intel on',
transformers.__version__, torch.__version__, 'openvino', openvino.__version__)"
"$repo/.venv/bin/python" -c "import openvino_genai; print('runtime: openvino-genai', openvino_genai.__version__)"
echo ">> done: orchestr launch model=smollm2-135m-openvino"
