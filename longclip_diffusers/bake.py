"""`longclip bake`: a single-file SD 1.x / SDXL checkpoint with a Long-CLIP baked in, the file model sites share
and ComfyUI / A1111 load (and the Long-CLIP pipelines' `from_single_file`).

Only the text-encoder tensors change; every other tensor (UNet, VAE) is written byte for byte as it was, and the
file's metadata is kept. The new encoder's tensors take the dtype of the encoder they replace.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .atomic import atomic_output
from .checkpoint import Checkpoint, CheckpointError
from .formats import load_checkpoint
from .single_file import EncoderSlot, encoder_slots, encoder_tensors, read_single_file
from .stretch import CLIP_POSITIONS, causal_mask
from .writing import write_safetensors

# Tensors of a slot that are not weights of the text tower: kept (logit scale) or rebuilt at the new length.
_BUFFERS = ("position_ids", "attn_mask")
_KEPT = ("logit_scale",)


def bake(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    encoder: str | os.PathLike | None = None,
    encoder_2: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out`: the single file `checkpoint` with its CLIP-L replaced by `encoder` and, for SDXL, its bigG by
    `encoder_2` (each any source `longclip convert` reads). Shapes must fit the encoder replaced (its position
    count aside); `out` appears only once complete."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: give an output path ending in .safetensors (a single-file checkpoint).")
    if encoder is None and encoder_2 is None:
        raise ValueError("nothing to bake: give --encoder (CLIP-L) and/or --encoder-2 (SDXL's bigG).")
    with atomic_output(out, overwrite=overwrite) as tmp:  # an existing `out` is refused before anything is read
        tensors = read_single_file(checkpoint)
        slots = encoder_slots(tensors)
        if not slots:
            raise CheckpointError(
                f"{checkpoint}: not an SD 1.x or SDXL single-file checkpoint with its text encoders (no "
                "cond_stage_model.transformer.* or conditioner.embedders.*); bake into the model's own single file."
            )
        if encoder_2 is not None and len(slots) == 1:
            raise ValueError(
                f"{checkpoint}: an SD 1.x checkpoint has one text encoder (CLIP-L); give it as --encoder, without "
                "--encoder-2 (SDXL's bigG)."
            )
        for slot, source in zip(slots, (encoder, encoder_2), strict=False):
            if source is not None:
                tensors = _replace(tensors, slot, load_checkpoint(source), str(checkpoint), slots)
        write_safetensors(tensors, tmp, metadata=_metadata(Path(checkpoint)))
    return out


def _replace(
    tensors: dict[str, torch.Tensor], slot: EncoderSlot, new: Checkpoint, where: str, slots: tuple[EncoderSlot, ...]
) -> dict[str, torch.Tensor]:
    """`tensors` with `slot`'s encoder replaced by `new`, after checking that it fits."""
    if new.num_positions <= CLIP_POSITIONS:
        raise CheckpointError(
            f"{new.source}: has {new.num_positions} text positions, a plain CLIP: nothing to bake. Give a Long-CLIP "
            "(or make a training-free one with `longclip stretch`)."
        )
    if slot.with_projection and not new.has_text_projection:
        raise CheckpointError(
            f"{new.source}: has no text projection, which the {slot.name} needs (SDXL's pooled vector); give the "
            "text tower with its projection (a CLIPTextModelWithProjection or open_clip checkpoint)."
        )
    old = _slot_tensors(tensors, slot)
    replacement = encoder_tensors(new, slot)
    if not _fits(old, replacement, slot):
        raise CheckpointError(f"{new.source}: {_misfit(new, slot, tensors, slots, where)}")
    dtype = old[slot.position_key].dtype
    replacement = {key: value.to(dtype) for key, value in replacement.items()}
    positions = new.num_positions
    for key, value in old.items():
        if key.endswith("position_ids"):
            replacement[key] = torch.arange(positions, dtype=value.dtype).reshape(*value.shape[:-1], positions)
        elif key.endswith("attn_mask"):
            replacement[key] = causal_mask(positions).to(value.dtype)
        elif key.endswith(_KEPT):
            replacement[key] = value
    return {key: value for key, value in tensors.items() if key not in old} | replacement


def _fits(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], slot: EncoderSlot) -> bool:
    weights = {key for key in old if not key.endswith(_BUFFERS + _KEPT)}
    if weights != set(new):
        return False
    table = slot.position_key
    return all(new[k].shape == old[k].shape for k in weights - {table}) and new[table].shape[1:] == old[table].shape[1:]


def _slot_tensors(tensors: dict[str, torch.Tensor], slot: EncoderSlot) -> dict[str, torch.Tensor]:
    return {key: value for key, value in tensors.items() if key.startswith(slot.prefix)}


def _size(tower: dict[str, torch.Tensor], slot: EncoderSlot) -> str:
    blocks = {match.group(1) for key in tower if (match := re.search(r"(?:layers|resblocks)\.(\d+)\.", key))}
    return f"width {tower[slot.position_key].shape[-1]} and {len(blocks)} layers"


def _misfit(new: Checkpoint, slot: EncoderSlot, tensors, slots: tuple[EncoderSlot, ...], where: str) -> str:
    """Why `new` does not fit `slot`, and the fix."""
    message = (
        f"a text encoder of {_size(encoder_tensors(new, slot), slot)}, but {where}'s {slot.name} has "
        f"{_size(_slot_tensors(tensors, slot), slot)}"
    )
    for other in slots:
        if other != slot and (new.has_text_projection or not other.with_projection):
            if _fits(_slot_tensors(tensors, other), encoder_tensors(new, other), other):
                flag = "--encoder-2" if other.component == "text_encoder_2" else "--encoder"
                return f"{message}; it fits the {other.name}: pass it as {flag}."
    return f"{message}; give a Long-CLIP made from this model's own {slot.name} (the same width and depth)."


def _metadata(path: Path) -> dict[str, str] | None:
    if path.suffix != ".safetensors":
        return None
    with safe_open(path, framework="pt") as handle:
        return handle.metadata()


def add_bake_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="single-file SD 1.x or SDXL checkpoint (.safetensors, .ckpt)"
    )
    parser.add_argument(
        "--encoder", metavar="SRC", help="the Long-CLIP-L to bake in (any SRC `longclip convert` reads)"
    )
    parser.add_argument("--encoder-2", metavar="SRC", help="SDXL: a long OpenCLIP-bigG for the second encoder")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (once the new one is done)"
    )


def run_bake(args: argparse.Namespace) -> str:
    out = bake(args.checkpoint, args.out, encoder=args.encoder, encoder_2=args.encoder_2, overwrite=args.overwrite)
    baked = ", ".join(
        f"{flag} {source}" for flag, source in (("CLIP-L:", args.encoder), ("bigG:", args.encoder_2)) if source
    )
    return f"wrote {out} ({args.checkpoint} with {baked} baked in)"
