"""`convert` and `stretch_checkpoint`: read any checkpoint, optionally stretch it, write it in an output layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .atomic import atomic_output
from .checkpoint import Checkpoint, CheckpointError
from .checkpoint_checks import check_checkpoint
from .constants import CLIP_POSITIONS, DTYPES, OPEN_CLIP_PAD_TOKEN
from .formats import load_checkpoint
from .stretch import DEFAULT_KEEP, DEFAULT_RATIO, stretch_position_table, stretched_length
from .writing import save_clip, save_diffusers, write_comfyui_text_encoder

OutputLayout = Literal["diffusers", "clip", "comfyui"]
OUTPUT_LAYOUTS: tuple[str, ...] = ("diffusers", "clip", "comfyui")
POSITION_KEY = "text_model.embeddings.position_embedding.weight"
SD2_LAYERS = 23  # of OpenCLIP-H's 24: SD 2.x's diffusers text encoder


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


def sd2_text_encoder(checkpoint: Checkpoint) -> Checkpoint:
    """SD 2.x's text encoder of an OpenCLIP-H-like checkpoint (in place): its text tower without the last layer.

    SD 2.x conditions on the penultimate layer's states through the final layer norm; diffusers stores that as a
    `CLIPTextModel` one layer short (23 of ViT-H's 24), whose `last_hidden_state` is exactly those states. The image
    tower and the projection, which SD 2.x does not use, are left out.
    """
    layers, width = checkpoint.text_config.num_hidden_layers, checkpoint.text_config.hidden_size
    if layers < 2:
        raise CheckpointError(f"{checkpoint.source}: has {layers} text layer; SD 2.x reads the one before the last.")
    if (layers, width) == (SD2_LAYERS, 1024):
        raise CheckpointError(
            f"{checkpoint.source}: already SD 2.x's text encoder ({SD2_LAYERS} of OpenCLIP-H's 24 layers); convert it "
            "without --sd2."
        )
    if not checkpoint.has_text_projection:
        raise CheckpointError(
            f"{checkpoint.source}: has no text projection, so it is no whole OpenCLIP text tower but SD 2.x's text "
            f"encoder already ({layers} layers, one fewer than its tower); --sd2 would remove a second layer "
            f"({layers} -> {layers - 1}). Convert or stretch it without --sd2."
        )
    last = f"text_model.encoder.layers.{layers - 1}."
    for key in [k for k in checkpoint.state_dict if k.startswith(last) or not k.startswith("text_model.")]:
        del checkpoint.state_dict[key]
    checkpoint.text_config.num_hidden_layers = layers - 1
    checkpoint.vision_config = checkpoint.projection_dim = None
    checkpoint.text_architecture = "CLIPTextModel"
    return check_checkpoint(checkpoint)


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
    sd2: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert `source` (any layout `load_checkpoint` reads) to `out` in layout `to`; return `out`.

    `stretch=(keep, ratio)` first makes a training-free long version; `sd2=True` writes SD 2.x's text encoder
    (`sd2_text_encoder`) with a tokenizer that pads with "!" as SD 2.x's does (unless `pad_token` says otherwise).
    `out` appears only once complete. For `to="comfyui"`, `out` is the `.safetensors` file to write.
    """
    if to not in OUTPUT_LAYOUTS:
        raise ValueError(f"Unknown output layout {to!r}; choose one of {', '.join(OUTPUT_LAYOUTS)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    out = Path(out)
    if to == "comfyui" and out.suffix != ".safetensors":
        raise ValueError(f"{out}: a ComfyUI text encoder is one file; give an output path ending in .safetensors.")
    if stretch is not None:
        stretched_length(CLIP_POSITIONS, *stretch)  # refuses bad arguments before anything is read
    if sd2 and (to != "diffusers" or with_projection):
        raise ValueError(
            "--sd2 writes SD 2.x's text encoder, a CLIPTextModel in the diffusers layout: use it with --to diffusers "
            "and without --with-projection."
        )
    checkpoint = load_checkpoint(source, subfolder=subfolder, revision=revision, open_clip_model=open_clip_model)
    if stretch is not None:
        stretch_checkpoint(checkpoint, *stretch)
    if sd2:
        sd2_text_encoder(checkpoint)
        pad_token = pad_token or OPEN_CLIP_PAD_TOKEN
    torch_dtype = DTYPES[dtype] if dtype else None
    with atomic_output(out, overwrite=overwrite) as tmp:
        if to == "diffusers":
            save_diffusers(checkpoint, tmp, with_projection=with_projection, dtype=torch_dtype, pad_token=pad_token)
        elif to == "clip":
            save_clip(checkpoint, tmp, dtype=torch_dtype, pad_token=pad_token)
        else:
            write_comfyui_text_encoder(checkpoint, tmp, torch_dtype)
    return out
