"""Key names and configs of each checkpoint layout, to and from the canonical one (a Hugging Face `CLIPModel`'s
key names: `text_model.*`, `vision_model.*`, `text_projection.weight`, `visual_projection.weight`, `logit_scale`).

- OpenAI / open_clip (`token_embedding.weight`, `transformer.resblocks.{i}.attn.in_proj_weight`, ...), including
  the published Long-CLIP files, whose true position table is rows 0..19 of `positional_embedding` and rows 20..
  of `positional_embedding_res`; their configs come from the tensors' shapes;
- Hugging Face, with or without the `text_model.` prefix (transformers 5 saves `CLIPTextModel` without it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPVisionConfig

from .checkpoint import CheckpointError
from .constants import CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID

# Published Long-CLIP checkpoints take rows 0..19 from `positional_embedding`, the rest from `..._res`.
PUBLISHED_KEEP = 20


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


def count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
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
    for i in range(count_blocks(sd, "transformer.resblocks.")):
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
        for i in range(count_blocks(sd, "visual.transformer.resblocks.")):
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
        for i in range(count_blocks(sd, f"{prefix_in}.")):
            block_in, block_out = f"{prefix_in}.{i}", f"{prefix_out}.{i}"
            for kind in ("weight", "bias"):
                projections = [sd[f"{block_in}.self_attn.{name}_proj.{kind}"] for name in "qkv"]
                out[f"{block_out}.attn.in_proj_{kind}"] = torch.cat(projections, dim=0)
                for old, new in _OPENAI_BLOCK_RENAMES.items():
                    out[f"{block_out}.{old}.{kind}"] = sd[f"{block_in}.{new}.{kind}"]
    return out


def configs_from_shapes(
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
        num_hidden_layers=count_blocks(sd, "text_model.encoder.layers."),
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
            num_hidden_layers=count_blocks(sd, "vision_model.encoder.layers."),
            num_attention_heads=vision_width // vision_cfg.get("head_width", 64),
            image_size=patch_size * grid,
            patch_size=patch_size,
            hidden_act=act,
            projection_dim=sd["visual_projection.weight"].shape[0],
        )
        projection_dim = vision_config.projection_dim
    return text_config, vision_config, projection_dim


_FLAT_TEXT_PREFIXES = ("embeddings.", "encoder.", "final_layer_norm.")


def hf_to_canonical(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every text-tower key the `text_model.` prefix (transformers 5 saves CLIPTextModel without it)."""
    return {(f"text_model.{key}" if key.startswith(_FLAT_TEXT_PREFIXES) else key): value for key, value in sd.items()}


def is_openai_layout(sd: dict[str, torch.Tensor]) -> bool:
    return "token_embedding.weight" in sd or "text.token_embedding.weight" in sd


# Weights-only files carry no config. OpenAI's conventions (64-wide heads, QuickGELU) fit CLIP-L and the
# published Long-CLIPs; OpenCLIP-bigG (SDXL) and -H (SD 2.x) use GELU: told apart by depth, as ComfyUI does.
_OPEN_CLIP_TEXT_TOWERS = {32: "ViT-bigG-14", 24: "ViT-H-14"}


def infer_open_clip_model(sd: dict[str, torch.Tensor]) -> str | None:
    """The open_clip architecture of a config-less text tower that does not follow OpenAI's conventions."""
    depth = max(
        count_blocks(sd, "transformer.resblocks."),
        count_blocks(sd, "text.transformer.resblocks."),
        count_blocks(sd, "text_model.encoder.layers."),
        count_blocks(sd, "encoder.layers."),
    )
    return _OPEN_CLIP_TEXT_TOWERS.get(depth)
