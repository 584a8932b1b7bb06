"""Checkpoints in the real layouts (tiny sizes, random weights) and a transformers 4.x runner, for any test.

Nothing here reaches a model hub.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TRANSFORMERS4_DIR = REPO_ROOT / ".venv" / "transformers4"


def run_with_transformers4(code: str, timeout: float = 300) -> str:
    """Run `code` in a fresh interpreter that imports transformers 4.x (installed by scripts/setup.sh).

    Returns its stdout; fails the test with its stderr when it exits non-zero.
    """
    if not (TRANSFORMERS4_DIR / "transformers").is_dir():
        pytest.fail(f"transformers 4.x is missing from {TRANSFORMERS4_DIR}: run `bash scripts/setup.sh` first")
    env = dict(os.environ, PYTHONPATH=str(TRANSFORMERS4_DIR), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"transformers 4.x subprocess failed:\n{result.stderr[-4000:]}")
    return result.stdout


# --------------------------------------------------------------------------------------------------------------
# Synthetic checkpoints in the real layouts (tiny sizes, real key names, CLIP's real vocabulary size)
# --------------------------------------------------------------------------------------------------------------

# OpenAI conventions (64-wide heads, QuickGELU), as in every published CLIP / Long-CLIP checkpoint.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
# Not OpenAI conventions: 16-wide text heads, 32-wide vision heads, GELU (like LAION's open_clip models).
TINY_OPEN_CLIP_CONFIG_GELU = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 2},
}


def tiny_open_clip_model(seed: int = 0, config: dict | None = None):
    """A tiny open_clip CLIP (77 positions) with random weights of a realistic scale."""
    import torch
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**(config or TINY_OPEN_CLIP_CONFIG)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.05)
        model.logit_scale.fill_(4.6052)
    return model


def published_longclip_state_dict(seed: int = 0) -> tuple[dict, object]:
    """A state dict in the published Long-CLIP `.pt` layout, and the open_clip model that computes it.

    As in the reference model, the position table in use is rows 0..19 of `positional_embedding` and rows
    20..247 of `positional_embedding_res`; the two tables differ elsewhere (training moved one, not the other).
    """
    import torch

    from longclip_diffusers.stretch import stretch_model

    model = stretch_model(tiny_open_clip_model(seed))
    generator = torch.Generator().manual_seed(seed + 1)
    table = model.positional_embedding.detach().clone()
    residual = table + 0.02 * torch.randn(table.shape, generator=generator)
    frozen = table + 0.02 * torch.randn(table.shape, generator=generator)
    frozen[:20] = table[:20]
    with torch.no_grad():
        model.positional_embedding.copy_(torch.cat([frozen[:20], residual[20:]]))
    state_dict = {key: value.clone() for key, value in model.state_dict().items() if key != "attn_mask"}
    state_dict["positional_embedding"] = frozen
    state_dict["positional_embedding_res"] = residual
    return state_dict, model


PACKAGE = "longclip_diffusers"
# Installed package -> folder (pyproject.toml's package-dir); the applications are installed inside the library.
APPLICATIONS = {"pipelines": "pipelines", "training": "training", "demo": "demo"}


def module_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    folders = {PACKAGE: root / PACKAGE} | {f"{PACKAGE}.{name}": root / folder for name, folder in APPLICATIONS.items()}
    modules = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


class LogRecords(logging.Handler):
    """A logging handler that keeps the messages it is given (`logger.handlers = [records]`)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
