"""Long-CLIP pipelines for diffusers: SD 1.x/2.x, SDXL, SD 3/3.5 and Flux.1 with prompts far past 77 tokens.

Each pipeline lives in its own folder as `pipeline.py`, so it also loads as a diffusers custom pipeline:
`DiffusionPipeline.from_pretrained(repo, custom_pipeline=str(SD_PIPELINE_DIR), ...)`. A folder written by their
`save_pretrained` holds a copy of that file and loads back with plain diffusers:
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
"""

from pathlib import Path

from .longclip_flux.pipeline import LongCLIPFluxPipeline
from .longclip_sd.pipeline import LongCLIPStableDiffusionPipeline
from .longclip_sd3.pipeline import LongCLIPStableDiffusion3Pipeline
from .longclip_sdxl.pipeline import LongCLIPStableDiffusionXLPipeline

SD_PIPELINE_DIR = Path(__file__).parent / "longclip_sd"
SDXL_PIPELINE_DIR = Path(__file__).parent / "longclip_sdxl"
SD3_PIPELINE_DIR = Path(__file__).parent / "longclip_sd3"
FLUX_PIPELINE_DIR = Path(__file__).parent / "longclip_flux"

__all__ = [
    "FLUX_PIPELINE_DIR",
    "SD3_PIPELINE_DIR",
    "SDXL_PIPELINE_DIR",
    "SD_PIPELINE_DIR",
    "LongCLIPFluxPipeline",
    "LongCLIPStableDiffusion3Pipeline",
    "LongCLIPStableDiffusionPipeline",
    "LongCLIPStableDiffusionXLPipeline",
]
