"""`AutoPipelineForText2Image` / `ForImage2Image` / `ForInpainting` `.from_pretrained` on folders saved by the
Long-CLIP text-to-image pipelines (local folders, no Hub): the Long-CLIP class of each task, its settings kept, its
conditioning the saved pipeline's; folders of stock pipelines keep loading as stock classes."""

import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    StableDiffusionXLImg2ImgPipeline,
)
from helpers.pipelines import CFG_ENCODE_KWARGS, HEAD, MIDDLE, TAIL_A

from longclip_diffusers.pipelines import with_long_prompts
from longclip_diffusers.pipelines.variants import is_long_clip

AUTO_PIPELINES = (AutoPipelineForText2Image, AutoPipelineForImage2Image, AutoPipelineForInpainting)
PROMPT = HEAD + MIDDLE + TAIL_A  # 200 tokens
# per family: a long-prompt setting besides the defaults (saved, and read back), and encode_prompt's arguments
CASES = {
    "sd15": ({"max_prompt_windows": 2}, CFG_ENCODE_KWARGS),
    "sdxl": ({"long_prompt_strategy": "stretch"}, CFG_ENCODE_KWARGS),
    "sd3": ({"long_prompt_strategy": "stretch"}, CFG_ENCODE_KWARGS),
    "flux": ({"prompt_weighting": False}, {}),
}


@pytest.mark.parametrize("family", list(CASES))
def test_auto_pipelines_load_a_saved_long_clip_folder_as_the_long_clip_class_of_their_task(
    stock_pipeline, long_pipeline, family, tmp_path
):
    settings, encode = CASES[family]
    base = long_pipeline(family)
    saved = type(base).from_pipe(base, **settings)
    saved.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = saved.encode_prompt(prompt=PROMPT, device="cpu", num_images_per_prompt=1, **encode)

    for auto in AUTO_PIPELINES:
        stock_class = type(auto.from_pipe(stock_pipeline(family)))  # diffusers' class for the task
        loaded = auto.from_pretrained(tmp_path)
        assert type(loaded).__name__ == "LongCLIP" + stock_class.__name__, auto.__name__
        assert all(loaded.config[name] == value for name, value in settings.items())
        with torch.no_grad():
            actual = loaded.encode_prompt(prompt=PROMPT, device="cpu", num_images_per_prompt=1, **encode)
        assert len(actual) == len(expected)
        assert all(torch.equal(e, a) for e, a in zip(expected, actual, strict=True)), auto.__name__


def test_auto_pipelines_load_a_stock_folder_as_stock_classes(tiny_components):
    for auto in AUTO_PIPELINES:
        loaded = auto.from_pretrained(tiny_components / "sd15")
        assert not is_long_clip(type(loaded)) and type(loaded).__module__.startswith("diffusers."), auto.__name__


def test_a_saved_long_clip_variant_folder_loads_as_the_long_clip_class_of_every_task(long_pipeline, tmp_path):
    saved = with_long_prompts(StableDiffusionXLImg2ImgPipeline.from_pipe(long_pipeline("sdxl")))
    saved.save_pretrained(tmp_path)
    loaded = {
        "text2image": AutoPipelineForText2Image.from_pretrained(tmp_path),
        "inpaint": AutoPipelineForInpainting.from_pretrained(tmp_path),
        "image2image": AutoPipelineForImage2Image.from_pretrained(tmp_path),
    }
    assert {task: type(pipe).__name__ for task, pipe in loaded.items()} == {
        "text2image": "LongCLIPStableDiffusionXLPipeline",
        "inpaint": "LongCLIPStableDiffusionXLInpaintPipeline",
        "image2image": "LongCLIPStableDiffusionXLImg2ImgPipeline",
    }
