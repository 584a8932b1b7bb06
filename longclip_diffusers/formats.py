"""Read any CLIP checkpoint into the canonical form (`checkpoint.Checkpoint`); writing is `writing.py`.

Sources read:
- OpenAI / open_clip layout files (`.pt`, `.pth`, `.bin` or `.safetensors`), including the published Long-CLIP
  files; open_clip model folders (`open_clip_config.json` + weights), e.g. open_clip's Hub repos;
- Hugging Face folders (`config.json` + `model.safetensors` / `pytorch_model.bin`) of `CLIPModel`,
  `CLIPTextModel` or `CLIPTextModelWithProjection`, with or without the `text_model.` prefix, including
  248-row checkpoints whose config lacks `max_position_embeddings`; diffusers folders (`text_encoder/`);
- single-file text encoders in the Hugging Face layout (ComfyUI's `text_encoders/*.safetensors`).

Files are read by `weights_files` (never running code in them), renamed by `layouts`, and checked against the model
they describe by `checkpoint_checks` before anything is built or written from them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPTextConfig

from .checkpoint import Checkpoint, CheckpointError
from .checkpoint_checks import check_checkpoint
from .hub import WEIGHT_SUFFIXES, resolve
from .layouts import configs_from_shapes, hf_to_canonical, infer_open_clip_model, is_openai_layout, openai_to_canonical
from .weights_files import DOWNLOAD_AGAIN, one_line, read_json, read_safetensors, read_state_dict

logger = logging.getLogger(__name__)


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: has no weight_map; restore or download the file again.")
        shards = sorted(set(weight_map.values()))
        return {key: value for shard in shards for key, value in read_safetensors(folder / shard).items()}
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
    config_dict = read_json(folder / "config.json")
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
        raise CheckpointError(f"{folder / 'config.json'}: not a valid CLIP config: {one_line(error)}") from None
    _fix_position_count(text_config, sd, folder)
    checkpoint = Checkpoint(sd, text_config, vision_config, projection_dim, str(folder), architecture)
    return check_checkpoint(checkpoint, check_values)


def _require_text_tower(sd: dict[str, torch.Tensor], where: Path) -> None:
    if "text_model.embeddings.position_embedding.weight" not in sd:
        sample = ", ".join(sorted(sd)[:3])
        raise CheckpointError(
            f"{where}: not a CLIP text encoder (no token/position embeddings found; keys start with {sample}). "
            "Pass a Long-CLIP / CLIP checkpoint: an OpenAI-layout .pt, an open_clip checkpoint or a "
            "Hugging Face CLIP folder."
        )


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
        if is_openai_layout(sd):
            sd = openai_to_canonical(sd)
            _require_text_tower(sd, path)
            text_config, vision_config, projection_dim = configs_from_shapes(sd, model_cfg, path)
            extras = {"logit_scale_init_value": float(sd["logit_scale"])} if "logit_scale" in sd else {}
            checkpoint = Checkpoint(sd, text_config, vision_config, projection_dim, str(path), extras=extras)
        else:
            sd = hf_to_canonical(sd)
            _require_text_tower(sd, path)
            # A bare Hugging Face-layout file (ComfyUI text encoder): the shapes say all but heads and activation.
            text_config, _, projection_dim = configs_from_shapes(sd, model_cfg, path)
            checkpoint = Checkpoint(sd, text_config, None, projection_dim, str(path))
    except KeyError as error:  # a tensor the layout needs is absent
        raise CheckpointError(
            f"{path}: tensor {error.args[0]} is missing; the file is incomplete or not a whole CLIP model. "
            f"{DOWNLOAD_AGAIN}"
        ) from None
    except (IndexError, RuntimeError) as error:  # a tensor without the dimensions its role needs
        raise CheckpointError(f"{path}: has tensors of the wrong shape for a CLIP model ({error}).") from None
    return check_checkpoint(checkpoint, check_values)


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
    components = read_json(index)
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
        config = read_json(Path(name))
        return config.get("model_cfg", config)
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise CheckpointError(
            f"{name!r} is not an open_clip model name (see open_clip.list_models()) or a config JSON file."
        )
    return config
