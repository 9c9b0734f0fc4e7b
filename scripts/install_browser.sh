#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the browser tests (tests/test_web_browser.py).
# Idempotent: does nothing when /usr/bin/chromium (and the emoji font) are already there. Never uses `playwright install`:
# the tests drive this system binary through Playwright's executable_path.
set -euo pipefail

# Fonts: the UI's buttons and tabs use emoji; without a colour-emoji font screenshots show boxes.
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium fonts-dejavu-core)
[[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || missing+=(fonts-noto-color-emoji)
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
/usr/bin/chromium --version
