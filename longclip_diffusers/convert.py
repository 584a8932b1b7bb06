"""Write a checkpoint in each output layout: diffusers text encoder, full CLIPModel, ComfyUI text encoder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from .formats import (
    Checkpoint,
    CheckpointError,
    atomic_output,
    load_checkpoint,
    write_clip_model,
    write_comfyui_text_encoder,
    write_text_encoder,
)
from .stretch import CLIP_POSITIONS, DEFAULT_KEEP, DEFAULT_RATIO, stretch_position_table
from .text_encoder import check_pair
from .tokenizer import LongCLIPTokenizer

OutputLayout = Literal["diffusers", "clip", "comfyui"]
OUTPUT_LAYOUTS: tuple[str, ...] = ("diffusers", "clip", "comfyui")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
POSITION_KEY = "text_model.embeddings.position_embedding.weight"

# OpenAI CLIP's image normalisation, used by every CLIP / Long-CLIP checkpoint.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def stretch_checkpoint(checkpoint: Checkpoint, keep: int = DEFAULT_KEEP, ratio: int = DEFAULT_RATIO) -> Checkpoint:
    """Training-free Long version of a 77-position checkpoint: its text position table stretched (in place)."""
    if checkpoint.num_positions != CLIP_POSITIONS:
        raise CheckpointError(
            f"{checkpoint.source}: already has {checkpoint.num_positions} text positions; stretching is for "
            f"{CLIP_POSITIONS}-position CLIP encoders (stretching a long one would interpolate its trained rows). "
            "Stretch the original CLIP instead, or convert this one with `longclip convert`."
        )
    table = stretch_position_table(checkpoint.state_dict[POSITION_KEY], keep, ratio)
    checkpoint.state_dict[POSITION_KEY] = table
    checkpoint.text_config.max_position_embeddings = table.shape[0]
    return checkpoint


def tokenizer_for(checkpoint: Checkpoint, pad_token: str | None = None) -> LongCLIPTokenizer:
    """The tokenizer to ship beside `checkpoint`: the source's own files if it has them, else CLIP's BPE."""
    source = checkpoint.source if Path(checkpoint.source).exists() else None  # None: an in-memory state dict
    tokenizer = LongCLIPTokenizer.from_pretrained(
        source, model_max_length=checkpoint.num_positions, pad_token=pad_token
    )
    check_pair(tokenizer, checkpoint.text_config, checkpoint.source)
    return tokenizer


def save_diffusers(
    checkpoint: Checkpoint,
    out: Path,
    *,
    with_projection: bool | None = None,
    dtype: torch.dtype | None = None,
    pad_token: str | None = None,
) -> None:
    """`out/text_encoder/` + `out/tokenizer/`, loadable with plain `CLIPTextModel` / `CLIPTokenizer`."""
    write_text_encoder(checkpoint, out / "text_encoder", with_projection, dtype)
    tokenizer_for(checkpoint, pad_token).save_pretrained(out / "tokenizer")


def clip_image_processor(size: int):
    """CLIP's preprocessing at `size` pixels: bicubic resize of the short side, centre crop, OpenAI statistics."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD,
    )


def save_clip(checkpoint: Checkpoint, out: Path, *, dtype: torch.dtype | None = None, pad_token: str | None = None):
    """A full `CLIPModel` + `CLIPProcessor` folder (text and vision towers)."""
    from transformers import CLIPProcessor

    write_clip_model(checkpoint, out, dtype)
    image_processor = clip_image_processor(checkpoint.vision_config.image_size)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer_for(checkpoint, pad_token)).save_pretrained(out)


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: OutputLayout = "diffusers",
    subfolder: str | None = None,
    revision: str | None = None,
    open_clip_model: str | None = None,
    stretch: tuple[int, int] | None = None,
    with_projection: bool | None = None,
    dtype: str | None = None,
    pad_token: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert `source` (any layout `load_checkpoint` reads) to `out` in layout `to`; return `out`.

    `stretch=(keep, ratio)` first makes a training-free long version. `out` appears only once complete.
    For `to="comfyui"`, `out` is the `.safetensors` file to write.
    """
    if to not in OUTPUT_LAYOUTS:
        raise ValueError(f"Unknown output layout {to!r}; choose one of {', '.join(OUTPUT_LAYOUTS)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    out = Path(out)
    if to == "comfyui" and out.suffix != ".safetensors":
        raise ValueError(f"{out}: a ComfyUI text encoder is one file; give an output path ending in .safetensors.")
    checkpoint = load_checkpoint(source, subfolder=subfolder, revision=revision, open_clip_model=open_clip_model)
    if stretch is not None:
        stretch_checkpoint(checkpoint, *stretch)
    torch_dtype = DTYPES[dtype] if dtype else None
    with atomic_output(out, overwrite=overwrite) as tmp:
        if to == "diffusers":
            save_diffusers(checkpoint, tmp, with_projection=with_projection, dtype=torch_dtype, pad_token=pad_token)
        elif to == "clip":
            save_clip(checkpoint, tmp, dtype=torch_dtype, pad_token=pad_token)
        else:
            write_comfyui_text_encoder(checkpoint, tmp, torch_dtype)
    return out
