#!/usr/bin/env bash
# The GPU check (issue 16 item 5): DPFlow fp16 pairs/s at ~0.5 MP (batch 1/4/8), VAE training, labelling and
# compact-Motus training throughput, printed as one table (and written to $OUT/gpu_check.txt when OUT is set).
#
#   bench/gpu_check.sh            # CUDA machine: our pure-Python deps come as wheels in .whl/ (see below)
#   bench/gpu_check.sh --cpu      # tiny sizes on CPU, a few minutes (checks every code path runs)
#
# The CUDA machine has its own Python (3.12) and CUDA torch; what it lacks (ptlflow, loguru, jsonargparse,
# diffusers, duckdb, timm<1.1 for ptlflow) is carried as wheels in $GPU_CHECK_WHEELS (default .whl/) and installed
# with --no-deps into a private folder put on PYTHONPATH, so the machine's own packages stay untouched.
# Fetch them here with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
#     ptlflow==0.4.2 loguru==0.7.3 jsonargparse==4.53.0 timm==1.0.31 diffusers==0.42.1 importlib_metadata duckdb==2.0.0
# PyAV is not carried (40 MB); bench/gpu_check.py stubs it, since no row decodes video.
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${GPU_CHECK_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/gpucheck-site}
  echo "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "ERROR: installing the carried wheels failed"; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
exec "$PY" bench/gpu_check.py "$@"
