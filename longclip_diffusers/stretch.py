"""Knowledge-preserved stretching (KPS) of CLIP's text position table (Long-CLIP, arXiv 2403.15378, sec. 3.1).

The first `keep` rows are well trained and stay as they are; every later gap between two rows is filled
with `ratio - 1` linearly interpolated rows, and the last row is continued along its final slope. With
CLIP's 77 rows, keep=20 and ratio=4 this gives 20 + 57 * 4 = 248 rows, the published Long-CLIP table.

Because CLIP's text attention is causal and the first `keep` rows are untouched, a stretched (untrained)
encoder gives bit-identical hidden states at positions 0..keep-1.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
from torch import nn

from .constants import CLIP_POSITIONS

DEFAULT_KEEP = 20
DEFAULT_RATIO = 4
# The longest table stretching makes. Long-CLIP's has 248 rows (ratio 4). Longer gains nothing: rows interpolated
# that densely hardly tell positions apart, and text attention grows with the square of the length (OpenCLIP-bigG
# at 2048 tokens: 20 heads x 2048^2 scores, 336 MB in float32 per layer and prompt, 68 times its cost at 248).
# 2048 still allows ratio 26 from CLIP's 77 rows, beyond any use.
MAX_POSITIONS = 2048


def stretched_length(num_positions: int = CLIP_POSITIONS, keep: int = DEFAULT_KEEP, ratio: int = DEFAULT_RATIO) -> int:
    """Number of rows after stretching a `num_positions`-row table: keep + (num_positions - keep) * ratio."""
    return _check_stretch_args(num_positions, keep, ratio)


def max_ratio(num_positions: int = CLIP_POSITIONS, keep: int = 0) -> int:
    """The largest ratio that keeps a stretched `num_positions`-row table within `MAX_POSITIONS` rows (1, which
    leaves a table as it is, for tables already that long)."""
    return max(1, (MAX_POSITIONS - keep) // (num_positions - keep))


def _check_stretch_args(num_positions: int, keep: int, ratio: int, width: int | None = None) -> int:
    """Refuse arguments that cannot stretch a `num_positions`-row table (of `width` columns, if known), before
    anything is allocated; return the stretched table's length."""
    if isinstance(keep, bool) or not isinstance(keep, int) or isinstance(ratio, bool) or not isinstance(ratio, int):
        raise ValueError(f"keep and ratio must be whole numbers, got keep={keep!r}, ratio={ratio!r}.")
    if num_positions < 2:
        raise ValueError(f"A position table needs at least 2 rows to be stretched, this one has {num_positions}.")
    if not 0 <= keep <= num_positions - 2:
        raise ValueError(
            f"keep={keep} is out of range for a {num_positions}-row position table: it must be between 0 and "
            f"{num_positions - 2} (the last two rows are needed to continue the table). Long-CLIP uses keep=20."
        )
    if ratio < 1:
        raise ValueError(f"ratio={ratio} must be at least 1 (1 leaves the table as it is). Long-CLIP uses ratio=4.")
    length = keep + (num_positions - keep) * ratio
    if ratio > 1 and length > MAX_POSITIONS:
        size = f" (a {length * width * 4 / 1e9:,.1f} GB table)" if width else ""
        raise ValueError(
            f"ratio={ratio} would stretch {num_positions} positions to {length:,}{size}; at most {MAX_POSITIONS} "
            f"are supported (ratio {max_ratio(num_positions, keep)} with keep={keep}): attention cost grows with "
            "the square of the length, and rows interpolated that densely hardly differ. Long-CLIP uses ratio=4."
        )
    return length


def stretch_position_table(table: torch.Tensor, keep: int = DEFAULT_KEEP, ratio: int = DEFAULT_RATIO) -> torch.Tensor:
    """Stretch a [num_positions, dim] position table to [keep + (num_positions - keep) * ratio, dim].

    Reproduces the reference construction operation for operation, so a float32 table comes out bit-identical:
        new[keep + ratio*i + j] = (ratio - j) * pe[keep + i] / ratio + j * pe[keep + i + 1] / ratio
        new[end - ratio + j]    = pe[-1] + j * (pe[-1] - pe[-2]) / ratio
    for i in 0..num_positions-keep-2 and j in 0..ratio-1 (j = 0 copies the row exactly). Half-precision
    tables are computed in float32 and cast back. At most `MAX_POSITIONS` rows result.
    """
    if table.ndim != 2:
        raise ValueError(f"Expected a [num_positions, dim] position table, got shape {tuple(table.shape)}.")
    num_positions = table.shape[0]
    _check_stretch_args(num_positions, keep, ratio, width=table.shape[1])

    pe = table.detach().float() if table.dtype in (torch.float16, torch.bfloat16) else table.detach()
    steps = torch.arange(ratio, dtype=pe.dtype, device=pe.device).view(1, ratio, 1)  # j, [1, ratio, 1]

    left = pe[keep:-1].unsqueeze(1)  # [num_positions - keep - 1, 1, dim]
    right = pe[keep + 1 :].unsqueeze(1)
    interpolated = (ratio - steps) * left / ratio + steps * right / ratio  # [n - keep - 1, ratio, dim]
    interpolated[:, 0] = pe[keep:-1]

    last, before_last = pe[-1], pe[-2]
    extrapolated = last + steps[0] * (last - before_last) / ratio  # [ratio, dim]

    stretched = torch.cat([pe[:keep], interpolated.flatten(0, 1), extrapolated], dim=0)
    return stretched.to(table.dtype)


def causal_mask(num_positions: int) -> torch.Tensor:
    """The additive causal mask open_clip's text transformer uses: -inf above the diagonal, 0 elsewhere."""
    return torch.full((num_positions, num_positions), float("-inf")).triu_(1)


def stretch_state_dict(
    state_dict: MutableMapping[str, torch.Tensor], keep: int = DEFAULT_KEEP, ratio: int = DEFAULT_RATIO
) -> MutableMapping[str, torch.Tensor]:
    """Stretch the text position table of a state dict in place and return it.

    Understands the OpenAI / open_clip layout (`positional_embedding`, `text.positional_embedding`) and the
    Hugging Face layout (`[text_model.]embeddings.position_embedding.weight`).
    """
    text_keys = [
        key
        for key in state_dict
        if key in ("positional_embedding", "text.positional_embedding")
        or (key.endswith("embeddings.position_embedding.weight") and not key.startswith("vision_model."))
    ]
    if len(text_keys) != 1:
        raise ValueError(
            "Could not find exactly one text position table in this state dict "
            f"(found {text_keys or 'none'}); is it a CLIP text encoder?"
        )
    if "positional_embedding_res" in state_dict:
        raise ValueError(
            "This state dict is already a Long-CLIP checkpoint (it has `positional_embedding_res`); "
            "convert it with `longclip convert` instead of stretching it again."
        )
    key = text_keys[0]
    state_dict[key] = stretch_position_table(state_dict[key], keep, ratio)
    return state_dict


def stretch_model(model: nn.Module, keep: int = DEFAULT_KEEP, ratio: int = DEFAULT_RATIO) -> nn.Module:
    """Stretch a CLIP text tower in place and return the model.

    Accepts Hugging Face `CLIPTextModel`, `CLIPTextModelWithProjection` and `CLIPModel` (transformers 4.x and
    5.x), and open_clip `CLIP` / `CustomTextCLIP` models. Configs and causal masks are updated to match.
    """
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    if isinstance(model, (CLIPModel, CLIPTextModelWithProjection)):
        text_model = model.text_model
        config = model.config.text_config if isinstance(model, CLIPModel) else model.config
        _stretch_hf_text_model(text_model, keep, ratio)
        config.max_position_embeddings = text_model.config.max_position_embeddings
        return model
    if isinstance(model, CLIPTextModel):
        _stretch_hf_text_model(model, keep, ratio)
        return model
    text_tower = model.text if hasattr(model, "text") and hasattr(model.text, "positional_embedding") else model
    if isinstance(getattr(text_tower, "positional_embedding", None), nn.Parameter):
        _stretch_open_clip_text_tower(text_tower, keep, ratio)
        return model
    raise TypeError(
        f"Cannot stretch a {type(model).__name__}: expected a transformers CLIPTextModel, "
        "CLIPTextModelWithProjection or CLIPModel, or an open_clip CLIP model."
    )


def _stretch_hf_text_model(text_model: nn.Module, keep: int, ratio: int) -> None:
    # transformers 4.x nests the transformer under `.text_model`; 5.x flattened CLIPTextModel.
    inner = getattr(text_model, "text_model", text_model)
    embeddings = inner.embeddings
    old = embeddings.position_embedding.weight
    new_table = stretch_position_table(old.data, keep, ratio)
    num_positions = new_table.shape[0]

    embeddings.position_embedding = nn.Embedding(num_positions, old.shape[1], device=old.device, dtype=old.dtype)
    embeddings.position_embedding.weight.data.copy_(new_table)
    embeddings.position_embedding.weight.requires_grad_(old.requires_grad)
    position_ids = torch.arange(num_positions, device=old.device).expand((1, -1))
    embeddings.register_buffer("position_ids", position_ids, persistent=False)
    text_model.config.max_position_embeddings = num_positions
    inner.config.max_position_embeddings = num_positions


def _stretch_open_clip_text_tower(tower: nn.Module, keep: int, ratio: int) -> None:
    old = tower.positional_embedding
    new_table = stretch_position_table(old.data, keep, ratio)
    tower.positional_embedding = nn.Parameter(new_table, requires_grad=old.requires_grad)
    num_positions = new_table.shape[0]
    if getattr(tower, "attn_mask", None) is not None:
        tower.register_buffer("attn_mask", causal_mask(num_positions).to(tower.attn_mask.device), persistent=False)
    for attribute in ("context_length", "num_pos"):
        if hasattr(tower, attribute):
            setattr(tower, attribute, num_positions)
