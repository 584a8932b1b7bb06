"""`LongCLIPTextEncoder.from_pretrained`: any Long-CLIP checkpoint as a stock transformers text encoder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

from .formats import Checkpoint, CheckpointError, load_checkpoint
from .stretch import CLIP_POSITIONS
from .writing import write_clip_model, write_text_encoder


def require_long(checkpoint: Checkpoint) -> None:
    """Refuse a 77-position encoder where a Long-CLIP one is needed, saying how to make one."""
    if checkpoint.num_positions <= CLIP_POSITIONS:
        raise CheckpointError(
            f"{checkpoint.source}: has {checkpoint.num_positions} text positions, so it is a plain CLIP encoder, "
            "not Long-CLIP. Use a Long-CLIP checkpoint, make a training-free long version with "
            "`longclip stretch`, or pass allow_short=True to load it as it is."
        )


def build_text_model(
    checkpoint: Checkpoint, with_projection: bool | None = None, dtype: torch.dtype | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """Instantiate the text tower of `checkpoint` through transformers' own `from_pretrained`."""
    if with_projection is None:
        with_projection = checkpoint.is_projection_model
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _load_written(
        model_class, lambda folder: write_text_encoder(checkpoint, folder, with_projection, dtype), dtype
    )


def build_clip_model(checkpoint: Checkpoint, dtype: torch.dtype | None = None) -> CLIPModel:
    """Instantiate a full `CLIPModel` (text and vision towers) through transformers' own `from_pretrained`."""
    return _load_written(CLIPModel, lambda folder: write_clip_model(checkpoint, folder, dtype), dtype)


def _load_written(model_class: type, write: Callable[[Path], None], dtype: torch.dtype | None):
    """Write a model folder to a temporary place and load it with `model_class.from_pretrained`."""
    with tempfile.TemporaryDirectory(prefix="longclip-") as tmp:
        write(Path(tmp))
        model = model_class.from_pretrained(tmp)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


class LongCLIPTextEncoder:
    """Loads Long-CLIP text encoders as stock `CLIPTextModel` / `CLIPTextModelWithProjection` instances.

    Like transformers' Auto classes this is a factory: what it returns is a plain transformers model, so a
    diffusers pipeline built with it saves and loads anywhere, without this package.

    ```python
    text_encoder = LongCLIPTextEncoder.from_pretrained("BeichenZhang/LongCLIP-L")
    pipe = StableDiffusionPipeline.from_pretrained(sd15_id, text_encoder=text_encoder, tokenizer=tokenizer)
    ```
    """

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        with_projection: bool | None = None,
        dtype: torch.dtype | None = None,
        allow_short: bool = False,
        open_clip_model: str | None = None,
    ) -> CLIPTextModel | CLIPTextModelWithProjection:
        """Load a text encoder from a Hub repo id, a folder, or a single `.pt` / `.safetensors` file.

        Reads every layout `longclip convert` reads (published OpenAI-layout Long-CLIP files, open_clip and
        Hugging Face checkpoints). `with_projection=True` gives a `CLIPTextModelWithProjection` (default: only
        for sources saved as one, e.g. SDXL's `text_encoder_2`). 77-position encoders are refused unless
        `allow_short=True`.
        """
        checkpoint = load_checkpoint(
            pretrained_model_name_or_path, subfolder=subfolder, revision=revision, open_clip_model=open_clip_model
        )
        if not allow_short:
            require_long(checkpoint)
        return build_text_model(checkpoint, with_projection, dtype)
