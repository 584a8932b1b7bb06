"""Generate with Long-CLIP, optionally beside vanilla CLIP on the same seed (`longclip generate`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from transformers import CLIPTextConfig, PreTrainedTokenizerBase

import longclip_diffusers.pipelines as long_pipelines
from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
from longclip_diffusers.atomic import atomic_write
from longclip_diffusers.families import Family, describe_families, families_of, family_of
from longclip_diffusers.grid import captioned_grid
from longclip_diffusers.prompts import tokenize_windows

# What `generate --out` writes, by suffix (lossless first). Pillow registers more, some only as stubs that fail.
IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class PipelinePair:
    """The stock pipeline and its Long-CLIP twin, sharing the UNet (or transformer), VAE and scheduler."""

    stock: DiffusionPipeline
    long: DiffusionPipeline
    family: Family


def pipeline_family(pipeline: str | os.PathLike) -> Family:
    """The family of a diffusers pipeline (Hub id or folder), from `_class_name` in its model_index.json (read
    alone, before any model; SD 1.x and 2.x, which share a class, are told apart by their text encoder's config)."""
    try:
        class_name = DiffusionPipeline.load_config(pipeline).get("_class_name")
    except OSError as error:  # diffusers' messages run over several lines
        raise OSError(f"{pipeline}: no diffusers pipeline there ({' '.join(str(error).split())})") from None
    family = family_of(class_name) if isinstance(class_name, str) else None
    if family is None:
        raise ValueError(
            f"{pipeline}: its model_index.json names {class_name!r}; Long-CLIP replaces the CLIP-L text encoder of "
            f"{describe_families()} checkpoints. Pass a stock pipeline of one of these."
        )
    if len(families_of(class_name)) > 1:  # told apart by their first CLIP
        try:
            activation = CLIPTextConfig.from_pretrained(pipeline, subfolder=family.long_encoder.component).hidden_act
        except OSError:
            return family
        family = family_of(class_name, activation)
    return family


def check_options(
    family: Family, pipeline: str | os.PathLike, *, strategy: str | None = None, negative_prompt: str | None = None
) -> None:
    """Refuse options `family` would not use, before any model loads."""
    if strategy is not None and not family.big_g_strategies:
        raise ValueError(
            f"strategy={strategy!r} sets how the second text encoder of SDXL and SD 3 (OpenCLIP-bigG) reads long "
            f"prompts, but {pipeline} is a {family.stock_pipeline}, which has none; leave the strategy out."
        )
    if negative_prompt and not family.reads_negative:
        raise ValueError(
            f"{pipeline} is a {family.stock_pipeline}: {family.name} reads no negative prompt at its usual settings "
            "(its guidance is distilled into the model); leave the negative prompt out."
        )


def default_device_and_dtype() -> tuple[str, torch.dtype]:
    """CUDA with fp16 when present, the CPU with fp32 otherwise."""
    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


@contextmanager
def _quiet_empty_float32_warning() -> Iterator[None]:
    """Drop diffusers' warning about modules to keep in float32 when it names none.

    diffusers warns on every `ModelMixin.to(dtype)`, and `from_pipe` always casts, even when a model keeps no module
    in float32 ("should be kept in float32: []"): noise on every run. The warning is kept when it names modules.
    """
    modeling_logger = logging.getLogger("diffusers.models.modeling_utils")

    def names_modules(record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()

    modeling_logger.addFilter(names_modules)
    try:
        yield
    finally:
        modeling_logger.removeFilter(names_modules)


def load_pipelines(
    pipeline: str | os.PathLike,
    long_encoder: str | os.PathLike,
    *,
    strategy: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    family: Family | None = None,
) -> PipelinePair:
    """Load a stock SD 1.x/2.x, SDXL, SD 3 or Flux.1 pipeline and build its Long-CLIP twin (models loaded once).

    The family comes from the pipeline's model_index.json, unless given (already read and checked against the
    options). `strategy` is how SDXL's and SD 3's bigG reads long prompts ("chunk" by default); other families
    refuse it.
    """
    if family is None:
        family = pipeline_family(pipeline)
        check_options(family, pipeline, strategy=strategy)
    default_device, default_dtype = default_device_and_dtype()
    device, dtype = device or default_device, dtype or default_dtype
    # refuses 77-position encoders
    projection = family.long_encoder.projection
    text_encoder = LongCLIPTextEncoder.from_pretrained(long_encoder, with_projection=projection)
    tokenizer = LongCLIPTokenizer.from_pretrained(long_encoder)
    stock_class, long_class = getattr(diffusers, family.stock_pipeline), getattr(long_pipelines, family.long_pipeline)
    stock = stock_class.from_pretrained(pipeline)
    expected_width = stock.text_encoder.config.hidden_size
    if text_encoder.config.hidden_size != expected_width:
        raise ValueError(
            f"{long_encoder}: its text encoder is {text_encoder.config.hidden_size} wide but {pipeline} conditions "
            f"on a {expected_width}-wide CLIP; use a Long-CLIP of the same size (LongCLIP-L for SD 1.5, SDXL, SD 3 "
            "and Flux; a long OpenCLIP-H, `longclip stretch --sd2`, for SD 2.x)."
        )
    options = {"long_prompt_strategy": strategy or "chunk"} if family.big_g_strategies else {}
    with _quiet_empty_float32_warning():
        long = long_class.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer, **options)
        if (device, dtype) != ("cpu", torch.float32):  # models load on the CPU in float32
            stock.to(device, dtype)  # the Long-CLIP pipeline shares these modules
            long.text_encoder.to(device, dtype)
    return PipelinePair(stock, long, family)


def check_size(width: int | None, height: int | None) -> None:
    """Refuse a width without a height or the other way round, which the SD 1.x/2.x pipeline silently ignores."""
    if (width is None) != (height is None):
        given, missing = ("width", "height") if height is None else ("height", "width")
        raise ValueError(
            f"A {given} ({width or height}) without a {missing}: give both (e.g. width=768, height=768), or "
            "neither for the pipeline's default size."
        )


def image_format(out: str | os.PathLike) -> str:
    """The Pillow format `out`'s suffix names (`.png` -> PNG), or a ValueError naming the suffixes written."""
    suffix = Path(out).suffix.lower()
    registered = Image.registered_extensions()
    found = registered.get(suffix) if suffix in IMAGE_SUFFIXES else None
    if found is None:
        written = ", ".join(known for known in IMAGE_SUFFIXES if known in registered)
        what = f"{suffix!r} is not an image suffix this writes" if suffix else "it has no suffix to tell the format"
        raise ValueError(f"{out}: {what}; end the file name with one of {written}.")
    return found


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
    check_size(width, height)
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
    """Tokens of `prompt` without the start and end tokens, as a stock pipeline reads it."""
    return len(tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids)


@dataclass
class LongRead:
    """What a Long-CLIP pipeline's CLIP-L reads of a prompt: of its `tokens` (weighting syntax and `BREAK` are not
    tokens), the first `read`, in `windows` windows."""

    tokens: int
    read: int
    windows: int

    def __str__(self) -> str:
        """ "1 token", "12 tokens", "400 tokens in 2 windows", or "the first 246 of 400 tokens"."""
        tokens = f"{self.tokens} token{'' if self.tokens == 1 else 's'}"
        if self.read < self.tokens:
            return f"the first {self.read} of {tokens}"
        return tokens if self.windows == 1 else f"{tokens} in {self.windows} windows"


def windows_read(
    tokenizer: PreTrainedTokenizerBase, prompt: str, weighting: bool = True, max_windows: int | None = None
) -> LongRead:
    """What a Long-CLIP pipeline with `tokenizer` reads of `prompt`: its tokens laid out in windows, of which it
    reads the first `max_windows` (all if None)."""
    capacity = tokenizer.model_max_length - 2
    windows = tokenize_windows(prompt, tokenizer, capacity, weighting).token_ids
    read_windows = windows[:max_windows] if max_windows is not None else windows
    return LongRead(sum(map(len, windows)), sum(map(len, read_windows)), len(read_windows))


def windows_limit(pipe: DiffusionPipeline) -> int | None:
    """How many CLIP-L windows a Long-CLIP pipeline reads: Flux the first (its pooled vector), the others up to
    their `max_prompt_windows`."""
    return pipe.family.window_limit or pipe.config.max_prompt_windows or None


def long_read(pipe: DiffusionPipeline, prompt: str) -> LongRead:
    """What `pipe` (a Long-CLIP pipeline) reads of `prompt` with CLIP-L."""
    return windows_read(pipe.tokenizer, prompt, pipe.config.prompt_weighting, windows_limit(pipe))


def compare(pair: PipelinePair, prompt: str, negative_prompt: str | None = None, **kwargs) -> Image.Image:
    """vanilla CLIP | Long-CLIP on the same seed, captioned with what each one's CLIP-L read of the prompt (each
    counted with its own tokenizer)."""
    stock_tokens = count_tokens(pair.stock.tokenizer, prompt)
    stock_reads = min(stock_tokens, pair.stock.tokenizer.model_max_length - 2)
    images = [
        generate(pair.stock, prompt, negative_prompt, **kwargs),
        generate(pair.long, prompt, negative_prompt, **kwargs),
    ]
    read = long_read(pair.long, prompt)
    captions = [
        f"vanilla CLIP: reads {stock_reads} of {stock_tokens} tokens",
        f"Long-CLIP: reads {'all ' if read.read == read.tokens else ''}{read}",
    ]
    return captioned_grid(images, captions)


def save_image(image: Image.Image, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write atomically (complete or not at all, with the umask's permissions) in the format `out`'s suffix names;
    an existing `out` is refused unless `overwrite`."""
    out_format = image_format(out)
    return atomic_write(out, lambda handle: image.save(handle, format=out_format), overwrite=overwrite)
