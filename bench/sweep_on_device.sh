#!/usr/bin/env bash
# Run bench/sweep_vae_objective.py on a CUDA machine that has torch and the scientific stack but not our
# pure-Python extras: wheels carried in $SWEEP_WHEELS (default .whl/: diffusers, importlib_metadata, zipp) are
# installed with --no-deps into a private folder, and PyAV (not needed: the export holds decoded flow and frames)
# is replaced by a stub package so imports succeed in every spawned job process.
#
#   bench/sweep_on_device.sh PAIRS.npz OUT [sweep_vae_objective.py run options...]
set -eu
cd "$(dirname "$0")/.."
PAIRS=$1 OUT=$2; shift 2
SITE=${SWEEP_SITE:-/tmp/sweep-site}
WHEELS=${SWEEP_WHEELS:-.whl}
PY=${PYTHON:-python3}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
if ! "$PY" -c "import av" 2>/dev/null; then
  mkdir -p "$SITE/av"
  cat > "$SITE/av/__init__.py" <<'PYEOF'
"""Stub: PyAV is not installed here and the sweep decodes no video."""
class error:  # noqa: N801 - the attribute path the project reads (av.error.FFmpegError)
    class FFmpegError(Exception):
        pass
def open(*args, **kwargs):  # noqa: A001
    raise RuntimeError("PyAV is not installed on this machine (sweep stub)")
PYEOF
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec "$PY" bench/sweep_vae_objective.py run "$PAIRS" "$OUT" "$@"
