#!/usr/bin/env bash
# Set up (or update) the virtual environment in .venv and run the main job on the built-in
# synthetic benchmark: generate data, train a CPU-sized FPN, evaluate, draw detections.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fpn demo "$@"
