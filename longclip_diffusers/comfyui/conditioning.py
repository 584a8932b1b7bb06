"""Prompt -> ComfyUI conditioning, through `prompts.encode_prompts` called as the diffusers pipelines call it.

One prompt per call, as ComfyUI encodes the positive and the negative prompt in separate nodes: the result is
what `LongCLIPStableDiffusionPipeline.encode_prompt` / `LongCLIPStableDiffusionXLPipeline.encode_prompt` give
for that prompt alone (no classifier-free guidance). ComfyUI lines up a positive and a negative prompt of
different window counts itself, repeating the shorter one, which leaves cross-attention unchanged.
"""

from __future__ import annotations

import torch

from ..prompts import SDXL_STRATEGIES, encode_prompts, sd_text_spec, sdxl_text_spec
from . import host
from .encoders import LongCLIP


def _check_clip_skip(clip_skip: int, *long_clips: LongCLIP, skipped_anyway: int = 0) -> None:
    layers = min(long_clip.num_layers for long_clip in long_clips)
    if not 0 <= clip_skip < layers - skipped_anyway:
        raise ValueError(f"clip_skip={clip_skip} is out of range for a {layers}-layer text encoder.")


def _max_windows(max_windows: int | None) -> int | None:
    return max_windows or None  # ComfyUI's INT widgets say "no limit" with 0


def encode_sd(
    long_clip: LongCLIP,
    text: str,
    *,
    clip_skip: int = 0,
    weighting: bool = True,
    max_windows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SD 1.x conditioning [1, windows * 248, 768] and the pooled vector (None without a text projection).

    As the SD pipeline: the last layer after the final layer norm, `clip_skip` layers earlier.
    """
    if long_clip.clip_type != "clip_l":
        raise ValueError(f"{long_clip.source}: is loaded as {long_clip.clip_type}; SD 1.x reads a clip_l encoder.")
    _check_clip_skip(clip_skip, long_clip)
    spec = sd_text_spec(long_clip.text_encoder, long_clip.tokenizer, clip_skip)
    with host.on_load_device(long_clip.text_encoder) as device:
        cond, pooled = encode_prompts(
            [text], [spec], weighting=weighting, max_windows=_max_windows(max_windows), device=device
        )
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning [1, windows * 248, 768 + 1280] and bigG's pooled vector [1, 1280].

    As the SDXL pipeline: both encoders' penultimate layers without the final norm (`clip_skip` layers earlier),
    concatenated; bigG reads `text_g` when given (SDXL's `prompt_2`) and, when shorter than CLIP-L, is chunked
    or stretched by `strategy`.
    """
    if long_clip.clip_type != "clip_l" or clip_g.clip_type != "clip_g":
        raise ValueError(
            "Connect a Long-CLIP-L loaded as clip_l to `long_clip` and SDXL's bigG loaded as clip_g to `clip_g` "
            f"(got {long_clip.clip_type} and {clip_g.clip_type})."
        )
    if strategy not in SDXL_STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {', '.join(SDXL_STRATEGIES)}.")
    _check_clip_skip(clip_skip, long_clip, clip_g, skipped_anyway=1)
    specs = [sdxl_text_spec(encoder.text_encoder, encoder.tokenizer, clip_skip) for encoder in (long_clip, clip_g)]
    prompts_2 = [text_g] if text_g and text_g != text else None
    with host.on_load_device(long_clip.text_encoder, clip_g.text_encoder) as device:
        cond, pooled = encode_prompts(
            [text],
            specs,
            strategy=strategy,
            weighting=weighting,
            max_windows=_max_windows(max_windows),
            prompts_2=prompts_2,
            device=device,
        )
    return _to_output(cond), _to_output(pooled)


def _to_output(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Conditioning as ComfyUI's own text encoders return it: float32, on its intermediate device."""
    return None if tensor is None else tensor.to(host.output_device(), torch.float32)
