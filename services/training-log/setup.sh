#!/usr/bin/env bash
# Installs pyarrow (from PyPI) into services/training-log/.venv, for the end-to-end check that
# the training log's Parquet files read as they are (tests/tests/training_log.rs runs
# tests/read_with_pyarrow.py with it, and fails without it). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import pyarrow' 2>/dev/null; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check 'pyarrow==26.0.1'
.venv/bin/python -c 'import pyarrow; print("pyarrow", pyarrow.__version__)'
