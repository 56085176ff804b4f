#!/usr/bin/env bash
# Installs codesign with its test extras (and Chromium for the browser test), lints, and runs the
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
bash scripts/install_chromium.sh
python -m ruff check .
python -m ruff format --check .
python -m pytest -q "$@"
