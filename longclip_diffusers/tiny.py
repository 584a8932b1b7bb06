"""Tiny random components for tests and offline demos, with CLIP's real tokenizer.

`write_tiny_components(out)` writes:
- `out/sd15/`, `out/sdxl/`, `out/sd2/`, `out/sd3/`, `out/flux/`: complete diffusers pipelines (tiny UNet or
  transformer, VAE, stock 77-position CLIP text encoders, a T5 encoder and a T5 tokenizer built offline);
- `out/longclip-<name>/` for each: `text_encoder/` + `tokenizer/`, 248-position Long-CLIP encoders shaped like
  that pipeline's CLIP-L encoder (SD 2's OpenCLIP-H-like one for `sd2`): its training-free stretch, so prompts of
  up to 20 tokens encode exactly as with the stock encoder;
- `out/longclip-l/`: a stand-in for `BeichenZhang/LongCLIP-L`: a full `CLIPModel` + processor (both towers, text
  projection, 248 positions), the layout `longclip convert --to clip` writes; its CLIP-L-sized text tower fits the
  SD 1.5, SDXL, SD 3 and Flux pipelines above;
- `out/train/`: a first training run's material: `model.json` (a tiny open_clip architecture), 48 synthetic
  images and `train.jsonl` with a long caption for each (`first_training_command` trains on it);
- `out/comfyui/models/`: files ComfyUI itself loads (`tiny_comfy`), for the ComfyUI nodes.
The weights are random: images are noise-like. Real use takes Hub ids instead.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import shlex
import string
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
)

from .atomic import atomic_output
from .constants import (
    CLIP_BOS_TOKEN_ID,
    CLIP_EOS_TOKEN_ID,
    CLIP_PAD_TOKEN,
    CLIP_POSITIONS,
    CLIP_VOCAB_SIZE,
    OPEN_CLIP_PAD_TOKEN,
)
from .convert import convert
from .families import FAMILIES
from .stretch import DEFAULT_KEEP, DEFAULT_RATIO
from .tiny_comfy import write_tiny_comfyui
from .tokenizer import LongCLIPTokenizer

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


def tiny_text_config(hidden_size: int = 32, projection_dim: int = 32, **overrides) -> CLIPTextConfig:
    """A CLIP-L-like text tower (real vocabulary and 77 positions), a few layers of width `hidden_size`."""
    config = dict(
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
    return CLIPTextConfig(**{**config, **overrides})


def tiny_clip_tokenizer(pad_token: str = CLIP_PAD_TOKEN) -> CLIPTokenizer:
    """A stock `CLIPTokenizer` with CLIP's real vocabulary and 77 positions (as SD pipelines ship it)."""
    return copy.deepcopy(_built_clip_tokenizer(pad_token))  # a copy: a pipeline may add tokens to its own


@functools.cache
def _built_clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        LongCLIPTokenizer.from_clip_bpe(model_max_length=CLIP_POSITIONS, pad_token=pad_token).save_pretrained(tmp)
        return CLIPTokenizer.from_pretrained(tmp)


def _tiny_vae(**overrides):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **overrides,
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
        tokenizer_2=tiny_clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
        unet=unet,
        scheduler=scheduler,
    )


def tiny_sd2_pipeline(seed: int = 0):
    """A complete SD 2.x-like `StableDiffusionPipeline`: an OpenCLIP-H-like text encoder (GELU, a tokenizer that pads
    with "!", one layer fewer than the other tiny towers, as diffusers stores 23 of ViT-H's 24 layers for SD 2 to
    read the penultimate one), a UNet with linear projections and SD 2.1's v-prediction DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET, attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=32
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(tiny_text_config(hidden_act="gelu", num_hidden_layers=4)).eval(),
        tokenizer=tiny_clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


TINY_T5_WIDTH = 80  # wider than the 32 + 32 CLIP features that SD 3 zero-pads to T5's width
# SD 3 and Flux VAEs: no quant convs, a latent shift as well as a scale
FLOW_VAE = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def tiny_t5_tokenizer(clip_tokenizer: PreTrainedTokenizerBase, words: int = 4000, pieces: int = 1000):
    """A `T5TokenizerFast` built offline, in T5's format: Unigram over "▁"-marked words, `<pad>` 0, `</s>` 1,
    `<unk>` 2, 100 sentinels. Its vocabulary is CLIP's most frequent whole words and word pieces (from
    `clip_tokenizer`) and every printable ASCII character, so any ASCII text tokenizes, mostly into whole words."""
    from transformers import T5TokenizerFast

    vocab = clip_tokenizer.get_vocab()
    merged = sorted((token for token, i in vocab.items() if i >= 256 and token.isascii()), key=vocab.get)  # by rank
    whole = [token[: -len("</w>")] for token in merged if token.endswith("</w>") and token[:-4].isalpha()]
    parts = [token for token in merged if token.isalpha()]
    # log-probability-like scores: a known word always beats "▁" + pieces, a piece beats characters
    scores = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    for rank, word in enumerate(whole[:words]):
        scores.setdefault(f"▁{word}", -3.0 - 0.5 * math.log1p(rank))
    for rank, part in enumerate(parts[:pieces]):
        scores.setdefault(part, -6.0 - 0.5 * math.log1p(rank))
    for char in string.ascii_letters + string.digits + string.punctuation:
        scores.setdefault(char, -12.0)
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))]
    return T5TokenizerFast(vocab=[*scores.items(), *sentinels], extra_ids=100, model_max_length=512)


def tiny_t5_encoder(vocab_size: int):
    """A T5 v1.1-like encoder (gated GELU, untied embeddings) of width `TINY_T5_WIDTH`."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=TINY_T5_WIDTH,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    return T5EncoderModel(config).eval()


def tiny_sd3_pipeline(seed: int = 0):
    """A complete SD 3.5-like `StableDiffusion3Pipeline` (64x64 images): CLIP-L- and bigG-like encoders with text
    projections (bigG GELU, its tokenizer padding with "!"), a T5 encoder, an MMDiT with QK norm and a dual-attention
    layer, and a flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    tokenizer_3 = tiny_t5_tokenizer(tokenizer)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=32 + 32,  # both CLIP projections
        pos_embed_max_size=32,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(**FLOW_VAE),
        text_encoder=CLIPTextModelWithProjection(tiny_text_config()).eval(),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(tiny_text_config(hidden_act="gelu")).eval(),
        tokenizer_2=tiny_clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
        text_encoder_3=tiny_t5_encoder(len(tokenizer_3)),
        tokenizer_3=tokenizer_3,
    )


def tiny_flux_pipeline(seed: int = 0):
    """A complete Flux.1-dev-like `FluxPipeline`: a CLIP-L-like encoder (its pooled vector), a T5 encoder and a
    transformer with guidance embedding. Its images are 64x64 with `height=64, width=64` (FluxPipeline's default
    size is fixed at 128 latent pixels a side, slow even at these widths)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer(tokenizer)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # latents packed in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_T5_WIDTH,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_tiny_vae(**FLOW_VAE),
        text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


# The pipelines `write_tiny_components` writes, by folder name (the family's key), one per family of the table.
TINY_PIPELINES = {key: globals()[family.tiny_builder] for key, family in FAMILIES.items()}


def tiny_clip_model(seed: int = 0):
    """A tiny `CLIPModel` (text tower as `tiny_text_config`, a 32-pixel vision tower, projections of 32)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    config = CLIPConfig(
        text_config=tiny_text_config().to_dict(), vision_config=vision_config.to_dict(), projection_dim=32
    )
    return CLIPModel(config).eval()


# A CLIP small enough to train in a minute on a laptop CPU: 77 positions (training stretches them to 248).
TINY_OPEN_CLIP_MODEL = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": CLIP_POSITIONS, "vocab_size": CLIP_VOCAB_SIZE, "width": 64, "heads": 2, "layers": 2},
}
TINY_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
TINY_PLACES = {"top left": (2, 2), "top right": (16, 2), "bottom left": (2, 16), "bottom right": (16, 16)}


def write_tiny_training_set(folder: Path) -> None:
    """`model.json`, one 32x32 image per (square colour, background colour, corner) and `train.jsonl`: a caption
    of about 100 tokens for each, longer than the 77 positions of a stock CLIP."""
    (folder / "images").mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(TINY_OPEN_CLIP_MODEL, indent=2) + "\n")
    rows = []
    for square, background, place in itertools.product(TINY_COLOURS, TINY_COLOURS, TINY_PLACES):
        if square == background:
            continue
        image = Image.new("RGB", (32, 32), TINY_COLOURS[background])
        image.paste(TINY_COLOURS[square], (*TINY_PLACES[place], TINY_PLACES[place][0] + 14, TINY_PLACES[place][1] + 14))
        name = f"images/{square}-on-{background}-{place.replace(' ', '-')}.png"
        image.save(folder / name)
        caption = (
            f"A {square} square on a plain {background} background. The square sits in the {place} corner of the "
            "picture and covers about a fifth of the frame, leaving the rest of the image empty. Its sides are "
            f"straight and sharp, its corners are crisp, and its colour is an even, flat {square} with no texture, "
            f"shading or gradient at all. The {background} background is just as flat: it fills everything around "
            "the square from edge to edge, with no text, no border and no shadow anywhere in view."
        )
        rows.append(json.dumps({"image": name, "caption": caption}))
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")


def first_training_command(out: str | os.PathLike, output: str | os.PathLike = "runs/first") -> str:
    """The `longclip train` command of a first run on `out/train/` (30 steps: well under a minute on a laptop CPU)."""
    train = Path(out) / "train"
    return shlex.join(
        ["longclip", "train", "--train-data", str(train / "train.jsonl"), "--model", str(train / "model.json"),
         "--pretrained", "none", "--output", str(output), "--batch-size", "16", "--epochs", "10", "--lr", "1e-3",
         "--warmup-steps", "5", "--pca-components", "4", "--workers", "0", "--log-every", "3"]
    )  # fmt: skip


def write_tiny_components(out: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny pipelines, their Long-CLIP encoders and a tiny training set under `out` (atomically); return
    `out`."""
    out = Path(out)
    with atomic_output(out, overwrite=overwrite) as tmp:
        for offset, (name, build) in enumerate(TINY_PIPELINES.items()):
            build(seed + offset).save_pretrained(tmp / name, safe_serialization=True)
            # `longclip stretch` of the pipeline's CLIP-L (SD 2's H), with the pipeline's own tokenizer beside it
            convert(tmp / name / "text_encoder", tmp / f"longclip-{name}", stretch=(DEFAULT_KEEP, DEFAULT_RATIO))
        with tempfile.TemporaryDirectory() as clip_folder:
            tiny_clip_model(seed).save_pretrained(clip_folder)
            convert(clip_folder, tmp / "longclip-l", to="clip", stretch=(DEFAULT_KEEP, DEFAULT_RATIO))
        write_tiny_training_set(tmp / "train")
        write_tiny_comfyui(tmp, tmp / "comfyui" / "models", seed)  # ComfyUI's models/ tree: tiny_comfy
    return out
