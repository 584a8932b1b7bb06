"""Tiny random components for tests and offline demos, with CLIP's real tokenizer.

`write_tiny_components(out)` writes:
- `out/sd15/`, `out/sdxl/`: complete diffusers pipelines (tiny UNet, VAE, stock 77-position text encoders);
- `out/longclip-sd15/`, `out/longclip-sdxl/`: `text_encoder/` + `tokenizer/`, 248-position Long-CLIP encoders
  shaped like each pipeline's CLIP-L encoder (its training-free stretch, so prompts of up to 20 tokens encode
  exactly as with the stock encoder).
The weights are random: images are noise-like. Real use takes Hub ids instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .convert import convert
from .formats import CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID, atomic_output
from .stretch import CLIP_POSITIONS, DEFAULT_KEEP, DEFAULT_RATIO
from .tokenizer import LongCLIPTokenizer

CLIP_VOCAB_SIZE = 49408
# A two-level UNet with one cross-attention level: 32x32 latents, 64x64 images with the tiny VAE.
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def tiny_text_config(hidden_size: int = 32, projection_dim: int = 32) -> CLIPTextConfig:
    """A CLIP-L-like text tower (real vocabulary and 77 positions), a few layers of width `hidden_size`."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=CLIP_POSITIONS,
        hidden_act="quick_gelu",
        projection_dim=projection_dim,
        bos_token_id=CLIP_BOS_TOKEN_ID,
        eos_token_id=CLIP_EOS_TOKEN_ID,
        pad_token_id=CLIP_EOS_TOKEN_ID,
    )


def tiny_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A stock `CLIPTokenizer` with CLIP's real vocabulary and 77 positions (as SD pipelines ship it)."""
    with tempfile.TemporaryDirectory() as tmp:
        LongCLIPTokenizer.from_clip_bpe(model_max_length=CLIP_POSITIONS, pad_token=pad_token).save_pretrained(tmp)
        return CLIPTokenizer.from_pretrained(tmp)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )


def tiny_sd15_pipeline(seed: int = 0):
    """A complete `StableDiffusionPipeline` with tiny random weights (64x64 images)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=32)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0):
    """A complete `StableDiffusionXLPipeline` with tiny random weights; tokenizer_2 pads with "!" like SDXL's."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop ids + pooled text_embeds of encoder 2
        cross_attention_dim=32 + 32,  # both encoders' hidden states, concatenated
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        text_encoder_2=CLIPTextModelWithProjection(tiny_text_config()).eval(),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
    )


def write_tiny_components(out: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny pipelines and their Long-CLIP encoders under `out` (atomically); return `out`."""
    out = Path(out)
    with atomic_output(out, overwrite=overwrite) as tmp:
        tiny_sd15_pipeline(seed).save_pretrained(tmp / "sd15", safe_serialization=True)
        tiny_sdxl_pipeline(seed + 1).save_pretrained(tmp / "sdxl", safe_serialization=True)
        for base in ("sd15", "sdxl"):
            convert(tmp / base / "text_encoder", tmp / f"longclip-{base}", stretch=(DEFAULT_KEEP, DEFAULT_RATIO))
    return out
