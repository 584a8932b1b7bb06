"""Shared fixtures.

Nothing here reaches a model hub: checkpoints are built locally, in the real layouts, with random weights.
"""

from __future__ import annotations

import os

import pytest
from helpers.common import published_longclip_state_dict

# The Hub is unreachable here; huggingface_hub reads this once, at import, so set it before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def published_pt(tmp_path_factory):
    """(path to a published-layout Long-CLIP .pt, the open_clip model computing the same function)."""
    import torch

    state_dict, model = published_longclip_state_dict()
    path = tmp_path_factory.mktemp("published") / "longclip-tiny.pt"
    torch.save(state_dict, path)
    return path, model


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """The output of `longclip tiny` (built once per test session)."""
    from longclip_diffusers.tiny import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("tiny") / "components")


@pytest.fixture(scope="session")
def long_parts(tiny_components):
    """Loads (text encoder, tokenizer) of the tiny Long-CLIP for "sd15", "sdxl", "sd2", "sd3" or "flux"."""
    from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer

    def load(base: str):
        folder = tiny_components / f"longclip-{base}"
        return LongCLIPTextEncoder.from_pretrained(folder), LongCLIPTokenizer.from_pretrained(folder)

    return load
