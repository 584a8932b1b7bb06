"""Prompt -> ComfyUI conditioning, through the `prompts` functions called as the diffusers pipelines call them.

One prompt per call, as ComfyUI encodes the positive and the negative prompt in separate nodes: the result is
what the Long-CLIP pipelines' `encode_prompt` (SD 1.x, SDXL, SD 3, Flux) give for that prompt alone (no
classifier-free guidance). ComfyUI lines up a positive and a negative prompt of different window counts itself,
repeating the shorter one, which leaves cross-attention unchanged.
"""

from __future__ import annotations

import torch

from ..families import FAMILIES
from ..prompts import (
    PromptOptions,
    TextEncoderSpec,
    WeightStyle,
    check_strategy,
    encode_flux_prompts,
    encode_prompts,
    encode_sd3_prompts,
    text_encoder_specs,
)
from . import host
from .encoders import LongCLIP
from .t5 import T5


def _check_clip_skip(clip_skip: int, *long_clips: LongCLIP, skipped_anyway: int = 0) -> None:
    layers = min(long_clip.num_layers for long_clip in long_clips)
    if not 0 <= clip_skip < layers - skipped_anyway:
        raise ValueError(f"clip_skip={clip_skip} is out of range for a {layers}-layer text encoder.")


def encode_sd(
    long_clip: LongCLIP,
    text: str,
    *,
    clip_skip: int = 0,
    weighting: bool = True,
    max_windows: int | None = None,
    weight_style: WeightStyle = "a1111",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SD 1.x conditioning [1, windows * 248, 768] and the pooled vector (None without a text projection).

    As the SD pipeline: the last layer after the final layer norm, `clip_skip` layers earlier; weights act as
    `weight_style` says (`WEIGHT_STYLES`: A1111's and the pipelines', or ComfyUI core's).
    """
    if long_clip.clip_type != "clip_l":
        raise ValueError(f"{long_clip.source}: is loaded as {long_clip.clip_type}; SD 1.x reads a clip_l encoder.")
    _check_clip_skip(clip_skip, long_clip)
    specs = text_encoder_specs(FAMILIES["sd15"], [(long_clip.text_encoder, long_clip.tokenizer)], clip_skip)
    with host.on_load_device(long_clip.text_encoder) as device:
        options = PromptOptions(weighting=weighting, max_windows=max_windows, device=device, weight_style=weight_style)
        cond, pooled = encode_prompts([text], specs, options)
    return _to_output(cond), _to_output(pooled)


def encode_sdxl(
    long_clip: LongCLIP,
    clip_g: LongCLIP,
    text: str,
    text_g: str | None = None,
    *,
    strategy: str = "chunk",
    clip_skip: int = 0,
    weighting: bool = True,
    max_windows: int | None = None,
    weight_style: WeightStyle = "a1111",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning [1, windows * 248, 768 + 1280] and bigG's pooled vector [1, 1280].

    As the SDXL pipeline: both encoders' penultimate layers without the final norm (`clip_skip` layers earlier),
    concatenated; bigG reads `text_g` when given (SDXL's `prompt_2`) and, when shorter than CLIP-L, is chunked
    or stretched by `strategy`; weights act as `weight_style` says.
    """
    _check_clip_l_and_g(long_clip, clip_g, "sdxl", strategy)
    specs, prompts_2 = _clip_l_and_g_inputs(long_clip, clip_g, "sdxl", text, text_g, clip_skip)
    with host.on_load_device(long_clip.text_encoder, clip_g.text_encoder) as device:
        options = PromptOptions(
            strategy=strategy, weighting=weighting, max_windows=max_windows, device=device, weight_style=weight_style
        )
        cond, pooled = encode_prompts([text], specs, options, prompts_2)
    return _to_output(cond), _to_output(pooled)


def _clip_l_and_g_inputs(
    long_clip: LongCLIP, clip_g: LongCLIP, family: str, text: str, text_g: str | None, clip_skip: int
) -> tuple[list[TextEncoderSpec], list[str] | None]:
    """SDXL's and SD 3's two CLIP encoders as the family reads a prompt (penultimate layer without the final norm,
    `clip_skip` layers earlier), and bigG's own prompts (`text_g`, when it differs from `text`)."""
    _check_clip_skip(clip_skip, long_clip, clip_g, skipped_anyway=1)
    pairs = [(encoder.text_encoder, encoder.tokenizer) for encoder in (long_clip, clip_g)]
    specs = text_encoder_specs(FAMILIES[family], pairs, clip_skip)
    return specs, [text_g] if text_g and text_g != text else None


def encode_sd3(
    long_clip: LongCLIP,
    clip_g: LongCLIP,
    t5: T5,
    text: str,
    text_g: str | None = None,
    text_t5: str | None = None,
    *,
    strategy: str = "chunk",
    clip_skip: int = 0,
    weighting: bool = True,
    max_windows: int | None = None,
    max_sequence_length: int = 256,
    weight_style: WeightStyle = "a1111",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD 3 conditioning [1, windows * 248 + max_sequence_length, T5's width] and both CLIP projections [1, E + G].

    As the SD 3 pipeline: CLIP-L's and bigG's penultimate layers without the final norm (`clip_skip` layers
    earlier) side by side, zero-padded to T5's width, then T5's states; bigG reads `text_g` and T5 `text_t5` when
    given (SD 3's `prompt_2` / `prompt_3`); bigG is chunked or stretched by `strategy` when shorter than CLIP-L;
    weights act on CLIP's and T5's states as `weight_style` says.
    """
    _check_clip_l_and_g(long_clip, clip_g, "sd3", strategy)
    if not long_clip.has_projection:
        raise ValueError(
            f"{long_clip.source}: this Long-CLIP-L has no text projection, but SD 3 reads CLIP-L's projected pooled "
            "vector; load a Long-CLIP-L that has one (the published LongCLIP-L .pt, or its export) with Load Long-CLIP."
        )
    specs, prompts_2 = _clip_l_and_g_inputs(long_clip, clip_g, "sd3", text, text_g, clip_skip)
    with host.on_load_device(long_clip.text_encoder, clip_g.text_encoder, *_t5_to_move(t5)) as device:
        options = PromptOptions(
            strategy=strategy, weighting=weighting, max_windows=max_windows, device=device, weight_style=weight_style
        )
        cond, pooled = encode_sd3_prompts(
            [text],
            specs,
            t5.text_encoder,
            t5.tokenizer,
            prompts_2=prompts_2,
            prompts_3=[text_t5 or text],
            max_sequence_length=max_sequence_length,
            options=options,
        )
    return _to_output(cond), _to_output(pooled)


def encode_flux(
    long_clip: LongCLIP,
    t5: T5,
    text: str,
    text_t5: str | None = None,
    *,
    weighting: bool = True,
    max_sequence_length: int = 512,
    weight_style: WeightStyle = "a1111",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux conditioning: T5's states [1, max_sequence_length, T5's width] of `text_t5` (Flux's `prompt_2`; default
    `text`) and CLIP-L's pooled output [1, 768] of `text`'s first window, without the projection (as the Flux
    pipeline); weights act on T5's states as `weight_style` says."""
    if long_clip.clip_type != "clip_l":
        raise ValueError(f"{long_clip.source}: is loaded as {long_clip.clip_type}; Flux reads a clip_l encoder.")
    clip_l = long_clip.text_encoder.text_model if long_clip.has_projection else long_clip.text_encoder
    with host.on_load_device(long_clip.text_encoder, *_t5_to_move(t5)) as device:
        cond, pooled = encode_flux_prompts(
            [text],
            clip_l,
            long_clip.tokenizer,
            t5.text_encoder,
            t5.tokenizer,
            prompts_2=[text_t5] if text_t5 else None,
            max_sequence_length=max_sequence_length,
            options=PromptOptions(weighting=weighting, device=device, weight_style=weight_style),
        )
    return _to_output(cond), _to_output(pooled)


def _check_clip_l_and_g(long_clip: LongCLIP, clip_g: LongCLIP, family: str, strategy: str) -> None:
    if long_clip.clip_type != "clip_l" or clip_g.clip_type != "clip_g":
        raise ValueError(
            f"Connect a Long-CLIP-L loaded as clip_l to `long_clip` and {FAMILIES[family].name}'s bigG loaded as "
            f"clip_g to `clip_g` (got {long_clip.clip_type} and {clip_g.clip_type})."
        )
    check_strategy(strategy)


def _t5_to_move(t5: T5) -> list[torch.nn.Module]:
    """T5 for `host.on_load_device` to move: none when it is a ComfyUI CLIP's own, which ComfyUI loads itself."""
    return [] if t5.in_place else [t5.text_encoder]


def _to_output(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Conditioning as ComfyUI's own text encoders return it: float32, on its intermediate device."""
    return None if tensor is None else tensor.to(host.output_device(), torch.float32)
