"""Benchmark: what Long-CLIP conditioning (248 tokens) costs a whole SD 1.5 / SDXL generation over stock (77).

What is measured
(a) FLOPs of one full generation at the real sizes, counted on the meta device (no weights, no compute):
- SD 1.5: 512x512 (64x64 latents), classifier-free guidance (UNet batch 2), 50 steps. The real SD 1.5 UNet
  config; CLIP-L (12 layers, width 768) encoding the positive and the negative prompt; the real SD VAE decoder
  once. Stock: CLIP-L at 77 tokens, UNet cross-attention over 77 tokens. Long-CLIP: CLIP-L at 248, over 248.
- SDXL: 1024x1024 (128x128 latents), CFG, 50 steps. The real SDXL base UNet config; CLIP-L and OpenCLIP-bigG
  (32 layers, width 1280) for both prompts; the VAE decoder once. Stock: both encoders at 77. Long-CLIP: CLIP-L
  at 248, bigG as the default `"chunk"` strategy runs it on a full window: 4 chunks of 77 tokens per prompt
  (a full 248-token window holds 246 tokens, 75 per chunk); the UNet attends over 248 tokens. An upper bound:
  short or empty negative prompts take one bigG chunk, and stock SDXL skips an empty negative prompt entirely.
- One UNet step is counted and multiplied by the step count (its FLOPs do not depend on the timestep); the
  scheduler's elementwise work is left out. Counted with `torch.utils.flop_counter.FlopCounterMode`
  (2 FLOPs per multiply-add: matmuls, convolutions, attention); embeddings and norms are not counted.
- The figures are checked against the cost facts of the reference notes: a CLIP-L forward is 13.3 GFLOP at 77
  tokens and 44.4 at 248; Long-CLIP conditioning adds ~1.8 % (SD 1.5) and ~2.8 % (SDXL) to a generation.
(b) Wall time on the tiny random components (`longclip_diffusers.tiny.write_tiny_components`): our
  `LongCLIPStableDiffusionPipeline` / `LongCLIPStableDiffusionXLPipeline` (Long-CLIP text encoder and
  tokenizer) against the stock diffusers pipelines, with the same ~150-token prompt, negative prompt, seed and
  step count; CPU, fp32, torch's default thread count. Each pipeline is warmed up once, then run `--repeats`
  times (default 5), interleaved with the other (so load from other processes falls on both alike); the
  median is reported. A forward pre-hook on the UNet records how many conditioning
  tokens it attends to. The tiny models are so small that these times measure the pipelines' own overhead
  (tokenizing, encoding, bookkeeping), not the real models' compute, which (a) covers.

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
STEPS = 50
STOCK_TOKENS, LONG_TOKENS = 77, 248
CFG_BATCH = 2  # positive and negative prompt, through every component but the VAE

# The cost facts of the reference notes (section 7).
FACT_CLIP_L_77_GFLOP, FACT_CLIP_L_248_GFLOP = 13.3, 44.4
FACT_OVERHEAD_SD15, FACT_OVERHEAD_SDXL = 0.018, 0.028

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
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, act="quick_gelu")
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, act="gelu")

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


def text_encoder_gflops(shape: dict, batch: int, tokens: int) -> float:
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
    model_class = CLIPTextModelWithProjection if shape is CLIP_BIGG else CLIPTextModel
    model = model_class(config)
    return gflops(lambda: model(torch.zeros(batch, tokens, dtype=torch.long), output_hidden_states=True))


@dataclass
class Generation:
    """GFLOPs of one generation, by component."""

    text_encoders: float
    unet_step: float
    steps: int
    vae_decode: float

    @property
    def unet(self) -> float:
        return self.unet_step * self.steps

    @property
    def total(self) -> float:
        return self.text_encoders + self.unet + self.vae_decode


def count_sd15(tokens: int) -> Generation:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    text = text_encoder_gflops(CLIP_L, CFG_BATCH, tokens)
    unet = UNet2DConditionModel(**SD15_UNET)
    latents = torch.zeros(CFG_BATCH, 4, 64, 64)
    step = gflops(lambda: unet(latents, torch.full((CFG_BATCH,), 999), torch.zeros(CFG_BATCH, tokens, 768)))
    vae = AutoencoderKL(**SD_VAE, sample_size=512)
    decode = gflops(lambda: vae.decode(torch.zeros(1, 4, 64, 64)))
    return Generation(text, step, STEPS, decode)


def count_sdxl(tokens: int, big_g_chunks: int) -> Generation:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    text = text_encoder_gflops(CLIP_L, CFG_BATCH, tokens)
    text += text_encoder_gflops(CLIP_BIGG, CFG_BATCH * big_g_chunks, STOCK_TOKENS)
    unet = UNet2DConditionModel(**SDXL_UNET)
    latents = torch.zeros(CFG_BATCH, 4, 128, 128)
    added = {"text_embeds": torch.zeros(CFG_BATCH, 1280), "time_ids": torch.zeros(CFG_BATCH, 6)}
    hidden = torch.zeros(CFG_BATCH, tokens, 2048)
    step = gflops(lambda: unet(latents, torch.full((CFG_BATCH,), 999), hidden, added_cond_kwargs=added))
    vae = AutoencoderKL(**SD_VAE, sample_size=1024)
    decode = gflops(lambda: vae.decode(torch.zeros(1, 4, 128, 128)))
    return Generation(text, step, STEPS, decode)


@torch.no_grad()
def count_flops() -> dict[str, float | bool]:
    big_g_chunks = -(-(LONG_TOKENS - 2) // (STOCK_TOKENS - 2))  # a full window, in chunks of 75 tokens + BOS/EOS
    with torch.device("meta"):
        clip_l_77 = text_encoder_gflops(CLIP_L, 1, STOCK_TOKENS)
        clip_l_248 = text_encoder_gflops(CLIP_L, 1, LONG_TOKENS)
        runs = {
            "sd15_stock": count_sd15(STOCK_TOKENS),
            "sd15_long": count_sd15(LONG_TOKENS),
            "sdxl_stock": count_sdxl(STOCK_TOKENS, 1),
            "sdxl_long": count_sdxl(LONG_TOKENS, big_g_chunks),
        }

    print(f"\n(a) GFLOPs per generation ({STEPS} steps, CFG batch {CFG_BATCH}, VAE decode once)")
    print(f"{'generation':<12}{'text enc':>10}{'UNet step':>11}{'UNet total':>12}{'VAE dec':>10}{'total':>11}")
    for name, run in runs.items():
        print(
            f"{name:<12}{run.text_encoders:>10.1f}{run.unet_step:>11.1f}{run.unet:>12.0f}"
            f"{run.vae_decode:>10.1f}{run.total:>11.0f}"
        )
    figures: dict[str, float | bool] = {"steps": STEPS, "sdxl_long_big_g_chunks_per_prompt": big_g_chunks}
    figures["clip_l_77_gflop"], figures["clip_l_248_gflop"] = round(clip_l_77, 2), round(clip_l_248, 2)
    for name, run in runs.items():
        figures[f"{name}_text_encoders_gflop"] = round(run.text_encoders, 2)
        figures[f"{name}_unet_step_gflop"] = round(run.unet_step, 2)
        figures[f"{name}_unet_gflop"] = round(run.unet, 1)
        figures[f"{name}_vae_decode_gflop"] = round(run.vae_decode, 2)
        figures[f"{name}_total_gflop"] = round(run.total, 1)

    checks = [
        ("clip_l_77_gflop", clip_l_77, FACT_CLIP_L_77_GFLOP, 0.01),
        ("clip_l_248_gflop", clip_l_248, FACT_CLIP_L_248_GFLOP, 0.01),
    ]
    for model in ("sd15", "sdxl"):
        stock, long = runs[f"{model}_stock"], runs[f"{model}_long"]
        ratio = long.total / stock.total
        figures[f"flop_ratio_{model}"] = round(ratio, 4)
        extra = long.total - stock.total
        figures[f"{model}_extra_share_unet"] = round((long.unet - stock.unet) / extra, 3)
        figures[f"{model}_extra_share_text_encoders"] = round((long.text_encoders - stock.text_encoders) / extra, 3)
        fact = FACT_OVERHEAD_SD15 if model == "sd15" else FACT_OVERHEAD_SDXL
        checks.append((f"{model}_overhead_pct", (ratio - 1) * 100, fact * 100, 0.005))  # within 0.5 pp
        share = figures[f"{model}_extra_share_unet"]
        print(f"flop_ratio_{model}: {ratio:.4f} (target <= 1.03); {share:.0%} of the extra FLOPs are in the UNet")
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
    """Records the conditioning length the UNet attends to."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.tokens = 0
        unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        self.tokens = hidden.shape[1]


@torch.no_grad()
def time_pipelines(repeats: int, steps: int) -> dict[str, float | int]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
    from longclip_diffusers.pipelines import LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline
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
        print(f"\n(b) tiny pipelines, {steps} steps, prompt of {prompt_tokens} tokens", flush=True)
        pairs = {
            "sd15": (StableDiffusionPipeline, LongCLIPStableDiffusionPipeline),
            "sdxl": (StableDiffusionXLPipeline, LongCLIPStableDiffusionXLPipeline),
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
            lengths, generators = {}, {}
            for name, pipe in pipes.items():
                pipe.set_progress_bar_config(disable=True)
                lengths[name] = ConditioningLength(pipe.unet)

                def generate(pipe=pipe) -> object:
                    return pipe(
                        PIPELINE_PROMPT,
                        negative_prompt=NEGATIVE_PROMPT,
                        num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0),
                        output_type="np",
                    ).images

                generators[name] = generate
            seconds = {k: ms / 1e3 for k, ms in interleaved_medians(generators, repeats).items()}
            images = {name: generate() for name, generate in generators.items()}
            for name in pipes:
                figures[f"{model}_{name}_s"] = round(seconds[name], 4)
                figures[f"{model}_{name}_unet_cond_tokens"] = lengths[name].tokens
                rows.append((f"{model} {name}", seconds[name], lengths[name].tokens))
                print(f"  {model} {name}: {seconds[name] * 1e3:.0f} ms", flush=True)
            assert images["stock"].shape == images["ours"].shape
            figures[f"time_ratio_{model}_ours_vs_stock"] = round(seconds["ours"] / seconds["stock"], 3)

    print(f"\n{'pipeline':<14}{'median ms':>10}{'UNet cond tokens':>18}")
    for name, s, tokens in rows:
        print(f"{name:<14}{s * 1e3:>10.0f}{tokens:>18}")
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
