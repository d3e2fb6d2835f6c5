#!/usr/bin/env bash
# The one-shot GPU check: CUDA tests, then `pytest --benchmark` at the paper's shapes, in one
# time budget, back as at most three files. bench/gpu_check.py says what runs and why.
#
#   bash bench/gpu_check.sh OUT_DIR [--budget SECONDS]   e.g. the device tool's $OUT
#   bash bench/gpu_check.sh OUT_DIR --rehearse           the same steps on a CPU machine
#   bash bench/gpu_check.sh --fetch-wheels               fills .whl/ (carry it: soundfile)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
exec python3 bench/gpu_check.py "$@"
