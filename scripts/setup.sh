#!/usr/bin/env bash
# One-step set-up: a local venv, torch 2.13.0 (CPU wheel) first so no CUDA build is pulled, then iclft.
# Usage: bash scripts/setup.sh        -> runtime install
#        bash scripts/setup.sh dev    -> also the test/lint extras
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
