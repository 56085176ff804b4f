#!/usr/bin/env bash
# Installs codesign with its test extras, lints, and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
python -m ruff check .
python -m ruff format --check .
python -m pytest -q "$@"
