"""Long-CLIP classes in diffusers' AutoPipeline tables, so `AutoPipelineForText2Image` / `ForImage2Image` /
`ForInpainting` `.from_pipe` map a Long-CLIP pipeline to a Long-CLIP pipeline (and a stock one to a stock one).

diffusers finds the task class of a pipeline by the model name its class is listed under; each covered stock entry
`name -> X` gets a twin `longclip-name -> LongCLIPX` in the same table.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from longclip_diffusers.families import family_running

with warnings.catch_warnings():
    # diffusers' AutoPipeline tables import every pipeline, Kolors' text encoder among them, which calls
    # `torch.jit.script` at import: torch 2.10+ warns about that on every `longclip` command. Not ours to fix.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from diffusers.pipelines import auto_pipeline

PREFIX = "longclip-"
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
