#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with torch 2.14.1 + torchvision 0.29.1,
# fastreid 1.4.0 (installed --no-deps: its torch==1.13.1 pin cannot install on Python 3.11;
# gltrans_plugin.compat makes it run on today's stack) and this package with its test extras.
# Idempotent: re-running it reuses .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VPY" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1"
  "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! "$VPY" -c "import importlib.metadata as m; assert m.version('fastreid') == '1.4.0'" 2>/dev/null; then
  echo "[setup] installing fastreid 1.4.0 (--no-deps)"
  "$VPY" -m pip install -q --no-deps fastreid==1.4.0
fi
echo "[setup] installing gltrans-plugin (editable) with its runtime and test dependencies"
"$VPY" -m pip install -q -e ".[test,onnx]"
"$VPY" -c "import gltrans_plugin, torch; print('[setup] ok: gltrans_plugin', gltrans_plugin.__version__, 'torch', torch.__version__)"
