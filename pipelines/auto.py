"""Long-CLIP classes in diffusers' AutoPipeline tables, so `AutoPipelineForText2Image` / `ForImage2Image` /
`ForInpainting` `.from_pipe` map a Long-CLIP pipeline to a Long-CLIP pipeline (and a stock one to a stock one), and
their `.from_pretrained` load a folder saved by a Long-CLIP pipeline as the Long-CLIP class of the task.

diffusers finds the task class of a pipeline by the model name its class is listed under; each covered stock entry
`name -> X` gets a twin `longclip-name -> LongCLIPX` in the same table. A saved Long-CLIP folder names its class as
`[module, class]` (diffusers' form for custom code, see `saving.py`), which the AutoPipelines cannot look up: they
read it as the class's name.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from longclip_diffusers.families import family_running

from .saving import name_saved_class

with warnings.catch_warnings():
    # diffusers' AutoPipeline tables import every pipeline, Kolors' text encoder among them, which calls
    # `torch.jit.script` at import: torch 2.10+ warns about that on every `longclip` command. Not ours to fix.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from diffusers.pipelines import auto_pipeline

PREFIX = "longclip-"
AUTO_PIPELINES = (
    auto_pipeline.AutoPipelineForText2Image,
    auto_pipeline.AutoPipelineForImage2Image,
    auto_pipeline.AutoPipelineForInpainting,
)
TABLES = (
    auto_pipeline.AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
    auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING,
    auto_pipeline.AUTO_TEXT2VIDEO_PIPELINES_MAPPING,
    auto_pipeline.AUTO_VIDEO2VIDEO_PIPELINES_MAPPING,
)


def register_auto_pipelines(long_clip_class: Callable[[type], type]) -> None:
    """Add `longclip-<model> -> long_clip_class(X)` beside each `<model> -> X` of a covered class X."""
    for table in TABLES:
        for name, stock in list(table.items()):
            if not name.startswith(PREFIX) and family_running(stock.__name__) is not None:
                table[PREFIX + name] = long_clip_class(stock)
    for auto_class in AUTO_PIPELINES:
        if not hasattr(auto_class.load_config, "reads_long_clip_folders"):
            auto_class.load_config = classmethod(_reading_long_clip_folders(auto_class.load_config.__func__))


def _reading_long_clip_folders(load_config: Callable) -> Callable:
    """An AutoPipeline's `load_config` that gives a saved Long-CLIP pipeline's `_class_name` as the class's name."""

    @functools.wraps(load_config)
    def read(cls, *args, **kwargs):
        return name_saved_class(load_config(cls, *args, **kwargs), lambda name: name in _long_clip_names())

    read.reads_long_clip_folders = True
    return read


def _long_clip_names() -> set[str]:
    return {pipeline.__name__ for table in TABLES for name, pipeline in table.items() if name.startswith(PREFIX)}
