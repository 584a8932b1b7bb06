"""LongCLIPStableDiffusion3Pipeline on the tiny SD 3.5 components: CLIP windows, bigG strategies, T5, stock parity.

The stock pipeline's `encode_prompt` runs under `torch.no_grad()` inside `__call__`; T5's attention gives other
last bits with autograd on, so parity is checked as the pipelines call it, without grad.
"""

import logging

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from helpers.pipelines import HEAD, PAST_248, TAIL_A, TAIL_B, generate

from longclip_diffusers.pipelines import LongCLIPStableDiffusion3Pipeline
from longclip_diffusers.tiny import tiny_clip_tokenizer

CLIP_L, CLIP_G, PADDING = slice(0, 32), slice(32, 64), slice(64, 80)  # feature columns of the CLIP rows
T5_ROWS = 256  # max_sequence_length's default


@pytest.fixture
def stock(stock_pipeline):
    return stock_pipeline("sd3")


@pytest.fixture
def pipe(long_pipeline):
    return long_pipeline("sd3")


@torch.no_grad()
def encode(pipe, prompt, negative="blurry", **kwargs):
    return pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative, **kwargs)


@torch.no_grad()
def stock_t5(stock, prompt):
    return stock._get_t5_prompt_embeds(prompt, max_sequence_length=T5_ROWS, device="cpu")


def a1111_emphasis(states, weights):
    """A1111's "Original" emphasis (modules/sd_emphasis.py): scale each token's state, then restore the mean."""
    weighted = states * weights.unsqueeze(-1)
    return weighted * (states.mean() / weighted.mean())


def test_generates_an_image_from_a_long_prompt(pipe):
    images = generate(pipe, HEAD + PAST_248 + TAIL_A, negative_prompt="blurry, low quality")
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("strategy", ["chunk", "stretch"])
def test_the_tail_changes_clip_l_bigg_t5_and_the_image(pipe, strategy):
    ours = LongCLIPStableDiffusion3Pipeline.from_pipe(pipe, long_prompt_strategy=strategy)
    a, negative, pooled_a, _ = encode(ours, HEAD + TAIL_A)
    b, _, pooled_b, _ = encode(ours, HEAD + TAIL_B)
    assert a.shape == negative.shape == (1, 248 + T5_ROWS, 80) and pooled_a.shape == (1, 64)
    start = len(ours.tokenizer(HEAD).input_ids) - 1
    assert start >= 77
    for half in (CLIP_L, CLIP_G):  # aligned token for token: the same rows change in both
        assert torch.equal(a[:, :start, half], b[:, :start, half])
        assert not torch.allclose(a[:, start:248, half], b[:, start:248, half])
    assert not a[:, :248, PADDING].any()  # CLIP rows are zero-padded to T5's width
    assert not torch.allclose(a[:, 248:], b[:, 248:])  # T5 reads the whole prompt
    assert not torch.allclose(pooled_a[:, CLIP_L], pooled_b[:, CLIP_L])  # Long-CLIP-L's pooled vector sees the tail
    assert torch.equal(pooled_a[:, CLIP_G], pooled_b[:, CLIP_G]) == (strategy == "chunk")  # first chunk / window
    assert np.abs(generate(ours, HEAD + TAIL_A) - generate(ours, HEAD + TAIL_B)).max() > 1e-3

    c, negative, _, _ = encode(ours, HEAD + PAST_248 + TAIL_A)
    d, _, _, _ = encode(ours, HEAD + PAST_248 + TAIL_B)
    assert c.shape == negative.shape == (1, 2 * 248 + T5_ROWS, 80)  # the negative is padded to the same windows
    for half in (CLIP_L, CLIP_G):
        assert not torch.allclose(c[:, 248:496, half], d[:, 248:496, half])


def test_t5_reads_a_long_prompt_as_the_stock_pipeline_does(pipe, stock, caplog):
    prompt = HEAD + PAST_248 + TAIL_A  # ~300 T5 tokens: both cut it at max_sequence_length
    with caplog.at_level(logging.WARNING, logger="longclip_diffusers.prompts"):
        embeds, _, _, _ = encode(pipe, prompt)
    assert torch.equal(embeds[:, -T5_ROWS:], stock_t5(stock, prompt))
    assert "T5 does not see" in caplog.text and "fishing boat with patched sails" in caplog.text
    longer, _, _, _ = encode(pipe, prompt, max_sequence_length=512)
    assert longer.shape == (1, 2 * 248 + 512, 80)
    assert not torch.allclose(longer[:, -512:-256], embeds[:, -256:])


def test_weighting_scales_clip_and_t5_states_but_not_the_pooled_vectors(pipe, stock):
    plain, _, pooled, _ = encode(pipe, "a red boat")
    weighted, _, weighted_pooled, _ = encode(pipe, "a (red:1.5) boat")
    same, _, same_pooled, _ = encode(pipe, "a (red:1.0) boat")
    assert torch.equal(same, plain) and torch.equal(same_pooled, pooled)  # no bracket reaches any encoder
    assert torch.equal(weighted_pooled, pooled)
    for half in (CLIP_L, CLIP_G):
        ratio = weighted[0, :248, half].norm(dim=-1) / plain[0, :248, half].norm(dim=-1)
        assert ratio.argmax() == 2 and ratio[2] > 1.3  # BOS, "a", "red"

    t5_ids = stock.tokenizer_3("a red boat").input_ids
    red = [i for i, token in enumerate(stock.tokenizer_3.convert_ids_to_tokens(t5_ids)) if "red" in token]
    weights = torch.ones(T5_ROWS)
    weights[red] = 1.5
    expected = a1111_emphasis(stock_t5(stock, "a red boat")[0], weights)
    torch.testing.assert_close(weighted[0, -T5_ROWS:], expected, rtol=1e-5, atol=1e-6)

    off = LongCLIPStableDiffusion3Pipeline.from_pipe(pipe, prompt_weighting=False)
    literal, _, _, _ = encode(off, "a (red:1.5) boat")
    assert not torch.allclose(literal[:, -T5_ROWS:], plain[:, -T5_ROWS:])  # read as text: "(", ":", "1.5", ")"


def test_break_starts_a_clip_window_and_only_separates_words_for_t5(pipe, stock):
    embeds, negative, pooled, _ = encode(pipe, "a lighthouse BREAK a red boat")
    assert embeds.shape == negative.shape == (1, 2 * 248 + T5_ROWS, 80)
    assert torch.equal(embeds[:, -T5_ROWS:], stock_t5(stock, "a lighthouse a red boat"))
    _, _, pooled_of_the_first_window, _ = encode(pipe, "a lighthouse")
    torch.testing.assert_close(pooled, pooled_of_the_first_window, rtol=0, atol=1e-6)  # batched with window 2


def test_prompt_2_and_prompt_3_feed_bigg_and_t5(pipe, stock):
    both, _, pooled, _ = encode(pipe, "a red boat", prompt_2="an oil painting", prompt_3="a lighthouse at dusk")
    plain, _, plain_pooled, _ = encode(pipe, "a red boat")
    oil, _, oil_pooled, _ = encode(pipe, "an oil painting")
    assert torch.equal(both[:, :248, CLIP_L], plain[:, :248, CLIP_L])
    assert torch.equal(both[:, :248, CLIP_G], oil[:, :248, CLIP_G])
    assert torch.equal(both[:, -T5_ROWS:], stock_t5(stock, "a lighthouse at dusk"))
    assert torch.equal(pooled[:, CLIP_L], plain_pooled[:, CLIP_L]) and torch.equal(
        pooled[:, CLIP_G], oil_pooled[:, CLIP_G]
    )


def test_clip_skip_reads_one_layer_earlier(pipe):
    with torch.no_grad():
        ids = pipe.tokenizer("a lighthouse", padding="max_length", return_tensors="pt").input_ids
        expected = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-3]
    embeds, negative, _, _ = encode(pipe, "a lighthouse", clip_skip=1)
    assert torch.equal(embeds[0, :248, CLIP_L], expected[0])
    assert not torch.equal(negative, encode(pipe, "a lighthouse")[1])  # the negative reads the same layer


def test_images_per_prompt_and_given_embeds(pipe):
    prompts = [HEAD + PAST_248 + TAIL_A, "a red boat"]
    embeds, negative, pooled, negative_pooled = encode(pipe, prompts, num_images_per_prompt=2)
    assert embeds.shape == (4, 2 * 248 + T5_ROWS, 80) and pooled.shape == (4, 64)
    assert torch.equal(embeds[0], embeds[1]) and torch.equal(pooled[2], pooled[3])
    from_text = generate(pipe, prompts, negative_prompt="blurry")
    given = {"prompt_embeds": embeds[::2], "pooled_prompt_embeds": pooled[::2]}
    from_embeds = generate(
        pipe, None, **given, negative_prompt_embeds=negative[::2], negative_pooled_prompt_embeds=negative_pooled[::2]
    )
    assert np.array_equal(from_text, from_embeds)
    # the negative prompt is encoded to the given embeddings' two windows
    _, encoded_negative, _, encoded_negative_pooled = encode(pipe, None, **given)
    assert torch.equal(encoded_negative, negative[::2]) and torch.equal(encoded_negative_pooled, negative_pooled[::2])
    assert generate(pipe, None, **given, negative_prompt="blurry", num_images_per_prompt=2).shape == (4, 64, 64, 3)


def test_the_stock_pipeline_cannot_read_long_clip_l(stock, pipe):
    """Why the subclass is needed: the stock pipeline pads bigG's tokens to CLIP-L's 248 positions too."""
    plain = StableDiffusion3Pipeline.from_pipe(stock, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    with pytest.raises((ValueError, IndexError)):
        plain.encode_prompt("a lighthouse", None, None, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": ["a", "b"], "prompt_2": ["x"]}, ValueError, "`prompt_2` has 1 prompts but `prompt` has 2"),
        (
            {"prompt": ["a", "b"], "prompt_3": ["x", "y", "z"]},
            ValueError,
            "`prompt_3` has 3 prompts but `prompt` has 2",
        ),
        ({"prompt": "a", "prompt_2": [1]}, TypeError, "`prompt_2` must be a string or a list of strings"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, ValueError, "`negative_prompt` has 1 prompts but"),
        ({"prompt": ["a", "b"], "negative_prompt_3": ["x"]}, ValueError, "`negative_prompt_3` has 1 prompts but"),
        ({"prompt": "a (cat:20)"}, ValueError, r"\(cat:20\): weight 20 is outside the range 0 to 10"),
    ],
)
def test_bad_input_is_refused_before_any_compute(pipe, kwargs, error, message, monkeypatch):
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: pytest.fail("the transformer ran"))
    for encoder in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        monkeypatch.setattr(encoder, "forward", lambda *a, **k: pytest.fail("a text encoder ran"))
    with pytest.raises(error, match=message):
        pipe(num_inference_steps=1, output_type="np", **kwargs)


def test_given_embeds_without_pooled_vectors_are_refused(pipe):
    embeds, negative, pooled, _ = encode(pipe, "a lighthouse")
    with pytest.raises(ValueError, match="`prompt_embeds` is given without `pooled_prompt_embeds`"):
        pipe.encode_prompt(None, prompt_embeds=embeds, device="cpu")
    with pytest.raises(ValueError, match="`negative_prompt_embeds` is given without `negative_pooled_prompt_embeds`"):
        pipe.encode_prompt("a", prompt_embeds=None, negative_prompt_embeds=negative, device="cpu")


def test_unfitting_text_encoders_are_refused(pipe, stock):
    with pytest.raises(ValueError, match="tokenizer reads 77 tokens but the text encoder has 248 positions"):
        LongCLIPStableDiffusion3Pipeline.from_pipe(
            stock, text_encoder=pipe.text_encoder, tokenizer=tiny_clip_tokenizer()
        )
    from transformers import CLIPTextModel

    no_projection = CLIPTextModel(stock.text_encoder.config)
    with pytest.raises(ValueError, match="text_encoder is a CLIPTextModel without a text projection.*with_projection"):
        LongCLIPStableDiffusion3Pipeline.from_pipe(stock, text_encoder=no_projection)
    with pytest.raises(ValueError, match="long_prompt_strategy='interpolate'; choose one of chunk, stretch"):
        LongCLIPStableDiffusion3Pipeline.from_pipe(stock, long_prompt_strategy="interpolate")
