"""CLIP's special tokens and ids, and the pad tokens of the Stable Diffusion tokenizers, are said once:
in `longclip_diffusers/constants.py`."""

import ast

import pytest
from helpers.common import module_files

from longclip_diffusers.constants import (
    CLIP_BOS_TOKEN,
    CLIP_BOS_TOKEN_ID,
    CLIP_EOS_TOKEN,
    CLIP_EOS_TOKEN_ID,
    CLIP_VOCAB_SIZE,
    stable_diffusion_pad_token,
)
from longclip_diffusers.tokenizer import LongCLIPTokenizer

SAID_ONCE = {CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID, CLIP_VOCAB_SIZE, CLIP_BOS_TOKEN, CLIP_EOS_TOKEN, "!"}


def test_clip_constants_and_pad_tokens_are_written_only_in_the_constants_module():
    written = [
        f"{module}:{node.lineno}: {node.value!r}"
        for module, path in module_files().items()
        if module != "longclip_diffusers.constants"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and type(node.value) in (int, str) and node.value in SAID_ONCE
    ]
    assert written == []


def test_the_constants_are_clips():
    tokenizer = LongCLIPTokenizer.from_clip_bpe()
    assert len(tokenizer) == CLIP_VOCAB_SIZE
    assert tokenizer.convert_tokens_to_ids([CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]) == [CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID]
    assert tokenizer.pad_token == CLIP_EOS_TOKEN  # SD 1.5's


@pytest.mark.parametrize(("model_cfg", "pad_token"), [({"quick_gelu": True}, CLIP_EOS_TOKEN), ({}, "!")])
def test_the_pad_token_rule(model_cfg, pad_token):
    """OpenAI's QuickGELU CLIP-L pads with its end token (SD 1.x), OpenCLIP's GELU towers with "!" (SD 2.x, bigG)."""
    assert stable_diffusion_pad_token(model_cfg) == pad_token
