"""`from_single_file` for the Long-CLIP pipelines: single-file SD 1.x / SDXL checkpoints whose text encoder is a
Long-CLIP (248 positions), which diffusers' own loader refuses (it builds a 77-position encoder from the config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import CLIPTextConfig

from longclip_diffusers.checkpoint import CheckpointError
from longclip_diffusers.constants import CLIP_PAD_TOKEN, OPEN_CLIP_PAD_TOKEN
from longclip_diffusers.single_file import SLOT_PREFIXES, encoder_slots, read_encoder, read_single_file
from longclip_diffusers.text_encoder import build_text_model
from longclip_diffusers.tokenizer import LongCLIPTokenizer

_DOWNLOAD_OPTIONS = ("force_download", "proxies", "token", "cache_dir", "local_files_only", "revision")


class LongCLIPSingleFileMixin:
    """`from_single_file` that reads the checkpoint's text encoders with this package, at the length of their
    position tables (248 for a Long-CLIP; 77 for stock ones), with tokenizers of the same length; diffusers reads
    the rest (UNet, VAE, scheduler) as it always does.

    Heads and activation come from `config=` (a diffusers folder or Hub id, as diffusers takes it) when given,
    else from OpenAI's conventions (CLIP-L) and open_clip's bigG config. Components you pass (`text_encoder=`,
    `tokenizer=`, ...) are used as they are. Put it before the diffusers pipeline in the bases.
    """

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | os.PathLike, **kwargs: Any):
        path = str(pretrained_model_link_or_path)
        if Path(path).is_file():
            tensors = read_single_file(path, SLOT_PREFIXES)
        else:  # a Hub file or URL: fetched (and cached) the way diffusers fetches it
            from diffusers.loaders.single_file_utils import load_single_file_checkpoint

            options = {key: kwargs[key] for key in _DOWNLOAD_OPTIONS if key in kwargs}
            checkpoint = load_single_file_checkpoint(path, **options)
            tensors = {key: value for key, value in checkpoint.items() if key.startswith(SLOT_PREFIXES)}
        config = kwargs.get("config")
        if isinstance(config, os.PathLike):
            config = kwargs["config"] = os.fspath(config)  # diffusers takes a string only
        for slot in encoder_slots(tensors):
            if slot.component in kwargs:  # given (None too: "load without it")
                continue
            text_config = CLIPTextConfig.from_pretrained(config, subfolder=slot.component) if config else None
            try:
                checkpoint = read_encoder(tensors, slot, path, text_config)
            except CheckpointError as error:
                if text_config is not None:
                    raise
                raise CheckpointError(f"{error} Here: pass config= the pipeline's Hub id or folder.") from None
            kwargs[slot.component] = build_text_model(checkpoint, slot.with_projection, kwargs.get("torch_dtype"))
            tokenizer_name = slot.component.replace("text_encoder", "tokenizer")
            if tokenizer_name not in kwargs:
                kwargs[tokenizer_name] = _tokenizer(config, tokenizer_name, checkpoint.num_positions, slot)
        return super().from_single_file(pretrained_model_link_or_path, **kwargs)


def _tokenizer(config: str | os.PathLike | None, name: str, length: int, slot) -> LongCLIPTokenizer:
    """The pipeline's own tokenizer (from `config`) at the encoder's length, else CLIP's, padding as SD does."""
    if config:
        return LongCLIPTokenizer.from_pretrained(config, subfolder=name, model_max_length=length)
    return LongCLIPTokenizer.from_clip_bpe(
        length, pad_token=OPEN_CLIP_PAD_TOKEN if slot.with_projection else CLIP_PAD_TOKEN
    )
