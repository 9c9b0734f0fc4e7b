#!/usr/bin/env bash
# Build a small venv with FastChat 0.2.36's arena analysis (serve/monitor: clean_battle_data,
# elo_analysis, llm_judge's show_result) for tests/test_arena_fastchat_compat.py and
# tests/test_web_browser.py, which compare orchestr's web logs, ratings and judgments with FastChat's
# own code. scripts/test.sh builds it as .venv-fastchat-monitor (~2 min once).
#
#   scripts/setup_fastchat_monitor.sh [VENV_DIR]          (default: /tmp/fastchat-monitor)
#   ORCHESTR_FASTCHAT_PYTHON=VENV_DIR/bin/python pytest tests/test_arena_fastchat_compat.py
#   # style control is newer than 0.2.36: also point ORCHESTR_FASTCHAT_RATING_SYSTEMS at FastChat main's
#   # fastchat/serve/monitor/rating_systems.py
#
# FastChat is installed without its dependencies (its model code pulls torch); the analysis needs
# only these, plus polyglot/pycld2/PyICU for its language detection.
set -euo pipefail
venv="${1:-/tmp/fastchat-monitor}"
if ! dpkg -s libicu-dev >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libicu-dev pkg-config g++
fi
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --no-deps fschat==0.2.36
"${pip[@]}" install pytz plotly pandas numpy scipy tqdm scikit-learn requests six pycld2 polyglot pyicu
echo "ORCHESTR_FASTCHAT_PYTHON=$venv/bin/python"
