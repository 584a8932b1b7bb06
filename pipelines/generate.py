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
from longclip_diffusers.atomic import atomic_write, refuse_file_above
from longclip_diffusers.families import Family, describe_families, families_of, family_of
from longclip_diffusers.grid import captioned_grid
from longclip_diffusers.hub import looks_local
from longclip_diffusers.prompts import tokenize_weighted
from longclip_diffusers.token_counts import LongRead, count_tokens, windows_read

# What `generate --out` writes, by suffix (lossless first). Pillow registers more, some only as stubs that fail.
IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOGGED_PROMPT_CHARS = 400  # a warning that quotes a prompt is cut to this many characters


@dataclass
class PipelinePair:
    """The stock pipeline and its Long-CLIP twin, sharing the UNet (or transformer), VAE and scheduler."""

    stock: DiffusionPipeline
    long: DiffusionPipeline
    family: Family


def pipeline_family(pipeline: str | os.PathLike) -> Family:
    """The family of a diffusers pipeline (Hub id or folder), from `_class_name` in its model_index.json (read
    alone, before any model; SD 1.x and 2.x, which share a class, are told apart by their text encoder's config)."""
    if looks_local(str(pipeline)) and not Path(pipeline).expanduser().exists():  # no Hub retries for a typo
        raise FileNotFoundError(
            f"{pipeline}: no diffusers pipeline there (no such folder, and not a Hugging Face Hub repo id)."
        )
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


class _BoundedPromptWarnings(logging.Filter):
    """Drop transformers' "indexing errors" warning, and cut a warning that quotes a prompt to
    `LOGGED_PROMPT_CHARS` characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Token indices sequence length is longer than the specified maximum"):
            return False
        if len(message) > LOGGED_PROMPT_CHARS:
            record.msg = f"{message[:LOGGED_PROMPT_CHARS]}... ({len(message) - LOGGED_PROMPT_CHARS} more characters)"
            record.args = ()
        return True


@contextmanager
def _bounded_prompt_warnings(pipe: DiffusionPipeline) -> Iterator[None]:
    """While `pipe` reads a prompt that may be long, on purpose: no "Running this sequence through the model will
    result in indexing errors" from transformers (the pipelines truncate or window the ids, nothing indexes past the
    model's length), and the text the stock pipelines, T5 and `max_prompt_windows` log as dropped cut short (a
    5,000-token prompt made one 19 KB line)."""
    names = ("transformers.tokenization_utils_base", "longclip_diffusers.prompts", type(pipe).__module__)
    names += tuple(parent.__module__ for parent in type(pipe).__mro__ if parent.__module__.startswith("diffusers."))
    loggers = [logging.getLogger(name) for name in dict.fromkeys(names)]
    bounded = _BoundedPromptWarnings()
    for each in loggers:
        each.addFilter(bounded)
    try:
        yield
    finally:
        for each in loggers:
            each.removeFilter(bounded)


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
            "and Flux; for SD 2.x a long OpenCLIP-H: `longclip stretch <SD 2.x pipeline> OUT --subfolder "
            "text_encoder`, or `longclip convert SRC OUT --sd2` of a full-depth one)."
        )
    check_depth(
        text_encoder.config.num_hidden_layers, stock.text_encoder.config.num_hidden_layers, long_encoder, pipeline
    )
    options = {"long_prompt_strategy": strategy or "chunk"} if family.big_g_strategies else {}
    with _quiet_empty_float32_warning():
        long = long_class.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer, **options)
        if (device, dtype) != ("cpu", torch.float32):  # models load on the CPU in float32
            stock.to(device, dtype)  # the Long-CLIP pipeline shares these modules
            long.text_encoder.to(device, dtype)
    return PipelinePair(stock, long, family)


def check_depth(layers: int, expected: int, long_encoder: str | os.PathLike, pipeline: str | os.PathLike) -> None:
    """Refuse a Long-CLIP whose depth is not the pipeline's own encoder's: the pipeline reads a layer counted from
    the end, which would then be another layer's states."""
    if layers == expected:
        return
    if layers == expected + 1:
        fix = (
            "a full-depth OpenCLIP-H (as open_clip and training keep it) gives SD 2.x's encoder through `longclip "
            "convert SRC OUT --sd2` (use OUT)"
        )
    elif layers < expected:
        fix = (
            "it has lost layers: --sd2 on an encoder that was already SD 2.x's (`longclip stretch <sd2> OUT "
            "--subfolder text_encoder --sd2`) removes a second one; make it again without --sd2"
        )
    else:
        fix = (
            "use a Long-CLIP made from this pipeline's own encoder: `longclip stretch PIPELINE OUT --subfolder "
            "text_encoder`"
        )
    raise ValueError(
        f"{long_encoder}: its text encoder has {layers} layers but the one of {pipeline} has {expected}, and the "
        f"pipeline reads a layer counted from the end (another layer's states at another depth); {fix}."
    )


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


def check_out(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, before any model loads, an `out` that `save_image` could not write: no image suffix, a folder, a
    path under a file, or an existing file without `overwrite`."""
    image_format(out)
    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(f"{out}: is a folder; --out names the image file to write, e.g. {path / 'image.png'}.")
    refuse_file_above(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite to replace it.")


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
    with _bounded_prompt_warnings(pipe):
        return pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            width=width,
            height=height,
            **extra,
        ).images[0]


def windows_limit(pipe: DiffusionPipeline) -> int | None:
    """How many CLIP-L windows a Long-CLIP pipeline reads: Flux the first (its pooled vector), the others up to
    their `max_prompt_windows`."""
    return pipe.family.window_limit or pipe.config.max_prompt_windows or None


def long_read(pipe: DiffusionPipeline, prompt: str) -> LongRead:
    """What `pipe` (a Long-CLIP pipeline) reads of `prompt` with CLIP-L."""
    return windows_read(pipe.tokenizer, prompt, pipe.config.prompt_weighting, windows_limit(pipe))


@dataclass
class T5Reading:
    """SD 3's or Flux's T5 as a pipeline reads the prompt: its tokenizer and `max_sequence_length`."""

    tokenizer: PreTrainedTokenizerBase
    max_sequence_length: int

    @classmethod
    def of(cls, pair: PipelinePair) -> T5Reading | None:
        """The pair's T5 (shared by both pipelines) and the `max_sequence_length` they read by default; None for
        families without T5."""
        t5 = pair.family.t5
        return None if t5 is None else cls(getattr(pair.long, t5.tokenizer), t5.default_length)

    def read(self, prompt: str, weighting: bool = True) -> tuple[int, int]:
        """The prompt's T5 tokens and how many T5 reads: with `weighting` as `encode_t5_prompts` reads it (the
        parsed prompt), without it as the stock pipelines (the raw text); the first `max_sequence_length - 1`,
        then `</s>`."""
        tokens = sum(len(ids) for ids, _ in tokenize_weighted(prompt, self.tokenizer, weighting))
        return tokens, min(tokens, self.max_sequence_length - 1)


def compare(pair: PipelinePair, prompt: str, negative_prompt: str | None = None, **kwargs) -> Image.Image:
    """vanilla CLIP | Long-CLIP on the same seed, captioned with what each one's CLIP-L read of the prompt (each
    counted with its own tokenizer), and for SD 3 and Flux what T5 read in each."""
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
    t5 = T5Reading.of(pair)
    if t5 is not None:
        for index, weighting in enumerate((False, pair.long.config.prompt_weighting)):
            tokens, reads = t5.read(prompt, weighting)
            captions[index] += f"; T5: reads {f'all {tokens}' if reads == tokens else f'{reads} of {tokens}'} tokens"
    return captioned_grid(images, captions)


def save_image(image: Image.Image, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write atomically (complete or not at all, with the umask's permissions) in the format `out`'s suffix names;
    an existing `out` is refused unless `overwrite`."""
    out_format = image_format(out)
    return atomic_write(out, lambda handle: image.save(handle, format=out_format), overwrite=overwrite)
