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
# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: install Chromium (Debian: apt-get install chromium) for the browser tests" >&2
    fi
fi
