"""Each family's conditioning composed from the shared encoding, as `families` describes the family.

SD 1.x/2.x and SDXL: `encode_prompts` of the family's CLIP encoders (`text_encoder_specs`); SD 3: CLIP-L and bigG
side by side, zero-padded to T5's width, then T5 (`encode_sd3_prompts`); Flux: T5's states and CLIP-L's pooled
output (`encode_flux_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..families import FAMILIES, Family, TextEncoderRole
from .encoding import (
    DEFAULT_OPTIONS,
    PromptOptions,
    TextEncoderSpec,
    encode_pooled_prompts,
    encode_prompt_parts,
    encode_t5_prompts,
)


def text_encoder_specs(
    family: Family,
    pairs: Sequence[tuple[nn.Module | None, PreTrainedTokenizerBase | None]],
    clip_skip: int | None = None,
) -> list[TextEncoderSpec]:
    """How `family` reads the states of its CLIP encoders, given as (text encoder, tokenizer) in the family's order;
    `clip_skip` reads that many layers earlier. A missing encoder (None, as SDXL's refiner has no CLIP-L) is left
    out."""
    roles = [role for role in family.clip_encoders if role.layer is not None]
    return [
        TextEncoderSpec(text_encoder, tokenizer, role.layer - (clip_skip or 0), role.final_norm)
        for role, (text_encoder, tokenizer) in zip(roles, pairs, strict=False)
        if text_encoder is not None
    ]


def check_projection(family: Family, role: TextEncoderRole, text_encoder: nn.Module) -> None:
    """Refuse a CLIP without the text projection the family reads its pooled vector from, or with one where it
    reads the pooled output before the projection."""
    has_projection = hasattr(text_encoder, "text_projection")
    if role.projection is None or has_projection == role.projection:
        return
    kind = type(text_encoder).__name__
    if role.projection:
        raise ValueError(
            f"{role.component} is a {kind} without a text projection, but {family.name} reads the projected pooled "
            "vector of its CLIP encoders; load it as a CLIPTextModelWithProjection "
            "(LongCLIPTextEncoder.from_pretrained(..., with_projection=True))."
        )
    raise ValueError(
        f"{role.component} is a {kind}, but {family.name} reads CLIP-L's pooled output without the projection; "
        "load it as a CLIPTextModel (LongCLIPTextEncoder.from_pretrained(..., with_projection=False))."
    )


def encode_sd3_prompts(
    prompts: Sequence[str],
    clip_encoders: Sequence[TextEncoderSpec],
    t5_encoder: nn.Module | None,
    t5_tokenizer: PreTrainedTokenizerBase | None,
    *,
    prompts_2: Sequence[str] | None = None,
    prompts_3: Sequence[str] | None = None,
    max_sequence_length: int = 256,
    t5_width: int | None = None,
    options: PromptOptions = DEFAULT_OPTIONS,
    names_3: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD 3 conditioning [B, windows * T + max_sequence_length, T5 width] and pooled vector [B, sum of E].

    As `StableDiffusion3Pipeline` lays it out: CLIP-L's and bigG's states (`encode_prompt_parts` of `prompts` and
    `prompts_2`: windows, bigG aligned token for token) concatenated on the feature axis and zero-padded to T5's
    width, then T5's states of `prompts_3` (`encode_t5_prompts`) on the sequence axis; pooled: both encoders' text
    projections of the first window, concatenated. Without T5 (`t5_encoder=None`), its part is zeros of width
    `t5_width`, as the stock pipeline gives. `names_3` names T5's inputs in its warning of a cut prompt.
    """
    sd3 = FAMILIES["sd3"]
    for spec, role in zip(clip_encoders, sd3.clip_encoders, strict=False):
        check_projection(sd3, role, spec.text_encoder)
    parts = encode_prompt_parts(prompts, clip_encoders, options, prompts_2)
    clip_hidden = torch.cat([hidden for hidden, _ in parts], dim=-1)
    pooled = torch.cat([pooled for _, pooled in parts], dim=-1)
    if t5_encoder is None:
        t5_hidden = clip_hidden.new_zeros(len(prompts), max_sequence_length, t5_width)
    else:
        t5_prompts = prompts_3 if prompts_3 is not None else prompts
        t5_hidden = encode_t5_prompts(t5_prompts, t5_encoder, t5_tokenizer, max_sequence_length, options, names_3)
    padding = t5_hidden.shape[-1] - clip_hidden.shape[-1]
    if padding < 0:
        raise ValueError(
            f"The CLIP encoders give {clip_hidden.shape[-1]} features together, more than T5's {t5_hidden.shape[-1]} "
            "that SD 3 pads them to; these text encoders do not belong to one SD 3 model."
        )
    clip_hidden = nn.functional.pad(clip_hidden.to(t5_hidden), (0, padding))
    return torch.cat([clip_hidden, t5_hidden], dim=-2), pooled


def encode_flux_prompts(
    prompts: Sequence[str],
    clip_encoder: nn.Module,
    clip_tokenizer: PreTrainedTokenizerBase,
    t5_encoder: nn.Module,
    t5_tokenizer: PreTrainedTokenizerBase,
    *,
    prompts_2: Sequence[str] | None = None,
    max_sequence_length: int = 512,
    options: PromptOptions = DEFAULT_OPTIONS,
    names_2: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux conditioning: T5's states of `prompts_2` (default `prompts`) [B, max_sequence_length, D]
    (`encode_t5_prompts`; `names_2` names its inputs in its warning of a cut prompt) and CLIP-L's pooled vector of
    `prompts` [B, E] (`encode_pooled_prompts`)."""
    flux = FAMILIES["flux"]
    check_projection(flux, flux.encoders[0], clip_encoder)
    t5_prompts = prompts_2 if prompts_2 is not None else prompts
    t5_hidden = encode_t5_prompts(t5_prompts, t5_encoder, t5_tokenizer, max_sequence_length, options, names_2)
    pooled = encode_pooled_prompts(prompts, clip_encoder, clip_tokenizer, options)
    return t5_hidden, pooled
