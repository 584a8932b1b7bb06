"""Long-CLIP pipelines for diffusers: SD 1.x/2.x and SDXL with prompts far past 77 tokens.

Each pipeline lives in its own folder as `pipeline.py`, so it also loads as a diffusers custom pipeline:
`DiffusionPipeline.from_pretrained(repo, custom_pipeline=str(SD_PIPELINE_DIR), ...)`.
"""

from pathlib import Path

from .longclip_sd.pipeline import LongCLIPStableDiffusionPipeline
from .longclip_sdxl.pipeline import LongCLIPStableDiffusionXLPipeline

SD_PIPELINE_DIR = Path(__file__).parent / "longclip_sd"
SDXL_PIPELINE_DIR = Path(__file__).parent / "longclip_sdxl"

__all__ = [
    "SDXL_PIPELINE_DIR",
    "SD_PIPELINE_DIR",
    "LongCLIPStableDiffusionPipeline",
    "LongCLIPStableDiffusionXLPipeline",
]
