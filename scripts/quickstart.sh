#!/usr/bin/env bash
# One command from a fresh clone: set up, then run the main job (index SciFact with BM25 and the
# default dense model, search, evaluate, print the comparison table).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/distillir demo "$@"
