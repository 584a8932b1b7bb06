"""compel's `CompelForSDXL` (the `bench` extra) beside the Long-CLIP SDXL pipeline: it cannot line up a 248-token
CLIP-L with the stock 77-token bigG, and reads exactly what the pipeline reads once bigG is long too."""

import compel  # the bench extra (in all)
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer, convert
from longclip_diffusers.pipelines import LongCLIPStableDiffusionXLPipeline


@pytest.fixture(scope="module")
def pipe(tiny_components, long_parts):
    text_encoder, tokenizer = long_parts("sdxl")
    stock = StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl")
    return LongCLIPStableDiffusionXLPipeline.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)


def test_compel_fails_with_the_stock_bigg_even_on_a_short_prompt(pipe):
    # compel pads each encoder's states to whole windows of its own length: 248 for Long-CLIP-L, 3 x 77 for bigG
    with pytest.raises(RuntimeError, match="Expected size 248 but got size 231"):
        compel.CompelForSDXL(pipe)("a lighthouse at dusk", negative_prompt="blurry")


@pytest.mark.parametrize("prompt", ["a lighthouse at dusk", "a lighthouse on a cliff at dusk, " * 20])
def test_compel_with_a_long_bigg_gives_the_pipelines_conditioning(pipe, tiny_components, tmp_path, prompt):
    long_bigg = convert(
        tiny_components / "sdxl", tmp_path / "long-bigg", subfolder="text_encoder_2", stretch=(20, 4), pad_token="!"
    )
    long = LongCLIPStableDiffusionXLPipeline.from_pipe(
        pipe,
        text_encoder_2=LongCLIPTextEncoder.from_pretrained(long_bigg),
        tokenizer_2=LongCLIPTokenizer.from_pretrained(long_bigg),
    )
    conditioning = compel.CompelForSDXL(long)(prompt, negative_prompt="blurry")
    with torch.no_grad():
        expected = long.encode_prompt(prompt, device="cpu", negative_prompt="blurry")
    actual = [
        conditioning.embeds,
        conditioning.negative_embeds,
        conditioning.pooled_embeds,
        conditioning.negative_pooled_embeds,
    ]
    assert actual[0].shape == (1, 248, 64)
    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))
