"""Benchmark: what Long-CLIP conditioning (248 tokens) costs a whole generation over stock (77), per model family.

What is measured
(a) FLOPs of one full generation at the real sizes, counted on the meta device (no weights, no compute), for
  SD 1.5, SD 2.1, SDXL, SD 3.5 Large and Flux.1-dev; the real configs of the public checkpoints throughout:
- SD 1.5: 512x512 (64x64 latents), classifier-free guidance (UNet batch 2), 50 steps. The real SD 1.5 UNet
  config; CLIP-L (12 layers, width 768) encoding the positive and the negative prompt; the real SD VAE decoder
  once. Stock: CLIP-L at 77 tokens, UNet cross-attention over 77 tokens. Long-CLIP: CLIP-L at 248, over 248.
- SD 2.1: 768x768 (96x96 latents), CFG, 50 steps. The real SD 2.1 (v-prediction) UNet config; OpenCLIP-H as
  diffusers stores it (23 layers, width 1024) for both prompts; the SD VAE decoder once. Stock: H at 77.
  Long-CLIP: H stretched to 248 positions (`longclip stretch`), the UNet attends over 248 tokens.
- SDXL: 1024x1024 (128x128 latents), CFG, 50 steps. The real SDXL base UNet config; CLIP-L and OpenCLIP-bigG
  (32 layers, width 1280) for both prompts; the VAE decoder once. Stock: both encoders at 77. Long-CLIP: CLIP-L
  at 248, bigG as the default `"chunk"` strategy runs it on a full window: 4 chunks of 77 tokens per prompt
  (a full 248-token window holds 246 tokens, 75 per chunk); the UNet attends over 248 tokens. An upper bound:
  short or empty negative prompts take one bigG chunk, and stock SDXL skips an empty negative prompt entirely.
- SD 3.5 Large: 1024x1024 (128x128 latents of 16 channels, 2x2 patches), CFG (transformer batch 2), 28 steps
  (the pipeline's default). The real MMDiT config (38 joint blocks, width 2432); CLIP-L and bigG (both with
  projection) and the T5-XXL encoder at `max_sequence_length` 256 for both prompts; the 16-channel SD3 VAE
  decoder once. Stock: CLIP-L and bigG at 77, the joint sequence holds 77 + 256 text tokens. Long-CLIP: CLIP-L
  at 248, bigG in 4 chunks as for SDXL (an upper bound likewise), T5 as stock: 248 + 256 text tokens. Text
  tokens run through every block's projections and MLPs beside the image tokens, not only through attention.
- Flux.1-dev: 1024x1024 (4096 packed latent tokens), 28 steps (the pipeline's default), guidance-distilled (a
  guidance input, no negative-prompt batch: batch 1). The real transformer config (19 double + 38 single
  blocks, width 3072); CLIP-L (pooled vector only) and T5-XXL at 512; the Flux VAE decoder (the SD3 VAE's
  architecture) once. Stock: CLIP-L at 77. Long-CLIP: CLIP-L at 248. The transformer's input does not change
  (CLIP gives only the pooled vector), so the whole difference is one CLIP-L pass.
- One denoiser step is counted and multiplied by the step count (its FLOPs do not depend on the timestep); the
  scheduler's elementwise work is left out. Counted with `torch.utils.flop_counter.FlopCounterMode`
  (2 FLOPs per multiply-add: matmuls, convolutions, attention); embeddings and norms are not counted.
- The figures are checked against the cost facts of the reference notes: a CLIP-L forward is 13.3 GFLOP at 77
  tokens and 44.4 at 248; Long-CLIP conditioning adds ~1.8 % (SD 1.5) and ~2.8 % (SDXL) to a generation.
(b) Wall time on the tiny random components (`longclip_diffusers.tiny.write_tiny_components`) of every family
  (SD 1.5, SDXL, SD 2.x, SD 3, Flux.1): our Long-CLIP pipeline (the tiny Long-CLIP text encoder and tokenizer of
  that family) against the stock diffusers pipeline, with the same ~150-token prompt, negative prompt (none for
  Flux.1, which reads none at its settings), seed and step count, at 64x64 pixels; CPU, fp32, torch's default
  thread count. Each pipeline is warmed up once, then run `--repeats` times (default 5), interleaved with the
  other (so load from other processes falls on both alike); the median is reported. A forward pre-hook on the
  UNet (or transformer) records how many conditioning tokens it attends to (SD 3: CLIP's then T5's; Flux.1:
  T5's only, as CLIP-L gives it a pooled vector). The tiny models are so small that these times measure the
  pipelines' own overhead (tokenizing, encoding, bookkeeping), not the real models' compute, which (a) covers.

The last stdout line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import interleaved_medians
from torch.utils.flop_counter import FlopCounterMode

GFLOP = 1e9
STEPS = 50  # the default num_inference_steps of the SD 1.x/2.x and SDXL pipelines
TRANSFORMER_STEPS = 28  # the default of StableDiffusion3Pipeline and FluxPipeline
STOCK_TOKENS, LONG_TOKENS = 77, 248
CFG_BATCH = 2  # positive and negative prompt, through every component but the VAE
FLUX_BATCH = 1  # guidance-distilled: the guidance scale is an input (stock true_cfg_scale 1, no negative pass)
SD3_T5_TOKENS, FLUX_T5_TOKENS = 256, 512  # the pipelines' default max_sequence_length
VAE_SCALE = 8  # pixels per latent
FLUX_PIXELS = 1024
TARGET_RATIO = 1.03

# The cost facts of the reference notes (section 7).
FACT_CLIP_L_77_GFLOP, FACT_CLIP_L_248_GFLOP = 13.3, 44.4
FACT_OVERHEAD = {"sd15": 0.018, "sdxl": 0.028}

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD21_UNET = dict(
    SD15_UNET,
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
SD35_LARGE_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels in 2x2 patches, packed by the pipeline
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
SD3_VAE = dict(SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)  # Flux.1's too
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, act="quick_gelu")
CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, act="gelu")
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, act="gelu")
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")

# About 150 CLIP tokens: past stock CLIP's 77, inside one Long-CLIP window.
PIPELINE_PROMPT = (
    "a cozy reading nook in an old stone cottage on a rainy autumn afternoon, a deep green velvet armchair with a "
    "knitted blanket draped over one arm, a steaming cup of tea on a small oak side table, a stack of worn leather "
    "books and a brass reading lamp with a warm amber glow, raindrops streaking down a tall leaded window, misty "
    "hills and bare trees outside, a sleeping ginger cat curled on a faded persian rug, dried flowers in a clay "
    "vase, soft diffused daylight mixed with lamplight, shallow depth of field, film photography, kodak portra "
    "400, gentle grain, warm earthy palette, highly detailed, a wool scarf hanging from a coat hook by the door, "
    "a crackling fire in a small iron stove, peaceful and nostalgic atmosphere"
)
NEGATIVE_PROMPT = "blurry, low quality, oversaturated, distorted, watermark, text"


# ----------------------------------------------------------------------------------------------------------
# (a) FLOPs at the real sizes, on the meta device
# ----------------------------------------------------------------------------------------------------------


def gflops(function: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops() / GFLOP


def text_encoder_gflops(shape: dict, batch: int, tokens: int, with_projection: bool = False) -> float:
    """One forward of a CLIP text tower over `batch` sequences of `tokens` tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        max_position_embeddings=tokens,
        hidden_act=shape["act"],
        projection_dim=shape["hidden_size"],
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return gflops(lambda: model(torch.zeros(batch, tokens, dtype=torch.long), output_hidden_states=True))


def clip_l_and_big_g_gflops(tokens: int, big_g_chunks: int, clip_l_with_projection: bool) -> float:
    """CLIP-L over `tokens` and bigG (with projection) over `big_g_chunks` 77-token chunks, for both prompts."""
    clip_l = text_encoder_gflops(CLIP_L, CFG_BATCH, tokens, with_projection=clip_l_with_projection)
    big_g = text_encoder_gflops(CLIP_BIGG, CFG_BATCH * big_g_chunks, STOCK_TOKENS, with_projection=True)
    return clip_l + big_g


def t5_gflops(batch: int, tokens: int) -> float:
    """One forward of the T5-XXL encoder (v1.1) over `batch` sequences of `tokens` tokens."""
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(T5Config(**T5_XXL))
    return gflops(lambda: model(torch.zeros(batch, tokens, dtype=torch.long)))


def unet_step_gflops(config: dict, tokens: int, added_cond_kwargs: dict | None = None) -> float:
    """One UNet step with CFG, cross-attending to `tokens` conditioning tokens."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**config)
    size = config["sample_size"]
    latents = torch.zeros(CFG_BATCH, config["in_channels"], size, size)
    hidden = torch.zeros(CFG_BATCH, tokens, config["cross_attention_dim"])
    return gflops(lambda: unet(latents, torch.full((CFG_BATCH,), 999), hidden, added_cond_kwargs=added_cond_kwargs))


def vae_decode_gflops(config: dict, latent_size: int) -> float:
    """Decoding one image from `latent_size` x `latent_size` latents."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**config, sample_size=latent_size * VAE_SCALE)
    return gflops(lambda: vae.decode(torch.zeros(1, config["latent_channels"], latent_size, latent_size)))


@dataclass
class Generation:
    """GFLOPs of one generation, by component."""

    text_encoders: float
    denoiser_step: float
    steps: int
    vae_decode: float
    text_tokens: int  # the conditioning tokens the denoiser sees per prompt
    denoiser: str = "unet"  # names its figures: "unet" or "transformer"

    @property
    def denoising(self) -> float:
        return self.denoiser_step * self.steps

    @property
    def total(self) -> float:
        return self.text_encoders + self.denoising + self.vae_decode


def count_sd(clip: dict, unet: dict, tokens: int) -> Generation:
    """SD 1.x / 2.x: one CLIP text encoder, whose states the UNet cross-attends to."""
    text = text_encoder_gflops(clip, CFG_BATCH, tokens)
    step = unet_step_gflops(unet, tokens)
    return Generation(text, step, STEPS, vae_decode_gflops(SD_VAE, unet["sample_size"]), tokens)


def count_sdxl(tokens: int, big_g_chunks: int) -> Generation:
    """SDXL: CLIP-L and bigG states side by side, cross-attended by the UNet; bigG's pooled vector added."""
    text = clip_l_and_big_g_gflops(tokens, big_g_chunks, clip_l_with_projection=False)
    added = {"text_embeds": torch.zeros(CFG_BATCH, 1280), "time_ids": torch.zeros(CFG_BATCH, 6)}
    step = unet_step_gflops(SDXL_UNET, tokens, added)
    return Generation(text, step, STEPS, vae_decode_gflops(SD_VAE, SDXL_UNET["sample_size"]), tokens)


def count_sd3(tokens: int, big_g_chunks: int) -> Generation:
    """SD 3.5 Large: CLIP-L and bigG states (`tokens`) then T5's, one joint sequence with the image patches."""
    from diffusers import SD3Transformer2DModel

    text = clip_l_and_big_g_gflops(tokens, big_g_chunks, clip_l_with_projection=True)
    text += t5_gflops(CFG_BATCH, SD3_T5_TOKENS)
    config = SD35_LARGE_TRANSFORMER
    transformer = SD3Transformer2DModel(**config)
    size, text_tokens = config["sample_size"], tokens + SD3_T5_TOKENS
    latents = torch.zeros(CFG_BATCH, config["in_channels"], size, size)
    prompt = torch.zeros(CFG_BATCH, text_tokens, config["joint_attention_dim"])
    pooled = torch.zeros(CFG_BATCH, config["pooled_projection_dim"])  # CLIP-L's and bigG's projections
    step = gflops(lambda: transformer(latents, prompt, pooled, torch.full((CFG_BATCH,), 999)))
    decode = vae_decode_gflops(SD3_VAE, size)
    return Generation(text, step, TRANSFORMER_STEPS, decode, text_tokens, "transformer")


def count_flux(tokens: int) -> Generation:
    """Flux.1-dev: CLIP-L's pooled vector only; T5's states and the packed image patches in one sequence."""
    from diffusers import FluxTransformer2DModel

    text = text_encoder_gflops(CLIP_L, FLUX_BATCH, tokens) + t5_gflops(FLUX_BATCH, FLUX_T5_TOKENS)
    config = FLUX_DEV_TRANSFORMER
    transformer = FluxTransformer2DModel(**config)
    latent_size = FLUX_PIXELS // VAE_SCALE
    patches = (latent_size // 2) ** 2
    latents = torch.zeros(FLUX_BATCH, patches, config["in_channels"])
    prompt = torch.zeros(FLUX_BATCH, FLUX_T5_TOKENS, config["joint_attention_dim"])
    pooled = torch.zeros(FLUX_BATCH, config["pooled_projection_dim"])
    image_ids, text_ids = torch.zeros(patches, 3), torch.zeros(FLUX_T5_TOKENS, 3)
    timestep, guidance = torch.ones(FLUX_BATCH), torch.full((FLUX_BATCH,), 3.5)
    step = gflops(lambda: transformer(latents, prompt, pooled, timestep, image_ids, text_ids, guidance))
    decode = vae_decode_gflops(SD3_VAE, latent_size)
    return Generation(text, step, TRANSFORMER_STEPS, decode, FLUX_T5_TOKENS, "transformer")


@torch.no_grad()
def count_flops() -> dict[str, float | bool]:
    big_g_chunks = -(-(LONG_TOKENS - 2) // (STOCK_TOKENS - 2))  # a full window, in chunks of 75 tokens + BOS/EOS
    with torch.device("meta"):
        clip_l_77 = text_encoder_gflops(CLIP_L, 1, STOCK_TOKENS)
        clip_l_248 = text_encoder_gflops(CLIP_L, 1, LONG_TOKENS)
        runs = {
            "sd15_stock": count_sd(CLIP_L, SD15_UNET, STOCK_TOKENS),
            "sd15_long": count_sd(CLIP_L, SD15_UNET, LONG_TOKENS),
            "sd21_stock": count_sd(CLIP_H, SD21_UNET, STOCK_TOKENS),
            "sd21_long": count_sd(CLIP_H, SD21_UNET, LONG_TOKENS),
            "sdxl_stock": count_sdxl(STOCK_TOKENS, 1),
            "sdxl_long": count_sdxl(LONG_TOKENS, big_g_chunks),
            "sd35_large_stock": count_sd3(STOCK_TOKENS, 1),
            "sd35_large_long": count_sd3(LONG_TOKENS, big_g_chunks),
            "flux_dev_stock": count_flux(STOCK_TOKENS),
            "flux_dev_long": count_flux(LONG_TOKENS),
        }

    print(
        f"\n(a) GFLOPs per generation (UNets {STEPS} steps, transformers {TRANSFORMER_STEPS}; CFG batch "
        f"{CFG_BATCH}, Flux {FLUX_BATCH}; VAE decode once; tokens: text tokens the denoiser sees)"
    )
    print(
        f"{'generation':<18}{'text enc':>10}{'tokens':>8}{'denoiser':>13}{'step':>10}{'all steps':>11}"
        f"{'VAE dec':>10}{'total':>11}"
    )
    for name, run in runs.items():
        print(
            f"{name:<18}{run.text_encoders:>10.1f}{run.text_tokens:>8}{run.denoiser:>13}{run.denoiser_step:>10.1f}"
            f"{run.denoising:>11.0f}{run.vae_decode:>10.1f}{run.total:>11.0f}"
        )
    figures: dict[str, float | bool] = {
        "steps": STEPS,
        "transformer_steps": TRANSFORMER_STEPS,
        "sdxl_long_big_g_chunks_per_prompt": big_g_chunks,
        "sd35_large_long_big_g_chunks_per_prompt": big_g_chunks,
    }
    figures["clip_l_77_gflop"], figures["clip_l_248_gflop"] = round(clip_l_77, 2), round(clip_l_248, 2)
    for name, run in runs.items():
        figures[f"{name}_text_encoders_gflop"] = round(run.text_encoders, 2)
        figures[f"{name}_{run.denoiser}_text_tokens"] = run.text_tokens
        figures[f"{name}_{run.denoiser}_step_gflop"] = round(run.denoiser_step, 2)
        figures[f"{name}_{run.denoiser}_gflop"] = round(run.denoising, 1)
        figures[f"{name}_vae_decode_gflop"] = round(run.vae_decode, 2)
        figures[f"{name}_total_gflop"] = round(run.total, 1)

    checks = [
        ("clip_l_77_gflop", clip_l_77, FACT_CLIP_L_77_GFLOP, 0.01),
        ("clip_l_248_gflop", clip_l_248, FACT_CLIP_L_248_GFLOP, 0.01),
    ]
    for model in ("sd15", "sd21", "sdxl", "sd35_large", "flux_dev"):
        stock, long = runs[f"{model}_stock"], runs[f"{model}_long"]
        ratio = long.total / stock.total
        figures[f"flop_ratio_{model}"] = round(ratio, 4)
        extra = long.total - stock.total
        figures[f"{model}_extra_gflop"] = round(extra, 1)
        figures[f"{model}_extra_share_{long.denoiser}"] = round((long.denoising - stock.denoising) / extra, 3)
        figures[f"{model}_extra_share_text_encoders"] = round((long.text_encoders - stock.text_encoders) / extra, 3)
        if model in FACT_OVERHEAD:
            checks.append((f"{model}_overhead_pct", (ratio - 1) * 100, FACT_OVERHEAD[model] * 100, 0.005))  # 0.5 pp
        share = figures[f"{model}_extra_share_{long.denoiser}"]
        verdict = f"target <= {TARGET_RATIO}" if ratio <= TARGET_RATIO else f"ABOVE the target of {TARGET_RATIO}"
        print(f"flop_ratio_{model}: {ratio:.4f} ({verdict}); {share:.0%} of the extra FLOPs are in the {long.denoiser}")
    print(f"\n{'check':<34}{'here':>10}{'facts':>10}{'agree':>7}")
    for name, here, fact, tolerance in checks:
        agree = abs(here - fact) <= (tolerance * fact if name.endswith("gflop") else tolerance * 100)
        figures[f"{name}_agrees_with_facts"] = agree
        print(f"{name:<34}{here:>10.2f}{fact:>10.2f}{'yes' if agree else 'NO':>7}")
    return figures


# ----------------------------------------------------------------------------------------------------------
# (b) Wall time of the pipelines on the tiny components
# ----------------------------------------------------------------------------------------------------------


class ConditioningLength:
    """Records the conditioning length the denoiser (UNet or transformer) attends to."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.tokens = 0
        denoiser.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        self.tokens = hidden.shape[1]


@torch.no_grad()
def time_pipelines(repeats: int, steps: int) -> dict[str, float | int]:
    from diffusers import (
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
    from longclip_diffusers.pipelines import (
        LongCLIPFluxPipeline,
        LongCLIPStableDiffusion3Pipeline,
        LongCLIPStableDiffusionPipeline,
        LongCLIPStableDiffusionXLPipeline,
    )
    from longclip_diffusers.tiny import write_tiny_components

    diffusers_logging.set_verbosity_error()  # the stock pipelines warn that they truncate the prompt
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    logging.getLogger("longclip_diffusers").setLevel(logging.ERROR)

    figures: dict[str, float | int] = {"pipeline_steps": steps, "pipeline_repeats": repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_components(Path(tmp) / "tiny")
        prompt_tokens = len(LongCLIPTokenizer.from_pretrained(tiny / "longclip-sd15")(PIPELINE_PROMPT).input_ids)
        figures["pipeline_prompt_tokens"] = prompt_tokens
        print(f"\n(b) tiny pipelines, {steps} steps, 64x64, prompt of {prompt_tokens} tokens", flush=True)
        pairs = {
            "sd15": (StableDiffusionPipeline, LongCLIPStableDiffusionPipeline),
            "sdxl": (StableDiffusionXLPipeline, LongCLIPStableDiffusionXLPipeline),
            "sd2": (StableDiffusionPipeline, LongCLIPStableDiffusionPipeline),
            "sd3": (StableDiffusion3Pipeline, LongCLIPStableDiffusion3Pipeline),
            "flux": (FluxPipeline, LongCLIPFluxPipeline),
        }
        rows = []
        for model, (stock_class, our_class) in pairs.items():
            long_parts = tiny / f"longclip-{model}"
            pipes = {
                "stock": stock_class.from_pretrained(tiny / model),
                "ours": our_class.from_pretrained(
                    tiny / model,
                    text_encoder=LongCLIPTextEncoder.from_pretrained(long_parts),
                    tokenizer=LongCLIPTokenizer.from_pretrained(long_parts),
                ),
            }
            # Flux.1 reads no negative prompt at its settings (true_cfg_scale 1)
            negative = {} if model == "flux" else {"negative_prompt": NEGATIVE_PROMPT}
            denoiser = "unet" if hasattr(pipes["stock"], "unet") else "transformer"
            lengths, generators = {}, {}
            for name, pipe in pipes.items():
                pipe.set_progress_bar_config(disable=True)
                lengths[name] = ConditioningLength(getattr(pipe, denoiser))

                def generate(pipe=pipe, negative=negative) -> object:
                    return pipe(
                        PIPELINE_PROMPT,
                        **negative,
                        num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0),
                        height=64,
                        width=64,
                        output_type="np",
                    ).images

                generators[name] = generate
            seconds = {k: ms / 1e3 for k, ms in interleaved_medians(generators, repeats).items()}
            images = {name: generate() for name, generate in generators.items()}
            for name in pipes:
                figures[f"{model}_{name}_s"] = round(seconds[name], 4)
                figures[f"{model}_{name}_{denoiser}_cond_tokens"] = lengths[name].tokens
                rows.append((f"{model} {name}", seconds[name], denoiser, lengths[name].tokens))
                print(f"  {model} {name}: {seconds[name] * 1e3:.0f} ms", flush=True)
            assert images["stock"].shape == images["ours"].shape == (1, 64, 64, 3)
            figures[f"time_ratio_{model}_ours_vs_stock"] = round(seconds["ours"] / seconds["stock"], 3)

    print(f"\n{'pipeline':<14}{'median ms':>10}{'denoiser':>13}{'cond tokens':>13}")
    for name, s, denoiser, tokens in rows:
        print(f"{name:<14}{s * 1e3:>10.0f}{denoiser:>13}{tokens:>13}")
    for model in pairs:
        print(f"{model} ours / stock: {figures[f'time_ratio_{model}_ours_vs_stock']:.2f}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed pipeline runs; median reported")
    parser.add_argument("--steps", type=int, default=4, help="inference steps of the tiny pipelines")
    parser.add_argument("--flops-only", action="store_true", help="skip (b), the tiny pipelines' wall time")
    args = parser.parse_args()

    figures: dict[str, float | int | bool | str] = {"torch_threads": torch.get_num_threads()}
    figures.update(count_flops())
    if not args.flops_only:
        figures.update(time_pipelines(args.repeats, args.steps))
    print()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
