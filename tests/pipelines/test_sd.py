"""LongCLIPStableDiffusionPipeline on the tiny SD 1.5 components: generations, equality with stock, features."""

import numpy as np
import pytest
import torch
from helpers.pipelines import HEAD, PAST_248, TAIL_A, TAIL_B, generate

from longclip_diffusers.pipelines import LongCLIPStableDiffusionPipeline
from longclip_diffusers.tiny import tiny_clip_tokenizer


@pytest.fixture
def stock(stock_pipeline):
    return stock_pipeline("sd15")


@pytest.fixture
def pipe(long_pipeline):
    return long_pipeline("sd15")


def encode(pipe, prompt, negative="blurry", **kwargs):
    return pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative, **kwargs)


def test_generates_an_image_from_a_long_prompt(pipe):
    images = generate(pipe, HEAD + TAIL_A, negative_prompt="blurry, low quality")
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_the_tail_past_77_and_past_248_changes_conditioning_and_image(pipe):
    a, _ = encode(pipe, HEAD + TAIL_A)
    b, _ = encode(pipe, HEAD + TAIL_B)
    assert a.shape == (1, 248, 32)
    start = len(pipe.tokenizer(HEAD).input_ids) - 1
    assert start >= 77
    assert torch.equal(a[:, :start], b[:, :start]) and not torch.allclose(a[:, start:], b[:, start:])
    assert np.abs(generate(pipe, HEAD + TAIL_A) - generate(pipe, HEAD + TAIL_B)).max() > 1e-3

    c, negative = encode(pipe, HEAD + PAST_248 + TAIL_A)
    d, _ = encode(pipe, HEAD + PAST_248 + TAIL_B)
    assert c.shape == negative.shape == (1, 2 * 248, 32)  # the negative is padded to the same windows
    assert not torch.allclose(c[:, 248:], d[:, 248:])
    assert np.abs(generate(pipe, HEAD + PAST_248 + TAIL_A) - generate(pipe, HEAD + PAST_248 + TAIL_B)).max() > 1e-3


def test_clip_skip_works_on_transformers5_where_the_stock_pipeline_breaks(pipe, stock, long_parts):
    text_encoder, tokenizer = long_parts("sd15")
    ids = tokenizer("a lighthouse at dusk", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        states = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = text_encoder.final_layer_norm(states)
    actual, _ = encode(pipe, "a lighthouse at dusk", clip_skip=1)
    assert torch.equal(actual, expected)
    if not hasattr(stock.text_encoder, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        with pytest.raises(AttributeError, match="text_model"):
            encode(stock, "a lighthouse at dusk", clip_skip=1)


def test_batches_images_per_prompt_and_given_embeds(pipe):
    prompts = [HEAD + TAIL_A, "a red boat"]
    embeds, negative = pipe.encode_prompt(prompts, "cpu", 2, True, negative_prompt="blurry")
    assert embeds.shape == (4, 248, 32)
    assert torch.equal(embeds[0], embeds[1]) and torch.equal(embeds[2], embeds[3])
    from_text = generate(pipe, prompts, negative_prompt="blurry")
    from_embeds = generate(pipe, None, prompt_embeds=embeds[::2], negative_prompt_embeds=negative[::2])
    assert np.array_equal(from_text, from_embeds)
    given = pipe.encode_prompt(None, "cpu", 1, True, prompt_embeds=embeds[::2], negative_prompt="blurry")
    assert torch.equal(given[1], negative[::2])  # the negative is encoded to the given embeds' length


def test_prompt_weighting_can_be_switched_off(pipe):
    weighted, _ = encode(pipe, "a (red:1.4) boat")
    plain, _ = encode(pipe, "a red boat")
    off = LongCLIPStableDiffusionPipeline.from_pipe(pipe, prompt_weighting=False)
    literal, _ = encode(off, "a (red:1.4) boat")
    assert not torch.equal(weighted, plain)
    assert not torch.allclose(literal, plain)  # the brackets are read as text
    assert torch.equal(encode(off, "a red boat")[0], plain)


def test_textual_inversion_tokens(pipe, tmp_path):
    ours = LongCLIPStableDiffusionPipeline.from_pipe(pipe)
    embedding = torch.randn(2, 32)
    torch.save({"<lighthouse-style>": embedding}, tmp_path / "embedding.bin")
    ours.load_textual_inversion(str(tmp_path / "embedding.bin"), token="<lighthouse-style>")
    try:
        with_token, _ = encode(ours, "a cliff in <lighthouse-style>")
        without, _ = encode(ours, "a cliff in")
        assert not torch.allclose(with_token[:, 4:6], without[:, 4:6])
    finally:
        ours.unload_textual_inversion()


def test_callbacks_run_every_step(pipe):
    steps = []
    generate(pipe, "a lighthouse", callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    assert steps == list(range(len(pipe.scheduler.timesteps))) and len(steps) >= 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": 42}, (TypeError, ValueError), "prompt"),
        ({"prompt": ["a", 3]}, TypeError, "list of int, str"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, ValueError, "has 3 prompts but `prompt` has 2"),
    ],
)
def test_bad_input_is_refused_before_any_compute(pipe, kwargs, error, message, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(error, match=message):
        pipe(num_inference_steps=1, output_type="np", **kwargs)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a (cat:20) on a mat", r"\(cat:20\): weight 20 is outside the range 0 to 10"),
        ("a ((cat:4):4)", "'cat' gets weight 16 from nested groups"),
        ("a (cat:-1)", r"\(cat:-1\): weight -1 is outside the range 0 to 10"),
    ],
)
def test_the_pipeline_and_the_comfyui_node_refuse_the_same_weights(pipe, monkeypatch, prompt, message):
    from longclip_diffusers.comfyui import LongCLIP, LongCLIPTextEncode  # outside ComfyUI: runs on the CPU

    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(ValueError, match=message):
        pipe(prompt, negative_prompt="blurry", num_inference_steps=1, output_type="np")
    with pytest.raises(ValueError, match=message):
        pipe("a lighthouse", negative_prompt=prompt, num_inference_steps=1, output_type="np")
    with pytest.raises(ValueError, match=message):
        LongCLIPTextEncode().encode(long_clip=LongCLIP(pipe.text_encoder, pipe.tokenizer), text=prompt)


def test_a_tokenizer_that_does_not_fit_the_encoder_is_refused(pipe, stock):
    with pytest.raises(ValueError, match="tokenizer reads 77 tokens but the text encoder has 248 positions"):
        LongCLIPStableDiffusionPipeline.from_pipe(
            stock, text_encoder=pipe.text_encoder, tokenizer=tiny_clip_tokenizer()
        )


def test_a_stock_pipeline_with_a_long_clip_tokenizer_warns_once_that_weighting_is_read_as_text(
    stock, pipe, caplog, monkeypatch
):
    import logging

    from diffusers import StableDiffusionPipeline

    import longclip_diffusers.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "_WARNED", set())
    plain = StableDiffusionPipeline.from_pipe(stock, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    with caplog.at_level(logging.WARNING, logger="longclip_diffusers.tokenizer"):
        plain.encode_prompt("a red boat", "cpu", 1, False)
        assert "weighting syntax" not in caplog.text
        plain.encode_prompt("a (red:1.3) boat", "cpu", 1, False)
        plain.encode_prompt("a red BREAK boat", "cpu", 1, False)
    assert caplog.text.count("StableDiffusionPipeline reads weighting syntax and BREAK as plain text") == 1
    assert "use LongCLIPStableDiffusionPipeline" in caplog.text
