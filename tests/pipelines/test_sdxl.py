"""LongCLIPStableDiffusionXLPipeline on the tiny SDXL components: both bigG strategies, equality with stock."""

import numpy as np
import pytest
import torch
from helpers.pipelines import HEAD, PAST_248, TAIL_A, TAIL_B, generate

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer, convert
from longclip_diffusers.pipelines import LongCLIPStableDiffusionXLPipeline


@pytest.fixture
def stock(stock_pipeline):
    return stock_pipeline("sdxl")


@pytest.fixture
def pipe(long_pipeline):
    return long_pipeline("sdxl")


def encode(pipe, prompt, negative="blurry", **kwargs):
    return pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative, **kwargs)


@pytest.mark.parametrize("strategy", ["chunk", "stretch"])
def test_the_tail_changes_both_halves_and_the_image(pipe, strategy):
    ours = LongCLIPStableDiffusionXLPipeline.from_pipe(pipe, long_prompt_strategy=strategy)
    a, negative, pooled_a, _ = encode(ours, HEAD + TAIL_A)
    b, _, pooled_b, _ = encode(ours, HEAD + TAIL_B)
    assert a.shape == negative.shape == (1, 248, 64) and pooled_a.shape == (1, 32)
    start = len(ours.tokenizer(HEAD).input_ids) - 1
    assert start >= 77
    for half in (slice(0, 32), slice(32, 64)):  # CLIP-L, then bigG
        assert torch.equal(a[:, :start, half], b[:, :start, half])
        assert not torch.allclose(a[:, start:, half], b[:, start:, half])
    assert torch.equal(pooled_a, pooled_b) == (strategy == "chunk")  # stretch: the pooled vector sees the tail
    assert np.abs(generate(ours, HEAD + TAIL_A) - generate(ours, HEAD + TAIL_B)).max() > 1e-3

    c, negative, _, _ = encode(ours, HEAD + PAST_248 + TAIL_A)
    d, _, _, _ = encode(ours, HEAD + PAST_248 + TAIL_B)
    assert c.shape == negative.shape == (1, 2 * 248, 64)
    for half in (slice(0, 32), slice(32, 64)):
        assert not torch.allclose(c[:, 248:, half], d[:, 248:, half])
    assert np.abs(generate(ours, HEAD + PAST_248 + TAIL_A) - generate(ours, HEAD + PAST_248 + TAIL_B)).max() > 1e-3


def test_stretch_leaves_the_shared_bigg_untouched(pipe, stock):
    ours = LongCLIPStableDiffusionXLPipeline.from_pipe(pipe, long_prompt_strategy="stretch")
    encode(ours, HEAD + TAIL_A)
    assert ours.text_encoder_2 is stock.text_encoder_2
    assert stock.text_encoder_2.config.max_position_embeddings == 77
    assert stock.text_encoder_2.text_model.embeddings.position_embedding.weight.shape[0] == 77


def test_a_user_supplied_long_bigg_is_used_as_it_is(pipe, tiny_components, tmp_path):
    convert(tiny_components / "sdxl", tmp_path / "long_g", subfolder="text_encoder_2", stretch=(20, 4), pad_token="!")
    long_g = LongCLIPTextEncoder.from_pretrained(tmp_path / "long_g")
    ours = LongCLIPStableDiffusionXLPipeline.from_pipe(
        pipe, text_encoder_2=long_g, tokenizer_2=LongCLIPTokenizer.from_pretrained(tmp_path / "long_g")
    )
    on_the_fly = LongCLIPStableDiffusionXLPipeline.from_pipe(pipe, long_prompt_strategy="stretch")
    for expected, actual in zip(encode(on_the_fly, HEAD + TAIL_A), encode(ours, HEAD + TAIL_A), strict=True):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_clip_skip_reads_one_layer_earlier(pipe):
    with torch.no_grad():
        ids = pipe.tokenizer("a lighthouse", padding="max_length", return_tensors="pt").input_ids
        expected = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-3]
    embeds, _, _, _ = encode(pipe, "a lighthouse", clip_skip=1)
    assert torch.equal(embeds[0, :, :32], expected[0])


def test_weighting_applies_to_both_halves(pipe):
    plain, _, pooled, _ = encode(pipe, "a red boat")
    weighted, _, weighted_pooled, _ = encode(pipe, "a (red:1.5) boat")
    same, _, _, _ = encode(pipe, "a (red:1.0) boat")
    assert torch.equal(same, plain)
    assert torch.equal(pooled, weighted_pooled)  # the pooled vector is not weighted
    for half in (slice(0, 32), slice(32, 64)):
        ratio = weighted[0, :, half].norm(dim=-1) / plain[0, :, half].norm(dim=-1)
        assert ratio.argmax() == 2 and ratio[2] > 1.3  # BOS, "a", "red"


def test_unknown_strategy_is_refused(stock):
    with pytest.raises(ValueError, match="long_prompt_strategy='interpolate'; choose one of chunk, stretch"):
        LongCLIPStableDiffusionXLPipeline.from_pipe(stock, long_prompt_strategy="interpolate")


def test_bad_prompts_are_refused_before_any_compute(pipe, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(TypeError, match="`prompt_2` must be a string or a list of strings"):
        pipe("a lighthouse", prompt_2=[1], num_inference_steps=1)
    with pytest.raises(ValueError, match="`negative_prompt` has 1 prompts but `prompt` has 2"):
        pipe(["a", "b"], negative_prompt=["x"], num_inference_steps=1)
