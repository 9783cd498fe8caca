#!/usr/bin/env bash
# Creates .venv and installs the pinned set from requirements.lock (plus the Debian packages it needs).
# Idempotent: `make` calls it only when the lock or this script changed (stamp file in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV=".venv"
UV_VERSION="0.13.8"

log() { printf '[bootstrap] %s\n' "$*"; }

# --- Debian packages: ffmpeg shared libs for torchcodec; EGL/Mesa for headless MuJoCo rendering (required).
#     Headless Chromium only lets a test check that the audit report renders (optional: that test skips without it).
deb_required=(ffmpeg libegl1 libegl-mesa0 libgl1-mesa-dri)
deb_optional=(chromium-headless-shell)

apt_install() {  # apt_install PKG... : as root, or with passwordless sudo; returns non-zero if it cannot
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    return 1
  fi
}

missing=()
for p in "${deb_required[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  if ! apt_install "${missing[@]}"; then
    log "missing Debian packages: ${missing[*]} (install them with apt-get as root, then rerun)"
    exit 1
  fi
fi
missing=()
for p in "${deb_optional[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing optional Debian packages: ${missing[*]}"
  apt_install "${missing[@]}" || log "could not install ${missing[*]}: the audit-report rendering test will skip"
fi

# --- the virtual environment and uv inside it
if ! command -v "$PYTHON" >/dev/null; then
  log "$PYTHON not found: this project needs CPython 3.11 (set PYTHON=/path/to/python3.11)"
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
# uv lives beside the venv's packages, not in them, so `uv pip sync` never removes itself
UV="$VENV/.tools/bin/uv"
if ! "$UV" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  log "installing uv $UV_VERSION"
  "$PYTHON" -m pip install -q --target "$VENV/.tools" "uv==$UV_VERSION"
fi

# --- torch 2.13.0+cpu comes from a find-links folder (uv does not read pip's config, so pass it on).
# requirements.lock pins the +cpu build, so no resolver can swap in a CUDA torch or nvidia-* packages.
find_links="${UV_FIND_LINKS:-${PIP_FIND_LINKS:-}}"
if [ -z "$find_links" ]; then
  find_links="$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)"
fi
uv_args=()
for fl in $find_links; do uv_args+=(--find-links "$fl"); done

log "installing the locked set ($(grep -c '==' requirements.lock) packages)"
VIRTUAL_ENV="$PWD/$VENV" "$UV" pip sync -q --python "$VENV/bin/python" "${uv_args[@]}" requirements.lock
VIRTUAL_ENV="$PWD/$VENV" "$UV" pip install -q --python "$VENV/bin/python" --no-deps -e .
# the torchvision CPU shim for every interpreter of the venv, not only ours: a .pth hook in site-packages
# (third-party code such as `import transformers` imports torchvision without importing our packages)
log "torchvision shim hook: $("$VENV/bin/python" -m common.torch_compat install-pth)"
log "ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
