#!/usr/bin/env bash
# Create .venv with Python 3 (if missing) and install fpn into it from this repo.
#   bash scripts/setup.sh          fpn and what it needs to run (the demo needs nothing more)
#   bash scripts/setup.sh --test   also the test extras (pytest, ONNX Runtime, FastAPI, Playwright, PyAV, ...)
#                                  and Debian's Chromium for the page test of fpn serve
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --test) EXTRAS="[dev]" ;;
    *) echo "scripts/setup.sh: unknown option $arg (known: --test)" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
echo "installing fpn${EXTRAS} and its dependencies into .venv (PyTorch takes a few minutes the first time)"
.venv/bin/python -m pip install --quiet -e ".${EXTRAS}"
[ -n "$EXTRAS" ] || exit 0
# The page test of fpn serve drives Debian's Chromium (Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium with apt-get (for the headless page test of fpn serve)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "could not install chromium; the page test will be skipped"
  fi
fi
