#!/usr/bin/env bash
# Runs ON THE GPU MACHINE from the repository root (the device `run` call, docs/gpu/README.md):
# installs the carried wheels (bench/gpu/prepare.sh) into /tmp/site, then bench/gpu/check.py.
# Arguments go to check.py (default --device cuda).  Report: $OUT/report.json, summary.txt,
# log.txt, install.txt.  Locally (dry-run): PYTHON=.venv/bin/python bench/gpu/run.sh --device
# cpu --tiny --out /tmp/gpu_dry (the install is skipped where fastreid already imports).
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import fastreid, fvcore, yacs, iopath, faiss" >/dev/null 2>&1; then
    ls bench/gpu/wheels/*.whl >/dev/null 2>&1 || { echo "no bench/gpu/wheels: run bench/gpu/prepare.sh here and carry bench/gpu/wheels" >&2; exit 3; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site bench/gpu/wheels/*.whl >"$OUT/install.txt" 2>&1 \
        || { tail -20 "$OUT/install.txt"; exit 3; }
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
exec "$PY" bench/gpu/check.py --out "$OUT" "$@"
