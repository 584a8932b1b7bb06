"""Tiny files ComfyUI itself loads, for tests and offline tries of the ComfyUI nodes (`longclip tiny` writes them).

`write_tiny_comfyui(tiny, out)` writes, from the tiny components already in `tiny`, a ComfyUI `models/` tree:
- `checkpoints/longclip-tiny-sd15.safetensors`: a single-file SD 1.5 checkpoint that ComfyUI's model detection
  accepts (its UNet at the smallest size detection takes as SD 1.5: 320 channels, cross-attention from 768
  features, one level with one block) and a TAESD-shaped VAE, which ComfyUI's VAE loader recognises by its keys;
- `checkpoints/longclip-tiny-sdxl.safetensors`: the smallest UNet detection takes as an SDXL-family model (50 M
  parameters, SDXL's 2.6 B; see `sdxl_unet_shapes`) with the same VAE. ComfyUI matches a UNet on its channel
  count, context and pooled widths and the transformer depth of each input block only; KOALA-700M's depths
  (0, 2, 5) are the fewest transformer blocks of the SDXL classes, all of which condition as SDXL does;
- `diffusion_models/longclip-tiny-sd15.safetensors` and `vae/longclip-tiny-taesd.safetensors`: the SD 1.5 UNet
  and the VAE where ComfyUI's UNETLoader and VAELoader list them;
- `text_encoders/longclip-tiny-l/`, `text_encoders/longclip-tiny-g/`, `text_encoders/longclip-tiny-t5.safetensors`:
  a tiny Long-CLIP-L (with its text projection), SDXL's tiny bigG and SD 3's tiny T5, for the Long-CLIP nodes.
The weights are random. ComfyUI core's own text encoders are built at the real CLIP-L / T5 sizes, so it loads
none of the tiny text encoders; the Long-CLIP nodes do. `write_random_long_clip_l` writes one core loads too.
The SDXL checkpoint needs text encoders of SDXL's widths (768 + 1280 context features, a 1280 pooled vector), not
the tiny ones: `write_random_long_clip_l` and `write_random_wide_clip_g` write them, for the Long-CLIP nodes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from .formats import checkpoint_from_state_dict
from .writing import write_comfyui_text_encoder

SD15_CHECKPOINT = "longclip-tiny-sd15.safetensors"
SDXL_CHECKPOINT = "longclip-tiny-sdxl.safetensors"
TAESD_VAE = "longclip-tiny-taesd.safetensors"
TINY_CLIP_L = "longclip-tiny-l/model.safetensors"
TINY_CLIP_G = "longclip-tiny-g/model.safetensors"
TINY_T5 = "longclip-tiny-t5.safetensors"
# What ComfyUI's detection needs to call a UNet SD 1.5 (comfy/supported_models.py: SD15).
SD15_CHANNELS, SD15_CONTEXT, TIME_CHANNELS = 320, 768, 1280
# What it needs to call a UNet an SDXL-family model, at the fewest transformer blocks (KOALA_700M): SDXL's
# context (CLIP-L's 768 + bigG's 1280 features) and its size-conditioned pooled vector (1280 + 6 * 256).
SDXL_CONTEXT, SDXL_ADM, SDXL_TRANSFORMER_DEPTH = 2048, 2816, (0, 2, 5)
TAESD_WIDTH, TAESD_BLOCKS = 64, 3


def _res_block(prefix: str, channels_in: int, channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        f"{prefix}.in_layers.0.weight": (channels_in,),
        f"{prefix}.in_layers.0.bias": (channels_in,),
        f"{prefix}.in_layers.2.weight": (channels, channels_in, 3, 3),
        f"{prefix}.in_layers.2.bias": (channels,),
        f"{prefix}.emb_layers.1.weight": (channels, TIME_CHANNELS),
        f"{prefix}.emb_layers.1.bias": (channels,),
        f"{prefix}.out_layers.0.weight": (channels,),
        f"{prefix}.out_layers.0.bias": (channels,),
        f"{prefix}.out_layers.3.weight": (channels, channels, 3, 3),
        f"{prefix}.out_layers.3.bias": (channels,),
    }
    if channels_in != channels:
        shapes[f"{prefix}.skip_connection.weight"] = (channels, channels_in, 1, 1)
        shapes[f"{prefix}.skip_connection.bias"] = (channels,)
    return shapes


def _spatial_transformer(
    prefix: str, channels: int, context_dim: int, depth: int = 1, linear: bool = False
) -> dict[str, tuple[int, ...]]:
    """`depth` transformer blocks; `linear`: SDXL's linear proj_in / proj_out (SD 1.5's are 1x1 convolutions)."""
    projection = (channels, channels) if linear else (channels, channels, 1, 1)
    shapes = {
        f"{prefix}.norm.weight": (channels,),
        f"{prefix}.norm.bias": (channels,),
        f"{prefix}.proj_in.weight": projection,
        f"{prefix}.proj_in.bias": (channels,),
        f"{prefix}.proj_out.weight": projection,
        f"{prefix}.proj_out.bias": (channels,),
    }
    for index in range(depth):
        block = f"{prefix}.transformer_blocks.{index}"
        shapes |= {
            f"{block}.ff.net.0.proj.weight": (8 * channels, channels),  # GEGLU: two halves of 4x
            f"{block}.ff.net.0.proj.bias": (8 * channels,),
            f"{block}.ff.net.2.weight": (channels, 4 * channels),
            f"{block}.ff.net.2.bias": (channels,),
        }
        for attention, source in (("attn1", channels), ("attn2", context_dim)):
            shapes[f"{block}.{attention}.to_q.weight"] = (channels, channels)
            shapes[f"{block}.{attention}.to_k.weight"] = (channels, source)
            shapes[f"{block}.{attention}.to_v.weight"] = (channels, source)
            shapes[f"{block}.{attention}.to_out.0.weight"] = (channels, channels)
            shapes[f"{block}.{attention}.to_out.0.bias"] = (channels,)
        for norm in ("norm1", "norm2", "norm3"):
            shapes[f"{block}.{norm}.weight"] = (channels,)
            shapes[f"{block}.{norm}.bias"] = (channels,)
    return shapes


def _time_embedding(channels: int) -> dict[str, tuple[int, ...]]:
    return {
        "time_embed.0.weight": (TIME_CHANNELS, channels),
        "time_embed.0.bias": (TIME_CHANNELS,),
        "time_embed.2.weight": (TIME_CHANNELS, TIME_CHANNELS),
        "time_embed.2.bias": (TIME_CHANNELS,),
        "input_blocks.0.0.weight": (channels, 4, 3, 3),
        "input_blocks.0.0.bias": (channels,),
    }


def _unet_out(channels: int) -> dict[str, tuple[int, ...]]:
    return {
        "out.0.weight": (channels,),
        "out.0.bias": (channels,),
        "out.2.weight": (4, channels, 3, 3),
        "out.2.bias": (4,),
    }


def sd15_unet_shapes(channels: int = SD15_CHANNELS, context_dim: int = SD15_CONTEXT) -> dict[str, tuple[int, ...]]:
    """The weights of an SD 1.5 UNet in the original (LDM) layout with one level of one block, each block with one
    transformer: key -> shape, keys without the checkpoint's `model.diffusion_model.` prefix."""
    shapes = {
        **_time_embedding(channels),
        **_res_block("input_blocks.1.0", channels, channels),
        **_spatial_transformer("input_blocks.1.1", channels, context_dim),
        **_res_block("middle_block.0", channels, channels),
        **_spatial_transformer("middle_block.1", channels, context_dim),
        **_res_block("middle_block.2", channels, channels),
    }
    for block in range(2):  # each output block reads the output of one input block beside its own
        shapes |= _res_block(f"output_blocks.{block}.0", 2 * channels, channels)
        shapes |= _spatial_transformer(f"output_blocks.{block}.1", channels, context_dim)
    return shapes | _unet_out(channels)


def sdxl_unet_shapes(channels: int = SD15_CHANNELS) -> dict[str, tuple[int, ...]]:
    """The weights of the smallest UNet ComfyUI detects as an SDXL-family model (KOALA-700M's class: SDXL's
    conditioning, `SDXL_TRANSFORMER_DEPTH` over its input blocks), in the SGM layout: one level of three blocks at
    320 channels (detection leaves the channel multipliers and the output side free), no middle block, no
    transformers on the output side. Key -> shape, keys without the checkpoint's `model.diffusion_model.` prefix."""
    shapes = {
        **_time_embedding(channels),
        "label_emb.0.0.weight": (TIME_CHANNELS, SDXL_ADM),  # pooled bigG + six size embeddings
        "label_emb.0.0.bias": (TIME_CHANNELS,),
        "label_emb.0.2.weight": (TIME_CHANNELS, TIME_CHANNELS),
        "label_emb.0.2.bias": (TIME_CHANNELS,),
    }
    for block, depth in enumerate(SDXL_TRANSFORMER_DEPTH, start=1):
        shapes |= _res_block(f"input_blocks.{block}.0", channels, channels)
        if depth:
            shapes |= _spatial_transformer(f"input_blocks.{block}.1", channels, SDXL_CONTEXT, depth, linear=True)
    for block in range(len(SDXL_TRANSFORMER_DEPTH) + 1):
        shapes |= _res_block(f"output_blocks.{block}.0", 2 * channels, channels)
    return shapes | _unet_out(channels)


def _taesd_block(prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.conv.{index}.{name}": shape
        for index in (0, 2, 4)
        for name, shape in (("weight", (TAESD_WIDTH, TAESD_WIDTH, 3, 3)), ("bias", (TAESD_WIDTH,)))
    }


def taesd_shapes(latent_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """The weights of a TAESD encoder and decoder (madebyollin/taesd's layout, as ComfyUI's `comfy/taesd` builds
    it): key -> shape."""
    width = TAESD_WIDTH
    encoder: list[tuple[str, tuple[int, ...] | None]] = [("conv", (width, 3)), ("block", None)]
    for _ in range(3):
        encoder += [("down", (width, width)), *[("block", None)] * TAESD_BLOCKS]
    encoder.append(("conv", (latent_channels, width)))
    decoder: list[tuple[str, tuple[int, ...] | None]] = [("clamp", None), ("conv", (width, latent_channels))]
    decoder.append(("relu", None))
    for _ in range(3):
        decoder += [*[("block", None)] * TAESD_BLOCKS, ("upsample", None), ("down", (width, width))]
    decoder += [("block", None), ("conv", (3, width))]
    shapes: dict[str, tuple[int, ...]] = {"vae_scale": (), "vae_shift": ()}
    for name, layers in (("taesd_encoder", encoder), ("taesd_decoder", decoder)):
        for index, (kind, channels) in enumerate(layers):
            prefix = f"{name}.{index}"
            if kind == "block":
                shapes |= _taesd_block(prefix)
            elif kind in ("conv", "down"):  # "down": a convolution without bias (stride 2 when encoding)
                shapes[f"{prefix}.weight"] = (*channels, 3, 3)
                if kind == "conv":
                    shapes[f"{prefix}.bias"] = (channels[0],)
    return shapes


def random_weights(shapes: dict[str, tuple[int, ...]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Small random weights (std 0.02), norms at 1, biases at 0, scalars at 1 (TAESD's scale) or 0 (its shift)."""
    weights = {}
    for key, shape in shapes.items():
        if key.endswith("bias") or key == "vae_shift":
            weights[key] = torch.zeros(shape)
        elif len(shape) <= 1:
            weights[key] = torch.ones(shape)
        else:
            weights[key] = torch.randn(shape, generator=generator) * 0.02
    return weights


def _link(source: Path, target: Path) -> None:
    """`target` as another name of `source` (a hard link; a copy where links are not possible)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_tiny_comfyui(tiny: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> Path:
    """Write the ComfyUI `models/` tree described above into `out` (from the tiny components in `tiny`); return it."""
    tiny, models = Path(tiny), Path(out)
    generator = torch.Generator().manual_seed(seed)
    unet = random_weights(sd15_unet_shapes(), generator)
    vae = random_weights(taesd_shapes(), generator)
    checkpoint = {
        **{f"model.diffusion_model.{key}": value.half() for key, value in unet.items()},
        **{f"first_stage_model.{key}": value.half() for key, value in vae.items()},
    }
    (models / "checkpoints").mkdir(parents=True)
    save_file(checkpoint, models / "checkpoints" / SD15_CHECKPOINT)
    _link(models / "checkpoints" / SD15_CHECKPOINT, models / "diffusion_models" / SD15_CHECKPOINT)
    (models / "vae").mkdir()
    save_file({key: value.half() for key, value in vae.items()}, models / "vae" / TAESD_VAE)
    sdxl_unet = random_weights(sdxl_unet_shapes(), generator)
    checkpoint = {
        **{f"model.diffusion_model.{key}": value.half() for key, value in sdxl_unet.items()},
        **{f"first_stage_model.{key}": value.half() for key, value in vae.items()},
    }
    save_file(checkpoint, models / "checkpoints" / SDXL_CHECKPOINT)
    encoders = models / "text_encoders"
    for source, name in (
        (tiny / "longclip-l" / "model.safetensors", TINY_CLIP_L),
        (tiny / "sdxl" / "text_encoder_2" / "model.safetensors", TINY_CLIP_G),
        (tiny / "sd3" / "text_encoder_3" / "model.safetensors", TINY_T5),
    ):
        _link(source, encoders / name)
        if (source.parent / "config.json").is_file() and name.endswith("/model.safetensors"):
            _link(source.parent / "config.json", encoders / Path(name).parent / "config.json")
    return models


def _write_random_text_encoder(config: CLIPTextConfig, path: Path, dtype: torch.dtype | None, seed: int) -> None:
    """A random CLIP text encoder with its text projection, of `config`'s shape, as one ComfyUI file."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in CLIPTextModelWithProjection(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state_dict = random_weights({key: shape for key, shape in shapes.items() if "position_ids" not in key}, generator)
    write_comfyui_text_encoder(checkpoint_from_state_dict(state_dict, path=str(path)), path, dtype)


def write_random_long_clip_l(path: str | os.PathLike, dtype: torch.dtype | None = None, seed: int = 0) -> None:
    """A random Long-CLIP-L at CLIP-L's real shape (12 layers of width 768, 248 positions, text projection; ComfyUI
    core builds CLIP-L at no other) as one ComfyUI file, about 495 MB in fp32."""
    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=248, projection_dim=768, hidden_act="quick_gelu")  # fmt: skip
    _write_random_text_encoder(config, Path(path), dtype, seed)


def write_random_wide_clip_g(
    path: str | os.PathLike, num_layers: int = 2, dtype: torch.dtype | None = None, seed: int = 0
) -> None:
    """A random clip_g of OpenCLIP-bigG's width (1280, 20 heads, its 1280-wide text projection, 77 positions) with
    `num_layers` layers, as one ComfyUI file: with a CLIP-L it gives SDXL's 2048 context features and 1280 pooled
    ones (about 170 MB in fp16 with 2 layers, most of it the 49408-row token table). Read as a single file reads
    (QuickGELU)."""
    config = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=num_layers,
                            num_attention_heads=20, max_position_embeddings=77, projection_dim=1280,
                            hidden_act="quick_gelu")  # fmt: skip
    _write_random_text_encoder(config, Path(path), dtype, seed)
