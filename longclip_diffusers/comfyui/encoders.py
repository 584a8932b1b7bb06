"""The LONGCLIP object the nodes pass around, and the ways to make one: from a file, or from a ComfyUI CLIP."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from ..checkpoint import Checkpoint, CheckpointError
from ..constants import CLIP_PAD_TOKEN, OPEN_CLIP_PAD_TOKEN
from ..convert import stretch_checkpoint
from ..formats import checkpoint_from_state_dict, load_checkpoint
from ..stretch import CLIP_POSITIONS, DEFAULT_KEEP, DEFAULT_RATIO
from ..text_encoder import build_text_model
from ..tokenizer import LongCLIPTokenizer, check_pair, tokenizer_folder
from ..writing import text_state_dict

CLIP_TYPES: tuple[str, ...] = ("clip_l", "clip_g")
# How SD / SDXL's tokenizers (and ComfyUI's) pad: CLIP-L with the end token, OpenCLIP-bigG with "!" (id 0).
PAD_TOKENS = {"clip_l": CLIP_PAD_TOKEN, "clip_g": OPEN_CLIP_PAD_TOKEN}


@dataclass
class LongCLIP:
    """What a LONGCLIP socket carries: one text encoder, its tokenizer, and its role.

    `clip_type` is `"clip_l"` (a Long-CLIP-L: SD 1.5's encoder, SDXL's and SD 3's first, Flux's CLIP) or `"clip_g"`
    (SDXL's and SD 3's OpenCLIP-bigG, with the text projection that gives the pooled output).
    """

    text_encoder: CLIPTextModel | CLIPTextModelWithProjection = field(repr=False)
    tokenizer: LongCLIPTokenizer = field(repr=False)
    clip_type: str = "clip_l"
    source: str = ""

    @property
    def num_positions(self) -> int:
        return self.text_encoder.config.max_position_embeddings

    @property
    def num_layers(self) -> int:
        return self.text_encoder.config.num_hidden_layers

    @property
    def has_projection(self) -> bool:
        return isinstance(self.text_encoder, CLIPTextModelWithProjection)


def check_clip_type(clip_type: str) -> None:
    if clip_type not in CLIP_TYPES:
        raise ValueError(f"Unknown clip_type {clip_type!r}; choose one of {', '.join(CLIP_TYPES)}.")


def read_checkpoint(source: str | os.PathLike) -> tuple[Checkpoint, Path | None]:
    """Read any source `longclip convert` reads; also return the folder to take a tokenizer from (or None).

    A file inside a Hugging Face or open_clip folder (how ComfyUI lists a folder's weights) reads the folder,
    with its config; a diffusers `text_encoder[_2]/` takes its tokenizer from the `tokenizer[_2]/` beside it.
    """
    path = Path(source).expanduser()
    if path.is_file() and any((path.parent / name).is_file() for name in ("config.json", "open_clip_config.json")):
        path = path.parent
    checkpoint = load_checkpoint(path)
    if path.is_file():
        return checkpoint, None
    if not path.is_dir():  # a Hub repo id
        return checkpoint, None
    return checkpoint, tokenizer_folder(path)


def role_problem(checkpoint: Checkpoint, clip_type: str) -> str | None:
    """Why the role `clip_type` cannot use `checkpoint`, and how to get one that fits; `None` when it can.

    `clip_l` must be long (a 77-position CLIP-L is refused); `clip_g` needs a text projection (SDXL's pooled
    output) and may have 77 positions (the SDXL node chunks or stretches it).
    """
    check_clip_type(clip_type)
    if clip_type == "clip_l" and checkpoint.num_positions <= CLIP_POSITIONS:
        return (
            f"has {checkpoint.num_positions} text positions, so it is a plain CLIP, not Long-CLIP. Load a "
            'Long-CLIP-L, or make a training-free long encoder from a CLIP with the "Long-CLIP from CLIP (stretch)" '
            "node or `longclip stretch`."
        )
    if clip_type == "clip_g" and not checkpoint.has_text_projection:
        return (
            "has no text projection, so it cannot give SDXL's or SD 3's pooled output; clip_g is their OpenCLIP-bigG "
            "text encoder (clip_g.safetensors, or text_encoder_2 of an SDXL or SD 3 repo)."
        )
    return None


def read_back_single_file(checkpoint: Checkpoint) -> Checkpoint:
    """What the loader reads from `checkpoint` saved as a ComfyUI single file (`write_comfyui_text_encoder`):
    weights without a config, whose heads and activation it infers from their shapes. Shapes only (meta
    tensors): nothing is copied or written."""
    tensors = text_state_dict(checkpoint, checkpoint.has_text_projection)
    return checkpoint_from_state_dict({key: value.to("meta") for key, value in tensors.items()}, path=checkpoint.source)


def long_clip_from_checkpoint(
    checkpoint: Checkpoint,
    clip_type: str = "clip_l",
    tokenizer_source: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LongCLIP:
    """Build the text encoder and tokenizer of `checkpoint` for the role `clip_type` (see `role_problem`).

    The encoder keeps its text projection when it has one; the tokenizer pads as SD / SDXL pad for that role.
    """
    problem = role_problem(checkpoint, clip_type)
    if problem:
        raise CheckpointError(f"{checkpoint.source}: {problem}")
    with_projection = checkpoint.has_text_projection
    text_encoder = build_text_model(checkpoint, with_projection, dtype)
    if device is not None:
        text_encoder.to(device)
    tokenizer = LongCLIPTokenizer.from_pretrained(
        tokenizer_source, model_max_length=checkpoint.num_positions, pad_token=PAD_TOKENS[clip_type]
    )
    check_pair(tokenizer, text_encoder.config, checkpoint.source)
    return LongCLIP(text_encoder, tokenizer, clip_type, checkpoint.source)


def load_long_clip(
    source: str | os.PathLike,
    clip_type: str = "clip_l",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LongCLIP:
    """Load a text encoder from any source `longclip convert` reads (OpenAI layout, Hugging Face, single file)."""
    check_clip_type(clip_type)
    checkpoint, tokenizer_source = read_checkpoint(source)
    return long_clip_from_checkpoint(checkpoint, clip_type, tokenizer_source, dtype=dtype, device=device)


def comfy_clip_encoder(clip: object, name: str, where_to_find_it: str) -> dict[str, torch.Tensor]:
    """The weights of the text encoder `name` (clip_l, clip_g, t5xxl) of a ComfyUI CLIP, which keeps each encoder
    under `<name>.transformer.`; when it holds none, a ValueError naming those it holds and `where_to_find_it`."""
    state_dict = clip.get_sd()
    prefix = f"{name}.transformer."
    tensors = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not tensors:
        present = sorted({key.split(".")[0] for key in state_dict if ".transformer." in key})
        raise ValueError(
            f"This CLIP has no {name} text encoder (it has: {', '.join(present) or 'no text encoder'}). "
            f"{where_to_find_it}"
        )
    return tensors


def comfy_clip_state_dict(clip: object, clip_type: str) -> dict[str, torch.Tensor]:
    """The text encoder `clip_type` of a ComfyUI CLIP (e.g. from Load Checkpoint), in Hugging Face key names.

    ComfyUI keeps CLIP towers with Hugging Face's `text_model.*` and `text_projection.weight` keys. CLIP-L's
    projection is dropped: SD checkpoints do not ship it.
    """
    check_clip_type(clip_type)
    where = "SD 1.5 checkpoints hold clip_l; SDXL checkpoints hold clip_l and clip_g."
    tensors = comfy_clip_encoder(clip, clip_type, where)
    if clip_type == "clip_l":
        tensors.pop("text_projection.weight", None)
    return tensors


def long_clip_from_comfy_clip(
    clip: object,
    clip_type: str = "clip_g",
    keep: int = DEFAULT_KEEP,
    ratio: int = DEFAULT_RATIO,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LongCLIP:
    """A training-free long encoder (knowledge-preserved stretch) from a ComfyUI CLIP's `clip_type` encoder.

    `ratio=1` takes the encoder as it is: SDXL's 77-position bigG for the SDXL node (which chunks or stretches
    it), or a Long-CLIP-L that ComfyUI itself loaded.
    """
    checkpoint = checkpoint_from_state_dict(comfy_clip_state_dict(clip, clip_type), path=f"the CLIP's {clip_type}")
    if ratio != 1:
        stretch_checkpoint(checkpoint, keep, ratio)
    elif clip_type == "clip_l" and checkpoint.num_positions <= CLIP_POSITIONS:
        raise ValueError("ratio=1 keeps this CLIP-L at 77 positions; ratio 4 makes a 248-position Long-CLIP-L.")
    return long_clip_from_checkpoint(checkpoint, clip_type, dtype=dtype, device=device)
