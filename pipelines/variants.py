# Long-CLIP counterparts of the diffusers pipeline classes of the five families (img2img, inpaint, ControlNet,
# AnimateDiff, PAG, LCM, T2I-Adapter, Fill, Control, Kontext, ...), built from the family table.
#
# A folder written by a counterpart's `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIP<X>` for every covered diffusers pipeline class `X`: a subclass of `X` whose only difference is prompt
encoding (the family's `encode_prompt` from `longclip_diffusers.pipelines.encoding`), built on first use.

Each takes `X`'s arguments plus the long-prompt settings of its family: `prompt_weighting` (all),
`max_prompt_windows` (all but Flux, which reads CLIP-L's first window) and `long_prompt_strategy` (SDXL, SD 3).
"""

from __future__ import annotations

import functools
import inspect
import typing

import diffusers

from longclip_diffusers.families import FAMILIES, Family, family_running
from longclip_diffusers.pipelines.encoding import (
    FluxPromptEncoding,
    LongPromptEncoding,
    StableDiffusion3PromptEncoding,
    StableDiffusionPromptEncoding,
    StableDiffusionXLPromptEncoding,
)
from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.pipelines.single_file import LongCLIPSingleFileMixin

ENCODINGS: dict[str, type[LongPromptEncoding]] = {
    "sd15": StableDiffusionPromptEncoding,
    "sdxl": StableDiffusionXLPromptEncoding,
    "sd3": StableDiffusion3PromptEncoding,
    "flux": FluxPromptEncoding,
}
PREFIX = "LongCLIP"


def variant_classes() -> dict[str, Family]:
    """Every diffusers pipeline class (by name) built here, and its family: the families' `variants` (their
    text-to-image classes have files of their own)."""
    return {name: family for family in FAMILIES.values() if family.key in ENCODINGS for name in family.variants}


def long_prompt_settings(family: Family) -> dict[str, object]:
    """The long-prompt settings a family's counterparts take, with their defaults."""
    settings: dict[str, object] = {}
    if family.big_g_strategies:
        settings["long_prompt_strategy"] = "chunk"
    settings["prompt_weighting"] = True
    if family.window_limit is None:
        settings["max_prompt_windows"] = None
    return settings


class VideoPromptNames:
    """AnimateDiff-SDXL calls `encode_prompt` with `num_videos_per_prompt` where the image pipelines say
    `num_images_per_prompt`."""

    def encode_prompt(self, *args, num_videos_per_prompt: int = 1, **kwargs):
        return super().encode_prompt(*args, num_images_per_prompt=num_videos_per_prompt, **kwargs)


@functools.cache
def counterpart(stock: type) -> type:
    """`LongCLIP<stock>`: `stock` with its family's long-prompt `encode_prompt`, its signature plus the family's
    long-prompt settings (keyword arguments, saved in its config)."""
    family = variant_classes().get(stock.__name__)
    if family is None:
        raise ValueError(unsupported(stock.__name__))
    settings = long_prompt_settings(family)

    def __init__(self, *args, **kwargs):
        chosen = {name: kwargs.pop(name, default) for name, default in settings.items()}
        stock.__init__(self, *args, **kwargs)
        self._register_long_prompt_config(**chosen)

    parameters = list(inspect.signature(stock.__init__).parameters.values())
    parameters += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in settings.items()]
    __init__.__signature__ = inspect.Signature(parameters)
    __init__.__annotations__ = {**_type_hints(stock.__init__), **{name: type(d) for name, d in settings.items()}}
    renames = "num_videos_per_prompt" in inspect.signature(stock.encode_prompt).parameters
    single_file = [LongCLIPSingleFileMixin] if family.single_file and hasattr(stock, "from_single_file") else []
    bases = (*single_file, SavesItsCode, *([VideoPromptNames] if renames else []), ENCODINGS[family.key], stock)
    namespace = {
        "__init__": __init__,
        "__module__": __name__,
        "__qualname__": PREFIX + stock.__name__,
        "__doc__": f"[`{stock.__name__}`] with Long-CLIP prompt encoding ({family.name}): prompts past 77 tokens in "
        f"windows, A1111 weighting and `BREAK`. Settings besides the stock ones: {', '.join(settings)}.",
        "code_file": "pipeline_longclip_variants",  # this module's name in a saved folder (see SavesItsCode)
    }
    return type(PREFIX + stock.__name__, bases, namespace)


def _type_hints(function) -> dict[str, object]:
    """The resolved annotations of `function` (diffusers reads a pipeline's component types from them)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve here: keep them as written, as diffusers falls back to
        return dict(function.__annotations__)


def unsupported(name: str) -> str:
    families = ", ".join(f"{family.name} ({family.stock_pipeline})" for family in FAMILIES.values() if family.variants)
    return (
        f"{name} has no Long-CLIP counterpart: Long-CLIP encodes the prompts of the diffusers pipelines of {families} "
        "and their img2img, inpaint, ControlNet, AnimateDiff, PAG, LCM, Fill, Control and Kontext variants (the "
        "README lists every class covered, and why the others are not)."
    )


def __getattr__(name: str) -> type:
    """`LongCLIP<X>` for a covered class `X`, built on first use (also when diffusers loads a saved copy)."""
    if name.startswith(PREFIX) and name[len(PREFIX) :] in variant_classes():
        return counterpart(getattr(diffusers, name[len(PREFIX) :]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_long_clip(pipeline_class: type) -> bool:
    return issubclass(pipeline_class, LongPromptEncoding)


def stock_of(pipeline_class: type) -> type:
    """The diffusers class a Long-CLIP class counts as (itself when it is not one)."""
    if not is_long_clip(pipeline_class):
        return pipeline_class
    return next(base for base in pipeline_class.__mro__[1:] if base.__module__.startswith("diffusers."))


def family_of_class(pipeline_class: type) -> Family | None:
    return family_running(stock_of(pipeline_class).__name__)
