#!/usr/bin/env bash
# Set up (or update) the virtual environment in .venv with the test extras and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Two pytest-xdist workers, one test file each at a time (a file's fixtures are built once); each
# worker gets half the cores (tests/conftest.py). ``-n 0`` after it runs everything in one process.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
