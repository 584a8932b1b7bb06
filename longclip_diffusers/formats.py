"""Read every CLIP checkpoint layout into one canonical state dict (writing is `writing.py`).

Canonical layout: the key names of a Hugging Face `CLIPModel` (`text_model.*`, optionally `vision_model.*`,
`text_projection.weight`, `visual_projection.weight`, `logit_scale`), plus the configs that describe it.

Layouts read:
- OpenAI / open_clip (`token_embedding.weight`, `transformer.resblocks.{i}.attn.in_proj_weight`, ...), as `.pt`,
  `.pth`, `.bin` or `.safetensors`, including the published Long-CLIP files, whose true position table is
  rows 0..19 of `positional_embedding` and rows 20.. of `positional_embedding_res`;
- open_clip model folders (`open_clip_config.json` + weights), e.g. open_clip's Hub repos;
- Hugging Face folders (`config.json` + `model.safetensors` / `pytorch_model.bin`) of `CLIPModel`,
  `CLIPTextModel` or `CLIPTextModelWithProjection`, with or without the `text_model.` prefix, including
  248-row checkpoints whose config lacks `max_position_embeddings`; diffusers folders (`text_encoder/`);
- single-file text encoders in the Hugging Face layout (ComfyUI's `text_encoders/*.safetensors`).

Pickles are never trusted: `.pt` files are read with `torch.load(weights_only=True)`, which refuses code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
)

from .constants import CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID
from .hub import WEIGHT_SUFFIXES, resolve

logger = logging.getLogger(__name__)

# Published Long-CLIP checkpoints take rows 0..19 from `positional_embedding`, the rest from `..._res`.
PUBLISHED_KEEP = 20
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "mask1", "mask2")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and the fix."""


@dataclass
class Checkpoint:
    """A CLIP model in the canonical layout.

    `state_dict` uses Hugging Face `CLIPModel` key names; tensors may be memory-mapped from the source file.
    `vision_config` and `projection_dim` are `None` for text-only sources.
    """

    state_dict: dict[str, torch.Tensor]
    text_config: CLIPTextConfig
    vision_config: CLIPVisionConfig | None = None
    projection_dim: int | None = None
    source: str = ""
    text_architecture: str = "CLIPTextModel"
    extras: dict = field(default_factory=dict)

    @property
    def num_positions(self) -> int:
        return self.state_dict["text_model.embeddings.position_embedding.weight"].shape[0]

    @property
    def has_vision(self) -> bool:
        return self.vision_config is not None

    @property
    def is_projection_model(self) -> bool:
        """Whether the source was saved as a `CLIPTextModelWithProjection` (the default output class then)."""
        return self.text_architecture == "CLIPTextModelWithProjection"

    @property
    def has_text_projection(self) -> bool:
        return "text_projection.weight" in self.state_dict


# ----------------------------------------------------------------------------------------------------------
# Reading raw state dicts
# ----------------------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without running any code in it; `.pt` files are memory-mapped when possible.

    A safetensors file is read as one whatever its suffix (e.g. saved as `.bin`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    head = _check_weights_file(path)
    is_zip = head.startswith(_ZIP_MAGIC)
    if path.suffix == ".safetensors" and is_zip:  # torch.load reads a .safetensors path as safetensors
        raise CheckpointError(f"{path}: is a PyTorch checkpoint, not a safetensors file; rename it to .pt.")
    if path.suffix == ".safetensors" or head[8:10] == _SAFETENSORS_HEADER_START:
        return _read_safetensors(path)
    try:
        # torch.load tells its zip format (memory-mappable) from the legacy one only by failing; look first
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        if not any(marker in str(error) for marker in _CODE_MARKERS):
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (its pickle data is invalid). {_DOWNLOAD_AGAIN}"
            ) from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors, and loading it "
            "could run code. Only load checkpoints you trust; convert a trusted one to .safetensors first. "
            f"(torch said: {_first_line(error)})"
        ) from None
    except Exception as error:  # torch's readers fail on damaged files with any error type (EOFError, KeyError...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt download?): "
            f"{_first_line(error)}. {_DOWNLOAD_AGAIN}"
        ) from None
    return _unwrap(loaded, path)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_SAFETENSORS_HEADER_START = b'{"'  # a safetensors file: 8 bytes of header length, then its JSON header
# Markers of torch's weights-only refusal of a pickle that names code (as opposed to a damaged pickle).
_CODE_MARKERS = ("Unsupported global", "Trying to call reduce", "Unsupported class")
_DOWNLOAD_AGAIN = "Download it again."


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_weights_file(path: Path) -> bytes:
    """The first bytes of a weights file, after refusing what cannot hold weights: empty files and text files
    (a Git LFS pointer, an error page saved in place of the download)."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        raise CheckpointError(f"{path}: is empty (0 bytes); the download or copy did not finish. {_DOWNLOAD_AGAIN}")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path}: is a Git LFS pointer, not the weights; fetch them with `git lfs pull` in its repository "
            "(or download the file itself)."
        )
    if all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head):
        raise CheckpointError(
            f"{path}: holds text ({head[:32].decode()!r}...), not weights; an error page saved in place of the "
            f"file? {_DOWNLOAD_AGAIN}"
        )
    return head


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path}: not a complete safetensors file (truncated or corrupt download?): {error}. {_DOWNLOAD_AGAIN}"
        ) from None


def _read_json(path: Path) -> dict:
    """A JSON object from a config file, or a one-line error naming the file."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); restore or download the file again.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(config).__name__}, not the object of a config.")
    return config


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in a training checkpoint ({"state_dict": ...}) and drop DDP's `module.` prefix."""
    for container in ("state_dict", "model", "module"):
        if isinstance(loaded, dict) and isinstance(loaded.get(container), dict):
            loaded = loaded[container]
    if not isinstance(loaded, dict) or not any(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors; is it a model checkpoint?")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """The tensors a safetensors header describes (name -> dtype, shape, data_offsets; `__metadata__` left out)
    and the byte offset where their data starts, read without loading any tensor."""
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > _MAX_SAFETENSORS_HEADER:
                raise ValueError(f"a header of {header_size} bytes")
            header = json.loads(handle.read(header_size))
        tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
        if not all(isinstance(entry, dict) for entry in tensors.values()):
            raise ValueError("a tensor entry that is not an object")
        return tensors, 8 + header_size
    except (struct.error, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {error}).") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor shapes recorded in a safetensors header, read without loading any tensor."""
    tensors, _ = safetensors_header(path)
    try:
        return {key: list(entry["shape"]) for key, entry in tensors.items()}
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {error}).") from None


_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit


def text_positions(folder: Path) -> int | None:
    """Rows of the text position table of a Hugging Face (or diffusers) folder, from file headers only.

    `None` when the folder holds no single `model.safetensors` text encoder.
    """
    for candidate in (folder / "model.safetensors", folder / "text_encoder" / "model.safetensors"):
        if candidate.is_file():
            try:
                shapes = safetensors_shapes(candidate)
            except CheckpointError:  # the encoder's own loading reports that; the tokenizer does not need it
                return None
            for key, shape in shapes.items():
                if key.endswith("embeddings.position_embedding.weight") and not key.startswith("vision_model."):
                    return shape[0] if shape else None
    return None


# ----------------------------------------------------------------------------------------------------------
# OpenAI / open_clip layout -> canonical
# ----------------------------------------------------------------------------------------------------------

_OPENAI_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _openai_block(prefix_in: str, prefix_out: str, sd: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the canonical tensors of one OpenAI residual block."""
    for kind in ("weight", "bias"):
        q, k, v = sd[f"{prefix_in}.attn.in_proj_{kind}"].chunk(3, dim=0)
        yield f"{prefix_out}.self_attn.q_proj.{kind}", q
        yield f"{prefix_out}.self_attn.k_proj.{kind}", k
        yield f"{prefix_out}.self_attn.v_proj.{kind}", v
        for old, new in _OPENAI_BLOCK_RENAMES.items():
            yield f"{prefix_out}.{new}.{kind}", sd[f"{prefix_in}.{old}.{kind}"]


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in sd if key.startswith(prefix)})


def merged_position_table(sd: dict[str, torch.Tensor], keep: int = PUBLISHED_KEEP) -> torch.Tensor:
    """The position table a published Long-CLIP checkpoint really uses.

    The reference model adds `positional_embedding * mask1 + positional_embedding_res * mask2`, with mask1
    selecting rows 0..keep-1 and mask2 the rest, so copying `positional_embedding` alone is subtly wrong.
    """
    table = sd["positional_embedding"]
    residual = sd.get("positional_embedding_res")
    if residual is None:
        return table
    if residual.shape != table.shape:
        raise CheckpointError(
            f"positional_embedding {tuple(table.shape)} and positional_embedding_res {tuple(residual.shape)} "
            "differ in shape; this is not a Long-CLIP checkpoint."
        )
    return torch.cat([table[:keep], residual[keep:]], dim=0)


def openai_to_canonical(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI / open_clip state dict (text tower, and vision tower when present) to canonical keys."""
    if "text.token_embedding.weight" in sd:  # open_clip CustomTextCLIP keeps its text tower under `text.`
        sd = {key.removeprefix("text."): value for key, value in sd.items()}
    out: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": merged_position_table(sd),
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
    }
    for i in range(_count_blocks(sd, "transformer.resblocks.")):
        out.update(_openai_block(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", sd))
    if "text_projection" in sd:
        projection = sd["text_projection"]
        out["text_projection.weight"] = projection.t() if projection.ndim == 2 else projection
    if "text_projection.weight" in sd:  # open_clip `proj_type="linear"` text towers
        out["text_projection.weight"] = sd["text_projection.weight"]
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    if "visual.proj" in sd and "visual.conv1.weight" in sd:
        out.update(
            {
                "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
                "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
                "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
                "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
                "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
                "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
                "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
                "visual_projection.weight": sd["visual.proj"].t(),
            }
        )
        for i in range(_count_blocks(sd, "visual.transformer.resblocks.")):
            out.update(_openai_block(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", sd))
    return out


def canonical_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `openai_to_canonical`: canonical keys back to the OpenAI / open_clip `CLIP` layout."""
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    towers = [("text_model.encoder.layers", "transformer.resblocks")]
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].t()
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    if "vision_model.embeddings.class_embedding" in sd:
        out.update(
            {
                "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
                "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
                "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
                "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
                "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
                "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
                "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
                "visual.proj": sd["visual_projection.weight"].t(),
            }
        )
        towers.append(("vision_model.encoder.layers", "visual.transformer.resblocks"))
    for prefix_in, prefix_out in towers:
        for i in range(_count_blocks(sd, f"{prefix_in}.")):
            block_in, block_out = f"{prefix_in}.{i}", f"{prefix_out}.{i}"
            for kind in ("weight", "bias"):
                projections = [sd[f"{block_in}.self_attn.{name}_proj.{kind}"] for name in "qkv"]
                out[f"{block_out}.attn.in_proj_{kind}"] = torch.cat(projections, dim=0)
                for old, new in _OPENAI_BLOCK_RENAMES.items():
                    out[f"{block_out}.{old}.{kind}"] = sd[f"{block_in}.{new}.{kind}"]
    return out


def _configs_from_openai(
    sd: dict[str, torch.Tensor], model_cfg: dict | None, where: Path
) -> tuple[CLIPTextConfig, CLIPVisionConfig | None, int | None]:
    """Build configs from canonical tensor shapes; heads and activation come from an open_clip config if given.

    Without one, the OpenAI conventions apply (as open_clip itself assumes): 64-wide heads and QuickGELU.
    """
    model_cfg = model_cfg or {}
    text_cfg, vision_cfg = model_cfg.get("text_cfg", {}), model_cfg.get("vision_cfg", {})
    act = "quick_gelu" if model_cfg.get("quick_gelu", not model_cfg) else "gelu"

    width = sd["text_model.final_layer_norm.weight"].shape[0]
    if not model_cfg and width % 64:
        raise CheckpointError(
            f"{where}: text width {width} is not a multiple of 64, so the head count cannot be inferred from the "
            "weights alone (as OpenAI's 64-wide heads). Use a folder that has its config (for ComfyUI, in "
            "models/text_encoders), or name its open_clip architecture: `longclip convert SRC OUT --open-clip-model "
            "NAME` (open_clip_model=NAME in Python; NAME may be a config JSON), then use the converted folder."
        )
    projection_dim = sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else None
    text_config = CLIPTextConfig(
        vocab_size=sd["text_model.embeddings.token_embedding.weight"].shape[0],
        hidden_size=width,
        intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count_blocks(sd, "text_model.encoder.layers."),
        num_attention_heads=text_cfg.get("heads", width // 64),
        max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        hidden_act=act,
        projection_dim=projection_dim or width,
        bos_token_id=CLIP_BOS_TOKEN_ID,
        eos_token_id=CLIP_EOS_TOKEN_ID,
    )
    vision_config = None
    if "vision_model.embeddings.class_embedding" in sd:
        vision_width = sd["vision_model.embeddings.class_embedding"].shape[0]
        patch_size = sd["vision_model.embeddings.patch_embedding.weight"].shape[-1]
        grid = math.isqrt(sd["vision_model.embeddings.position_embedding.weight"].shape[0] - 1)
        vision_config = CLIPVisionConfig(
            hidden_size=vision_width,
            intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=_count_blocks(sd, "vision_model.encoder.layers."),
            num_attention_heads=vision_width // vision_cfg.get("head_width", 64),
            image_size=patch_size * grid,
            patch_size=patch_size,
            hidden_act=act,
            projection_dim=sd["visual_projection.weight"].shape[0],
        )
        projection_dim = vision_config.projection_dim
    return text_config, vision_config, projection_dim


# ----------------------------------------------------------------------------------------------------------
# Hugging Face layout -> canonical
# ----------------------------------------------------------------------------------------------------------

_FLAT_TEXT_PREFIXES = ("embeddings.", "encoder.", "final_layer_norm.")


def hf_to_canonical(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every text-tower key the `text_model.` prefix (transformers 5 saves CLIPTextModel without it)."""
    return {(f"text_model.{key}" if key.startswith(_FLAT_TEXT_PREFIXES) else key): value for key, value in sd.items()}


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: has no weight_map; restore or download the file again.")
        shards = sorted(set(weight_map.values()))
        return {key: value for shard in shards for key, value in _read_safetensors(folder / shard).items()}
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise CheckpointError(f"{folder}: has a config.json but no model.safetensors or pytorch_model.bin.")


def _fix_position_count(text_config: CLIPTextConfig, sd: dict[str, torch.Tensor], where: Path) -> None:
    table = sd["text_model.embeddings.position_embedding.weight"]
    rows = table.shape[0] if table.ndim else 0
    if text_config.max_position_embeddings != rows:
        logger.warning(
            "%s: config says max_position_embeddings=%d but the position table has %d rows; using %d.",
            where,
            text_config.max_position_embeddings,
            rows,
            rows,
        )
        text_config.max_position_embeddings = rows


def _load_hf_folder(folder: Path, check_values: bool = True) -> Checkpoint:
    config_dict = _read_json(folder / "config.json")
    sd = hf_to_canonical(_read_hf_weights(folder))
    _require_text_tower(sd, folder)
    model_type = config_dict.get("model_type")
    if model_type not in ("clip", "clip_text_model"):
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type is {model_type!r}, not a CLIP model ('clip' or 'clip_text_model')."
        )
    try:
        if model_type == "clip":
            config = CLIPConfig.from_dict(config_dict)
            text_config, vision_config = config.text_config, config.vision_config
            projection_dim = config.projection_dim
            if not any(key.startswith("vision_model.") for key in sd):
                vision_config = None
            architecture = "CLIPTextModel"
        else:
            text_config, vision_config = CLIPTextConfig.from_dict(config_dict), None
            projection_dim = text_config.projection_dim if "text_projection.weight" in sd else None
            architecture = (config_dict.get("architectures") or ["CLIPTextModel"])[0]
    except Exception as error:  # transformers 5 validates configs as it reads them, raising its own error types
        raise CheckpointError(f"{folder / 'config.json'}: not a valid CLIP config: {_one_line(error)}") from None
    _fix_position_count(text_config, sd, folder)
    checkpoint = Checkpoint(sd, text_config, vision_config, projection_dim, str(folder), architecture)
    return check_checkpoint(checkpoint, check_values)


# ----------------------------------------------------------------------------------------------------------
# Any source -> Checkpoint
# ----------------------------------------------------------------------------------------------------------


def _require_text_tower(sd: dict[str, torch.Tensor], where: Path) -> None:
    if "text_model.embeddings.position_embedding.weight" not in sd:
        sample = ", ".join(sorted(sd)[:3])
        raise CheckpointError(
            f"{where}: not a CLIP text encoder (no token/position embeddings found; keys start with {sample}). "
            "Pass a Long-CLIP / CLIP checkpoint: an OpenAI-layout .pt, an open_clip checkpoint or a "
            "Hugging Face CLIP folder."
        )


def _is_openai_layout(sd: dict[str, torch.Tensor]) -> bool:
    return "token_embedding.weight" in sd or "text.token_embedding.weight" in sd


def _load_weights_file(path: Path, model_cfg: dict | None = None, check_values: bool = True) -> Checkpoint:
    return checkpoint_from_state_dict(read_state_dict(path), model_cfg, path, check_values=check_values)


def checkpoint_from_state_dict(
    sd: dict[str, torch.Tensor],
    model_cfg: dict | None = None,
    path: str | os.PathLike = "<state dict>",
    *,
    check_values: bool = True,
) -> Checkpoint:
    """A Checkpoint from an in-memory state dict (OpenAI / open_clip or Hugging Face layout), checked against
    the model its shapes describe (`check_checkpoint`).

    `model_cfg` is the open_clip model config (heads, activation); without it OpenAI conventions apply.
    `check_values=False` leaves the scan for NaN / infinite weights to the caller (`refuse_non_finite`).
    """
    path = Path(path)
    if model_cfg is None and (name := infer_open_clip_model(sd)):
        import open_clip  # slow to import: only for the towers that need it

        model_cfg = open_clip.get_model_config(name)
    if "text_projection" in sd and any(key.startswith("text_model.") for key in sd):
        # Hugging Face keys with a [width, projection] matrix: saved by ComfyUI's old CLIPSave node
        sd = {("text_projection.weight" if k == "text_projection" else k): v for k, v in sd.items()}
        sd["text_projection.weight"] = sd["text_projection.weight"].t()
    try:
        if _is_openai_layout(sd):
            sd = openai_to_canonical(sd)
            _require_text_tower(sd, path)
            text_config, vision_config, projection_dim = _configs_from_openai(sd, model_cfg, path)
            extras = {"logit_scale_init_value": float(sd["logit_scale"])} if "logit_scale" in sd else {}
            checkpoint = Checkpoint(sd, text_config, vision_config, projection_dim, str(path), extras=extras)
        else:
            sd = hf_to_canonical(sd)
            _require_text_tower(sd, path)
            # A bare Hugging Face-layout file (ComfyUI text encoder): the shapes say all but heads and activation.
            text_config, _, projection_dim = _configs_from_openai(sd, model_cfg, path)
            checkpoint = Checkpoint(sd, text_config, None, projection_dim, str(path))
    except KeyError as error:  # a tensor the layout needs is absent
        raise CheckpointError(
            f"{path}: tensor {error.args[0]} is missing; the file is incomplete or not a whole CLIP model. "
            f"{_DOWNLOAD_AGAIN}"
        ) from None
    except (IndexError, RuntimeError) as error:  # a tensor without the dimensions its role needs
        raise CheckpointError(f"{path}: has tensors of the wrong shape for a CLIP model ({error}).") from None
    return check_checkpoint(checkpoint, check_values)


# ----------------------------------------------------------------------------------------------------------
# Checking a checkpoint against its configs, before anything is built or written from it
# ----------------------------------------------------------------------------------------------------------


def _is_optional(key: str) -> bool:
    """Tensors a checkpoint may have or lack: buffers older transformers saved, and CLIP's logit scale (only
    a full CLIPModel uses it, and gets a default without it)."""
    return key == "logit_scale" or key.endswith(".position_ids")


def _describe(checkpoint: Checkpoint) -> str:
    config = checkpoint.text_config
    return (
        f"a CLIP with text width {config.hidden_size}, {config.num_hidden_layers} layers and "
        f"{config.max_position_embeddings} positions"
    )


def _names(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more tensors" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(map(str, shape)) if len(shape) else "a scalar"


def expected_shapes(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the transformers model `checkpoint`'s configs describe, in canonical names.

    The model is built on the meta device: no memory, no initialisation, milliseconds for a CLIP-L.
    """
    text_config = CLIPTextConfig.from_dict(checkpoint.text_config.to_dict())
    if checkpoint.projection_dim is not None:
        text_config.projection_dim = checkpoint.projection_dim
    try:
        with torch.device("meta"):
            if checkpoint.has_vision:
                config = CLIPConfig(
                    text_config=text_config.to_dict(),
                    vision_config=checkpoint.vision_config.to_dict(),
                    projection_dim=checkpoint.projection_dim,
                )
                model = CLIPModel(config)
            elif checkpoint.has_text_projection:
                model = CLIPTextModelWithProjection(text_config)
            else:
                model = CLIPTextModel(text_config)
    except Exception as error:  # transformers validates configs as it builds models, raising its own error types
        raise CheckpointError(
            f"{checkpoint.source}: its config describes no valid CLIP model: {_one_line(error)}"
        ) from None
    return {key: tuple(value.shape) for key, value in hf_to_canonical(model.state_dict()).items()}


def _is_finite(tensor: torch.Tensor) -> bool:
    """Whether no value is NaN or infinite. A sum is finite only if every value is, and takes one read-only pass
    (`isfinite` writes a mask as large as the tensor: 7-20 times slower on a CPU); only a sum that overflows needs
    the exact check."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def refuse_non_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinite values (which every output would carry), naming the first tensor.

    Reads every value: meta tensors (shapes without values) are left out.
    """
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not tensor.is_meta and not _is_finite(tensor):
            raise CheckpointError(
                f"{where}: tensor {key} holds NaN or infinite values; the checkpoint is damaged (or its training "
                "diverged). Use an intact copy."
            )


def check_checkpoint(checkpoint: Checkpoint, check_values: bool = True) -> Checkpoint:
    """Refuse a checkpoint that would not load as the model its configs describe (a missing, unexpected or
    misshapen tensor) or, unless `check_values=False`, that holds NaN or infinite weights; return it unchanged
    otherwise. Meta tensors (shapes without values) are checked for shapes only.
    """
    where, state_dict = checkpoint.source, checkpoint.state_dict
    expected = expected_shapes(checkpoint)
    missing = [key for key in expected if key not in state_dict and not _is_optional(key)]
    if missing:
        raise CheckpointError(
            f"{where}: {_describe(checkpoint)} also needs {_names(missing)}, which the checkpoint lacks; it is "
            f"incomplete or its config does not fit its weights. {_DOWNLOAD_AGAIN}"
        )
    unexpected = [key for key in state_dict if key not in expected and not _is_optional(key)]
    if unexpected:
        raise CheckpointError(
            f"{where}: holds {_names(unexpected)}, which {_describe(checkpoint)} does not have; its config does not "
            "fit its weights."
        )
    for key, shape in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {key} has shape {_shape(state_dict[key].shape)}, but {_describe(checkpoint)} "
                f"needs {_shape(shape)}; the checkpoint is damaged or mixes two models. Use an intact copy."
            )
    if check_values:
        refuse_non_finite(state_dict, where)
    return checkpoint


# Weights-only files carry no config. OpenAI's conventions (64-wide heads, QuickGELU) fit CLIP-L and the
# published Long-CLIPs; OpenCLIP-bigG (SDXL) and -H (SD 2.x) use GELU: told apart by depth, as ComfyUI does.
_OPEN_CLIP_TEXT_TOWERS = {32: "ViT-bigG-14", 24: "ViT-H-14"}


def infer_open_clip_model(sd: dict[str, torch.Tensor]) -> str | None:
    """The open_clip architecture of a config-less text tower that does not follow OpenAI's conventions."""
    depth = max(
        _count_blocks(sd, "transformer.resblocks."),
        _count_blocks(sd, "text.transformer.resblocks."),
        _count_blocks(sd, "text_model.encoder.layers."),
        _count_blocks(sd, "encoder.layers."),
    )
    return _OPEN_CLIP_TEXT_TOWERS.get(depth)


def _single_weights_file(folder: Path) -> Path | None:
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise CheckpointError(f"{folder}: holds several weights files ({names}); pass the one to use.")
    return candidates[0] if candidates else None


def load_checkpoint(
    source: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    open_clip_model: str | None = None,
    check_values: bool = True,
) -> Checkpoint:
    """Read any supported CLIP checkpoint (local file or folder, or Hugging Face Hub repo id) into canonical form.

    `open_clip_model` names an open_clip architecture (or its config JSON) whose head counts and activation
    apply to an OpenAI-layout file; open_clip folders carry theirs in `open_clip_config.json`.
    `check_values=False` skips the scan for NaN / infinite weights, which reads every weight: for callers that
    scan later (`LongCLIPTextEncoder` does at the first forward pass).
    """
    path = resolve(source, subfolder=subfolder, revision=revision)
    model_cfg = _open_clip_model_config(open_clip_model) if open_clip_model else None
    if path.is_file():
        return _load_weights_file(path, model_cfg, check_values)
    if (path / "config.json").is_file():
        return _load_hf_folder(path, check_values)
    if (path / "open_clip_config.json").is_file():
        model_cfg = model_cfg or _open_clip_model_config(str(path / "open_clip_config.json"))
        weights = _single_weights_file(path) or path / "open_clip_pytorch_model.bin"
        return _load_weights_file(weights, model_cfg, check_values)
    if (path / "text_encoder" / "config.json").is_file():
        _require_one_text_encoder(path)
        return _load_hf_folder(path / "text_encoder", check_values)
    weights = _single_weights_file(path)
    if weights is None:
        raise CheckpointError(
            f"{path}: found no CLIP weights (no config.json, text_encoder/, open_clip_config.json or single "
            f"weights file {'/'.join(WEIGHT_SUFFIXES)})."
        )
    return _load_weights_file(weights, model_cfg, check_values)


def _require_one_text_encoder(pipeline: Path) -> None:
    """Refuse a pipeline folder with several text encoders (SDXL, SD 3, Flux.1): which one to read is not for us to
    guess. Its model_index.json names them (a Hub download holds only the `text_encoder/` it read)."""
    index = pipeline / "model_index.json"
    if not index.is_file():
        return
    components = _read_json(index)
    encoders = sorted(name for name, value in components.items() if name.startswith("text_encoder") and value)
    if len(encoders) > 1:
        kind = components.get("_class_name", "diffusers")
        raise CheckpointError(
            f"{pipeline}: is a {kind} pipeline with {len(encoders)} text encoders ({', '.join(encoders)}); name the "
            "one to read with --subfolder (subfolder= in Python), e.g. --subfolder text_encoder for its CLIP-L."
        )


def _open_clip_model_config(name: str) -> dict:
    """An open_clip architecture config, by model name (e.g. `ViT-bigG-14`) or path to a config JSON."""
    if Path(name).is_file():
        config = _read_json(Path(name))
        return config.get("model_cfg", config)
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise CheckpointError(
            f"{name!r} is not an open_clip model name (see open_clip.list_models()) or a config JSON file."
        )
    return config
