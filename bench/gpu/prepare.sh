#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), from anywhere: downloads the wheels the GPU machine
# lacks (CPython 3.12, manylinux x86_64) into bench/gpu/wheels/ (git-ignored), which the
# device `run` call carries.  The GPU machine has torch 2.11, numpy, Pillow, PyYAML, tqdm,
# tabulate, portalocker, scikit-learn, scipy, tensorboard, opencv, huggingface_hub and
# safetensors already (/work/.library/device/KINDS.md); fast-reid goes without its torch-1.13
# pins (--no-deps), as in the README's set-up.  Versions are the ones the CPU tests run with.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
W=bench/gpu/wheels
BINARY="fastreid==1.4.0 yacs==0.1.8 faiss-cpu==1.15.1 termcolor==3.3.0 timm==1.0.31"
SDIST="iopath==0.1.10 fvcore==0.1.5.post20221221"   # sdists only on PyPI: pure-python wheels
PLAT="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
rm -rf "$W" && mkdir -p "$W"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: $PLAT -d "$W" $BINARY
# shellcheck disable=SC2086
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$W" $SDIST
ls -l "$W"
total=$(du -cb "$W"/*.whl | tail -1 | cut -f1)
echo "wheels: $(ls "$W"/*.whl | wc -l) files, $((total / 1048576)) MiB (the carry limit is 64 MiB with the tree)"
if [ "$total" -gt $((48 * 1048576)) ]; then echo "too large for the 64 MiB carry" >&2; exit 1; fi
echo 'next: one device run, command: bash bench/gpu/run.sh   carry: ["bench/gpu/wheels"]'
