#!/usr/bin/env bash
# Create .venv and install semu-diffusion with its dependencies (CPU works; torch+torchvision come together
# from the registry as matching builds: a CPU-only torch wheel next to the registry's torchvision breaks it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[test,eval]"
