#!/usr/bin/env bash
# Set up from nothing and run every test (fast unit tests, then the slow end-to-end ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/python -m ruff check orchestr tests
.venv/bin/python -m pytest "$@"
