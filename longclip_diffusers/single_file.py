"""The text encoders inside single-file Stable Diffusion checkpoints (the one-file layout model sites share and
ComfyUI / A1111 load): where each sits, read into a canonical `Checkpoint`, and written back.

- SD 1.x: CLIP-L at `cond_stage_model.transformer.text_model.*` (Hugging Face names);
- SDXL: CLIP-L at `conditioner.embedders.0.transformer.text_model.*` and OpenCLIP-bigG at
  `conditioner.embedders.1.model.*` (open_clip names: `transformer.resblocks.*`, `positional_embedding`, ...).
A Long-CLIP encoder is the same tensors with a longer position table (248 rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig

from .checkpoint import Checkpoint, CheckpointError
from .formats import checkpoint_from_state_dict
from .layouts import canonical_to_openai
from .weights_files import read_state_dict


@dataclass(frozen=True)
class EncoderSlot:
    """Where one text encoder sits in a single file, and how the pipelines name it."""

    component: str  # the diffusers pipeline's name: text_encoder, text_encoder_2
    prefix: str  # the key prefix in the file
    open_clip_names: bool  # open_clip key names (SDXL's bigG) rather than Hugging Face's `text_model.*`
    with_projection: bool  # the pipeline reads the projected pooled vector (SDXL's bigG)
    name: str  # for messages

    @property
    def position_key(self) -> str:
        return self.prefix + ("positional_embedding" if self.open_clip_names else _HF_POSITIONS)


_HF_POSITIONS = "text_model.embeddings.position_embedding.weight"
SD_SLOTS = (EncoderSlot("text_encoder", "cond_stage_model.transformer.", False, False, "SD 1.x CLIP-L"),)
SDXL_SLOTS = (
    EncoderSlot("text_encoder", "conditioner.embedders.0.transformer.", False, False, "SDXL CLIP-L"),
    EncoderSlot("text_encoder_2", "conditioner.embedders.1.model.", True, True, "SDXL OpenCLIP-bigG"),
)


SLOT_PREFIXES = tuple(slot.prefix for slot in SD_SLOTS + SDXL_SLOTS)


def encoder_slots(keys) -> tuple[EncoderSlot, ...]:
    """The text-encoder slots of a single file with these tensor names: SDXL's, SD 1.x's, or none."""
    keys = set(keys)
    for slots in (SDXL_SLOTS, SD_SLOTS):
        if all(slot.position_key in keys for slot in slots):
            return slots
    return ()


def read_single_file(path: str | os.PathLike, prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a single file, or only those whose names start with `prefixes` (read selectively from
    safetensors files; `.ckpt` pickles are read with `torch.load(weights_only=True)`)."""
    path = Path(path)
    if prefixes is None or path.suffix != ".safetensors" or not path.is_file():
        tensors = read_state_dict(path)  # a missing, empty or damaged file gets its one-line error here
        return {k: v for k, v in tensors.items() if prefixes is None or k.startswith(prefixes)}
    try:
        with safe_open(path, framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefixes)}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a complete safetensors file (truncated or corrupt?): {error}") from None


def slot_config(text_config: CLIPTextConfig) -> dict:
    """An open_clip-style model config giving what weights alone do not tell: heads and activation."""
    quick_gelu = text_config.hidden_act == "quick_gelu"
    return {"text_cfg": {"heads": text_config.num_attention_heads}, "quick_gelu": quick_gelu}


def read_encoder(
    tensors: dict[str, torch.Tensor], slot: EncoderSlot, source: str, text_config: CLIPTextConfig | None = None
) -> Checkpoint:
    """The encoder in `slot` as a checked canonical `Checkpoint`. Heads and activation come from `text_config`
    (e.g. the pipeline's own config) when given, else from OpenAI's conventions (bigG's by its depth)."""
    state_dict = {
        key.removeprefix(slot.prefix): value
        for key, value in tensors.items()
        if key.startswith(slot.prefix) and not key.endswith("position_ids")
    }
    model_config = slot_config(text_config) if text_config is not None else None
    return checkpoint_from_state_dict(state_dict, model_config, f"{source} ({slot.name}, {slot.prefix}*)")


def encoder_tensors(checkpoint: Checkpoint, slot: EncoderSlot) -> dict[str, torch.Tensor]:
    """`checkpoint`'s text tower under `slot`'s names (the projection only where the slot has one)."""
    state_dict = {k: v for k, v in checkpoint.state_dict.items() if k.startswith("text_model.")}
    if slot.with_projection:
        state_dict["text_projection.weight"] = checkpoint.state_dict["text_projection.weight"]
    if slot.open_clip_names:
        state_dict = canonical_to_openai(state_dict)
    return {slot.prefix + key: value for key, value in state_dict.items()}
