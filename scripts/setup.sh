#!/usr/bin/env bash
# Create .venv with Python 3 (if missing) and install fpn with its test extras from this repo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
echo "installing fpn and its dependencies into .venv (PyTorch takes a few minutes the first time)"
.venv/bin/python -m pip install --quiet -e ".[dev]"
