#!/usr/bin/env bash
# Set up (or update) the virtual environment in .venv with the test extras and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q "$@"
