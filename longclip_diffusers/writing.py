"""Write each output layout: safetensors files, Hugging Face text encoders and CLIPModels with their tokenizer
and processor, ComfyUI single files. Every write goes through `atomic` (complete or absent).

Tensors are streamed one at a time into the file, so memory-mapped sources are never copied whole.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPTextConfig

from .checkpoint import Checkpoint, CheckpointError
from .constants import SAFETENSORS_DTYPES, config_dtype_name
from .tokenizer import LongCLIPTokenizer, check_pair, tokenizer_folder

# OpenAI CLIP's image normalisation, used by every CLIP / Long-CLIP checkpoint.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


_PROGRESS_MIN_BYTES = 256 * 2**20  # show a progress bar when writing more than this


def write_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file one tensor at a time, so memory-mapped sources are never copied whole.

    `dtype` converts floating-point tensors on the way; `metadata` (strings) goes into the header.
    """

    def target_dtype(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    header: dict[str, dict] = {"__metadata__": {**(metadata or {}), "format": "pt"}}
    offset = 0
    for name, tensor in tensors.items():
        out_dtype = target_dtype(tensor)
        size = tensor.numel() * torch.empty((), dtype=out_dtype).element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[out_dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    progress = tqdm(
        total=offset, unit="B", unit_scale=True, desc=f"writing {Path(path).name}", disable=offset < _PROGRESS_MIN_BYTES
    )
    with open(path, "wb") as handle, progress:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for tensor in tensors.values():
            data = tensor.detach().to("cpu", target_dtype(tensor)).contiguous().reshape(-1)
            handle.write(data.view(torch.uint8).numpy().data)
            progress.update(data.numel() * data.element_size())


def text_state_dict(checkpoint: Checkpoint, with_projection: bool) -> dict[str, torch.Tensor]:
    """The canonical text tower (keys `text_model.*`, and `text_projection.weight` when asked for)."""
    sd = {key: value for key, value in checkpoint.state_dict.items() if key.startswith("text_model.")}
    if with_projection:
        if not checkpoint.has_text_projection:
            raise CheckpointError(
                f"{checkpoint.source}: has no text projection, so it cannot be a *WithProjection model."
            )
        sd["text_projection.weight"] = checkpoint.state_dict["text_projection.weight"]
    return sd


def text_config_dict(checkpoint: Checkpoint, with_projection: bool, dtype: torch.dtype | None = None) -> dict:
    """The config of the text encoder `checkpoint` gives (with weights stored in `dtype`, if given)."""
    config = CLIPTextConfig.from_dict(checkpoint.text_config.to_dict())
    architecture = "CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"
    config.architectures = [architecture]
    if with_projection:
        config.projection_dim = checkpoint.state_dict["text_projection.weight"].shape[0]
    config = config.to_dict()
    if dtype is not None:
        config["torch_dtype"] = config["dtype"] = config_dtype_name(dtype)
    return config


def write_text_encoder(
    checkpoint: Checkpoint, folder: Path, with_projection: bool | None = None, dtype: torch.dtype | None = None
) -> None:
    """Write a Hugging Face text-encoder folder (`config.json` + `model.safetensors`) into `folder`.

    Keys carry the `text_model.` prefix, the layout transformers 4.x expects and 5.x still loads.
    """
    if with_projection is None:
        with_projection = checkpoint.is_projection_model
    folder.mkdir(parents=True, exist_ok=True)
    config = text_config_dict(checkpoint, with_projection, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors(text_state_dict(checkpoint, with_projection), folder / "model.safetensors", dtype)


def clip_config(checkpoint: Checkpoint) -> CLIPConfig:
    if not checkpoint.has_vision:
        raise CheckpointError(
            f"{checkpoint.source}: has no vision tower, so it cannot be written as a full CLIPModel; "
            "use `--to diffusers` or `--to comfyui` for a text encoder."
        )
    config = CLIPConfig(
        text_config=checkpoint.text_config.to_dict(),
        vision_config=checkpoint.vision_config.to_dict(),
        projection_dim=checkpoint.projection_dim,
        **checkpoint.extras,
    )
    config.architectures = ["CLIPModel"]
    return config


def write_clip_model(checkpoint: Checkpoint, folder: Path, dtype: torch.dtype | None = None) -> None:
    """Write a full Hugging Face `CLIPModel` folder (weights + config) into `folder`."""
    config = clip_config(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    sd = dict(checkpoint.state_dict)
    sd.setdefault("logit_scale", torch.tensor(config.logit_scale_init_value))
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    write_safetensors(sd, folder / "model.safetensors", dtype)


def write_comfyui_text_encoder(checkpoint: Checkpoint, path: Path, dtype: torch.dtype | None = None) -> None:
    """One safetensors file in the layout ComfyUI core loads as a (Long-)CLIP-L text encoder.

    ComfyUI detects the model from `text_model.*` key names and switches to its 248-token Long-CLIP
    tokenizer when `text_model.embeddings.position_embedding.weight` has 248 rows.
    """
    with_projection = checkpoint.has_text_projection
    write_safetensors(text_state_dict(checkpoint, with_projection), path, dtype)


def tokenizer_for(checkpoint: Checkpoint, pad_token: str | None = None) -> LongCLIPTokenizer:
    """The tokenizer to ship beside `checkpoint`: the source's own files if it has them (a pipeline's
    `text_encoder*` folder has them beside it: SD 2's pads with "!"), else CLIP's BPE."""
    source = Path(checkpoint.source)
    folder = tokenizer_folder(source) if source.exists() else None  # None: an in-memory state dict
    tokenizer = LongCLIPTokenizer.from_pretrained(
        folder, model_max_length=checkpoint.num_positions, pad_token=pad_token
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
