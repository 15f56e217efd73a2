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
# The page test of fpn serve drives Debian's Chromium (Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium with apt-get (for the headless page test of fpn serve)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "could not install chromium; the page test will be skipped"
  fi
fi
