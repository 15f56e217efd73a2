#!/usr/bin/env bash
# Set up (or update) the virtual environment in .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
