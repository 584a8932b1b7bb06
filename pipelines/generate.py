"""Generate with Long-CLIP, optionally beside vanilla CLIP on the same seed (`longclip generate`)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from transformers import PreTrainedTokenizerBase

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
from longclip_diffusers.grid import captioned_grid

from .longclip_sd.pipeline import LongCLIPStableDiffusionPipeline
from .longclip_sdxl.pipeline import LongCLIPStableDiffusionXLPipeline


@dataclass
class PipelinePair:
    """The stock pipeline and its Long-CLIP twin, sharing the UNet, VAE and scheduler."""

    stock: DiffusionPipeline
    long: DiffusionPipeline

    @property
    def is_sdxl(self) -> bool:
        return isinstance(self.long, StableDiffusionXLPipeline)


def default_device_and_dtype() -> tuple[str, torch.dtype]:
    """CUDA with fp16 when present, the CPU with fp32 otherwise."""
    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


def load_pipelines(
    pipeline: str | os.PathLike,
    long_encoder: str | os.PathLike,
    *,
    strategy: str = "chunk",
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> PipelinePair:
    """Load a stock SD 1.x/2.x or SDXL pipeline and build its Long-CLIP twin (models loaded once)."""
    default_device, default_dtype = default_device_and_dtype()
    device, dtype = device or default_device, dtype or default_dtype
    text_encoder = LongCLIPTextEncoder.from_pretrained(long_encoder)  # refuses 77-position encoders
    tokenizer = LongCLIPTokenizer.from_pretrained(long_encoder)
    stock = DiffusionPipeline.from_pretrained(pipeline)
    if not isinstance(stock, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ValueError(
            f"{pipeline}: is a {type(stock).__name__}; Long-CLIP replaces the CLIP-L text encoder of "
            "StableDiffusionPipeline (SD 1.x/2.x) and StableDiffusionXLPipeline checkpoints."
        )
    expected_width = stock.text_encoder.config.hidden_size
    if text_encoder.config.hidden_size != expected_width:
        raise ValueError(
            f"{long_encoder}: its text encoder is {text_encoder.config.hidden_size} wide but {pipeline} conditions "
            f"its UNet on a {expected_width}-wide CLIP; use a Long-CLIP of the same size (LongCLIP-L for SD 1.5 "
            "and SDXL)."
        )
    if isinstance(stock, StableDiffusionXLPipeline):
        long = LongCLIPStableDiffusionXLPipeline.from_pipe(
            stock, text_encoder=text_encoder, tokenizer=tokenizer, long_prompt_strategy=strategy
        )
    else:
        long = LongCLIPStableDiffusionPipeline.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)
    if (device, dtype) != ("cpu", torch.float32):  # models load on the CPU in float32
        stock.to(device, dtype)  # the Long-CLIP pipeline shares these modules
        long.text_encoder.to(device, dtype)
    return PipelinePair(stock, long)


def generate(
    pipe: DiffusionPipeline,
    prompt: str,
    negative_prompt: str | None = None,
    *,
    steps: int = 30,
    seed: int = 0,
    guidance_scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> Image.Image:
    """One image; the generator lives on the CPU so a seed gives the same noise on every device."""
    extra = {"guidance_scale": guidance_scale} if guidance_scale is not None else {}
    return pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        width=width,
        height=height,
        **extra,
    ).images[0]


def count_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str) -> int:
    """Tokens of `prompt` without the start and end tokens."""
    return len(tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids)


def compare(pair: PipelinePair, prompt: str, negative_prompt: str | None = None, **kwargs) -> Image.Image:
    """vanilla CLIP | Long-CLIP on the same seed, captioned with what each read of the prompt."""
    tokens = count_tokens(pair.long.tokenizer, prompt)
    stock_reads = min(tokens, pair.stock.tokenizer.model_max_length - 2)
    images = [
        generate(pair.stock, prompt, negative_prompt, **kwargs),
        generate(pair.long, prompt, negative_prompt, **kwargs),
    ]
    captions = [
        f"vanilla CLIP: reads {stock_reads} of {tokens} tokens",
        f"Long-CLIP: reads all {tokens} tokens",
    ]
    return captioned_grid(images, captions)


def save_image(image: Image.Image, out: str | os.PathLike) -> Path:
    """Write atomically: a temporary file beside `out`, renamed when complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=out.suffix or ".png", delete=False) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    os.replace(tmp.name, out)
    return out
