"""The model a run trains: open_clip's CLIP (or its text tower alone, `TextCLIP`, for a run on cached image
features) with its text positions stretched, as one training forward, and the rows kept frozen.

`logit_scale` is re-initialised to ln(100); the first `keep` position rows stay bit-identical (`FrozenRows`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from longclip_diffusers.constants import CLIP_EOS_TOKEN_ID
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.layouts import canonical_to_openai
from longclip_diffusers.stretch import stretch_model

from .config import TrainConfig
from .feature_cache import check_image_tower, read_complete_cache


def open_clip_config(model: str) -> tuple[str, dict]:
    """The open_clip name and config of --model: a model name, or a model-config JSON (registered under its name)."""
    import open_clip

    name = model
    if Path(name).is_file():
        open_clip.add_model_config(Path(name))
        name = Path(name).stem
        _check_model_config_keys(model, open_clip.get_model_config(name) or {})
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"--model {model!r}: not an open_clip model name or model-config JSON file.")
    return name, model_cfg


def _check_model_config_keys(model: str, model_cfg: dict) -> None:
    """Refuse a key of a model-config JSON that open_clip would reject deep inside `create_model` (a typo), naming
    it and the keys allowed where it stands."""
    import dataclasses
    import inspect

    from open_clip.coca_model import CoCa, MultimodalCfg
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    top = {name for kind in (CLIP, CoCa) for name in inspect.signature(kind.__init__).parameters}
    allowed = {"": (top - {"self", "cast_dtype"}) | {"custom_text"}}
    for section, kind in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg), ("multimodal_cfg", MultimodalCfg)):
        allowed[section] = {field.name for field in dataclasses.fields(kind)}
    for section, keys in allowed.items():
        given = model_cfg.get(section) if section else model_cfg
        unknown = sorted(set(given) - keys) if isinstance(given, dict) else []
        if unknown:
            where = f"{section}." if section else ""
            raise ValueError(
                f"--model {model}: unknown key {where}{unknown[0]}; open_clip takes {', '.join(sorted(keys))} there."
            )


def build_model(config: TrainConfig, cache: dict | None = None) -> tuple[nn.Module, object, dict]:
    """The open_clip model (text tower stretched), its image transform, and its open_clip config. With
    --image-features, the text tower alone (`TextCLIP`): no image-tower weights are built or kept, those of
    --pretrained are only checked against the cache's (`cache`: its description, read here when not given)."""
    import open_clip

    name, model_cfg = open_clip_config(config.model)
    is_tag = config.pretrained and not Path(config.pretrained).exists() and "/" not in config.pretrained
    if is_tag and config.pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"--pretrained {config.pretrained}: neither a file nor a pretrained tag open_clip has for {name} "
            f"(its tags: {tags}); check the spelling, or pass 'none' for random weights."
        )
    if config.image_features:
        model, preprocess = TextCLIP(model_cfg), cached_features
        source = pretrained_file(name, config.pretrained) if is_tag else config.pretrained
        image_tower = _load_weights(model, source, config.model, config.keep, config.ratio) if source else {}
        check_image_tower(config, cache or read_complete_cache(config.image_features), image_tower)
        del image_tower  # read only to check that it is the cache's
    else:
        loads_later = bool(config.pretrained) and not is_tag
        with _quiet_about_random_weights(loads_later):  # the weights are loaded just after
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=config.pretrained if is_tag else None
            )
        if config.pretrained and not is_tag:
            _load_weights(model, config.pretrained, config.model, config.keep, config.ratio)
    if model.positional_embedding.shape[0] == model_cfg["text_cfg"].get("context_length", 77):
        stretch_model(model, config.keep, config.ratio)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    for parameter_name, parameter in model.named_parameters():
        tower = "vision" if parameter_name.startswith("visual.") else "text"
        if tower in config.freeze and parameter_name != "logit_scale":
            parameter.requires_grad_(False)
    return model, preprocess, model_cfg


@contextmanager
def _quiet_about_random_weights(enabled: bool) -> Iterator[None]:
    """Leave out open_clip's "Model initialized randomly" warning (it logs on the root logger) while `enabled`."""

    def not_about_random_weights(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    if enabled:
        root.addFilter(not_about_random_weights)
    try:
        yield
    finally:
        root.removeFilter(not_about_random_weights)


def _load_weights(model: nn.Module, source: str, architecture: str, keep: int, ratio: int) -> dict[str, torch.Tensor]:
    """Load any checkpoint `longclip convert` reads into the open_clip model of `architecture` (--model; stretching
    the model first if the checkpoint is long); return the checkpoint's image-tower tensors, not loaded, for a model
    without an image tower."""
    checkpoint = load_checkpoint(source, open_clip_model=architecture)
    if hasattr(model, "visual") and not checkpoint.has_vision:
        raise ValueError(
            f"--pretrained {source}: a text encoder without an image tower (such as the final/ of a `train "
            "--image-features` run), and training needs both towers' weights; start from the checkpoint that run "
            "started from, or continue that run with --resume and its checkpoints/step_N."
        )
    sd = canonical_to_openai(checkpoint.state_dict)
    not_loaded = {} if hasattr(model, "visual") else {k: sd.pop(k) for k in [k for k in sd if k.startswith("visual.")]}
    if sd["positional_embedding"].shape[0] != model.positional_embedding.shape[0]:
        stretch_model(model, keep, ratio)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [key for key in missing if key != "attn_mask"]
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit --model (missing {missing[:5]}, unexpected {unexpected[:5]}); pass the "
            "open_clip architecture the checkpoint was trained with."
        )
    return not_loaded


def encode_text_cut(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text(normalize=True)` on the batch cut after its last end-of-text token.

    Exact: the text attention is causal and features are read at the end-of-text token, so padding after it
    never changes them. Short captions (about 30 tokens) then cost an eighth of a 248-token pass.
    """
    length = int((text == CLIP_EOS_TOKEN_ID).int().argmax(dim=-1).max()) + 1
    text = text[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # the end-of-text token
    projected = (
        model.text_projection(pooled)
        if isinstance(model.text_projection, nn.Linear)
        else pooled @ model.text_projection
    )
    return F.normalize(projected, dim=-1)


class TrainingModel(nn.Module):
    """The open_clip model as one training forward (one DDP forward per step): image features, long and short
    caption features, each text batch cut to its longest caption, and the logit scale."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        if not hasattr(clip, "token_embedding"):
            raise ValueError(f"{type(clip).__name__}: training needs an open_clip CLIP with its own text tower.")
        self.clip = clip

    def forward(self, images: torch.Tensor, long_text: torch.Tensor, short_text: torch.Tensor):
        image_features = self.clip.encode_image(images, normalize=True)
        long_features = encode_text_cut(self.clip, long_text)
        short_features = encode_text_cut(self.clip, short_text)
        return image_features, long_features, short_features, self.clip.logit_scale.exp()


class FrozenRows:
    """Keeps rows 0..keep-1 of the text position table bit-identical: no gradient, and restored after each
    optimizer step (AdamW's decoupled weight decay would otherwise shrink them)."""

    def __init__(self, model: nn.Module, keep: int):
        self.table = model.positional_embedding
        self.keep = keep
        self.rows = self.table.detach()[:keep].clone()
        self.table.register_hook(self._zero_grad)

    def _zero_grad(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[: self.keep] = 0
        return grad

    @torch.no_grad()
    def restore(self) -> None:
        self.table[: self.keep] = self.rows.to(self.table.device, self.table.dtype)


class TextCLIP(nn.Module):
    """An open_clip `CLIP` without its image tower, for training on cached image features.

    Built by open_clip's own text-tower builder from the model config, with `CLIP`'s parameter names
    (`token_embedding`, `positional_embedding`, `transformer`, `ln_final`, `text_projection`, `logit_scale`), so
    checkpoints, `encode_text_cut`, stretching and exports treat it as they treat `CLIP`. `encode_image` takes the
    cached features, which `cache-features` stored normalised.
    """

    def __init__(self, model_cfg: dict):
        super().__init__()
        from open_clip.model import CLIPTextCfg, _build_text_tower

        text_cfg = CLIPTextCfg(**model_cfg["text_cfg"])
        if text_cfg.hf_model_name or text_cfg.embed_cls:
            raise ValueError("Training on cached image features supports CLIP's own text transformer only.")
        text = _build_text_tower(model_cfg["embed_dim"], text_cfg, model_cfg.get("quick_gelu", False))
        self.transformer = text.transformer
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def encode_image(self, image_features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The cached image features, as they are (normalised when cached)."""
        return image_features


def pretrained_file(name: str, tag: str) -> str:
    """The weights file of open_clip's pretrained tag `tag` for model `name` (downloaded once, by open_clip)."""
    import open_clip

    config = open_clip.get_pretrained_cfg(name, tag)
    if not config:
        raise ValueError(
            f"--pretrained {tag!r}: not a pretrained tag of {name} (its tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}), nor an existing file or folder."
        )
    return open_clip.download_pretrained(config)


def cached_features(features: torch.Tensor) -> torch.Tensor:
    """The image transform of a text-only run: the cached features are used as they are."""
    return features
