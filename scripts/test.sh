#!/usr/bin/env bash
# Installs codesign with its test extras (and Chromium for the browser test), lints, and runs the
# test suite in parallel (pytest-xdist; pass -n 0 to run it in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
bash scripts/install_chromium.sh
python -m ruff check .
python -m ruff format --check .
# One worker per core, one test file per worker at a time (module fixtures are built once).
python -m pytest -q -n auto --dist loadfile "$@"
