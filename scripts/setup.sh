#!/usr/bin/env bash
# Creates .venv and installs longclip-diffusers with every extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -U pip
# A stale egg-info left in the tree by an older install would hide the entry points (`longclip.commands`) from
# `python -m` runs started here.
rm -rf longclip_diffusers.egg-info
.venv/bin/pip install -q -e ".[all]"
# transformers 4.x beside the main install (not on the import path): the tests load what we save with it.
[ -d .venv/transformers4/transformers ] || .venv/bin/pip install -q --no-deps --target .venv/transformers4 \
    "transformers==4.57.3" "tokenizers==0.22.1" "huggingface_hub==0.36.0"
# What ComfyUI needs to import and run on a CPU, for the real-engine tests (tests/comfyui/test_real_engine.py run
# ComfyUI's source from ../shared/ComfyUI or COMFYUI_DIR): its requirements.txt less torch/torchvision/torchaudio
# (installed above; torchaudio only for audio models) and the front-end packages (only for its web UI).
.venv/bin/python -m pip install -q torchsde einops sentencepiece scipy "av>=14.2.0" "kornia>=0.7.1" spandrel \
    "aiohttp>=3.11.8" "yarl>=1.18.0" alembic SQLAlchemy "pydantic-settings~=2.0"
# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: install Chromium (Debian: apt-get install chromium) for the browser tests" >&2
    fi
fi
