"""Long-CLIP pipelines for diffusers: SD 1.x/2.x, SDXL, SD 3/3.5 and Flux.1 with prompts far past 77 tokens.

`LongCLIP<X>` for every covered diffusers pipeline class `X` (text-to-image, img2img, inpaint, ControlNet,
AnimateDiff, ...): a subclass of `X` that differs only in prompt encoding. `with_long_prompts(pipe)` turns a stock
pipeline into its counterpart, sharing its components.

The text-to-image pipelines each live in their own folder as `pipeline.py`, so they also load as diffusers custom
pipelines: `DiffusionPipeline.from_pretrained(repo, custom_pipeline=str(SD_PIPELINE_DIR), ...)`. A folder written by
any Long-CLIP pipeline's `save_pretrained` holds a copy of its module and loads back with plain diffusers:
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
"""

from pathlib import Path

from diffusers import DiffusionPipeline

from longclip_diffusers.families import FAMILIES

from . import variants
from .auto import register_auto_pipelines
from .longclip_flux.pipeline import LongCLIPFluxPipeline
from .longclip_sd.pipeline import LongCLIPStableDiffusionPipeline
from .longclip_sd3.pipeline import LongCLIPStableDiffusion3Pipeline
from .longclip_sdxl.pipeline import LongCLIPStableDiffusionXLPipeline

SD_PIPELINE_DIR = Path(__file__).parent / "longclip_sd"
SDXL_PIPELINE_DIR = Path(__file__).parent / "longclip_sdxl"
SD3_PIPELINE_DIR = Path(__file__).parent / "longclip_sd3"
FLUX_PIPELINE_DIR = Path(__file__).parent / "longclip_flux"

TEXT_TO_IMAGE = {
    cls.family.stock_pipeline: cls
    for cls in (
        LongCLIPStableDiffusionPipeline,
        LongCLIPStableDiffusionXLPipeline,
        LongCLIPStableDiffusion3Pipeline,
        LongCLIPFluxPipeline,
    )
}


def covered_classes() -> list[str]:
    """The names of every diffusers pipeline class with a Long-CLIP counterpart."""
    return [*TEXT_TO_IMAGE, *variants.variant_classes()]


def long_clip_class(stock: type) -> type:
    """The Long-CLIP counterpart of a diffusers pipeline class (itself when it is one already)."""
    stock = variants.stock_of(stock)
    return TEXT_TO_IMAGE.get(stock.__name__) or variants.counterpart(stock)


def with_long_prompts(pipe: DiffusionPipeline, **kwargs) -> DiffusionPipeline:
    """The Long-CLIP counterpart of `pipe` (e.g. `LongCLIPStableDiffusionXLImg2ImgPipeline` for an SDXL img2img
    pipeline), sharing its components: no copy, no reload. `kwargs` replace components (a Long-CLIP `text_encoder`
    and `tokenizer`) or set the long-prompt settings (`long_prompt_strategy`, `prompt_weighting`,
    `max_prompt_windows`)."""
    return long_clip_class(type(pipe)).from_pipe(pipe, **kwargs)


def __getattr__(name: str) -> type:
    return getattr(variants, name)


register_auto_pipelines(long_clip_class)

__all__ = [
    "FAMILIES",
    "FLUX_PIPELINE_DIR",
    "SD3_PIPELINE_DIR",
    "SDXL_PIPELINE_DIR",
    "SD_PIPELINE_DIR",
    "LongCLIPFluxPipeline",
    "LongCLIPStableDiffusion3Pipeline",
    "LongCLIPStableDiffusionPipeline",
    "LongCLIPStableDiffusionXLPipeline",
    "covered_classes",
    "long_clip_class",
    "with_long_prompts",
]
