"""LongCLIPFluxPipeline on the tiny Flux.1 components: a pooled vector of 248 tokens, T5 weighting, stock parity.

The stock pipeline's `encode_prompt` runs under `torch.no_grad()` inside `__call__`; T5's attention gives other
last bits with autograd on, so parity is checked as the pipelines call it, without grad.
"""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from helpers.pipelines import HEAD, MIDDLE, PAST_248, TAIL_A, TAIL_B, generate

from longclip_diffusers.pipelines import LongCLIPFluxPipeline
from longclip_diffusers.tiny import tiny_clip_tokenizer

T5_ROWS = 512  # max_sequence_length's default


@pytest.fixture
def stock(stock_pipeline):
    return stock_pipeline("flux")


@pytest.fixture
def pipe(long_pipeline):
    return long_pipeline("flux")


@torch.no_grad()
def encode(pipe, prompt, **kwargs):
    t5_states, pooled, _ = pipe.encode_prompt(prompt, device="cpu", **kwargs)
    return t5_states, pooled


@torch.no_grad()
def stock_t5(stock, prompt):
    return stock._get_t5_prompt_embeds(prompt, max_sequence_length=T5_ROWS, device="cpu")


def test_generates_an_image_from_a_long_prompt(pipe):
    images = generate(pipe, HEAD + PAST_248 + TAIL_A)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    with_negative = generate(pipe, HEAD + TAIL_A, negative_prompt="blurry, low quality", true_cfg_scale=2.0)
    assert np.isfinite(with_negative).all()


def test_the_pooled_vector_reads_a_word_past_185_tokens_and_t5_the_whole_prompt(pipe, stock):
    a_states, a_pooled = encode(pipe, HEAD + MIDDLE + TAIL_A)
    b_states, b_pooled = encode(pipe, HEAD + MIDDLE + TAIL_B)
    start = len(pipe.tokenizer(HEAD + MIDDLE).input_ids) - 1
    end = len(pipe.tokenizer(HEAD + MIDDLE + TAIL_A).input_ids)
    assert 185 <= start and end <= 248
    assert a_states.shape == (1, T5_ROWS, 80) and a_pooled.shape == (1, 32)
    assert not torch.allclose(a_pooled, b_pooled)
    assert not torch.allclose(a_states, b_states)
    # the stock 77-token CLIP-L never sees the tail
    assert torch.equal(encode(stock, HEAD + MIDDLE + TAIL_A)[1], encode(stock, HEAD + MIDDLE + TAIL_B)[1])
    assert np.abs(generate(pipe, HEAD + MIDDLE + TAIL_A) - generate(pipe, HEAD + MIDDLE + TAIL_B)).max() > 1e-3


def test_without_weighting_syntax_it_is_what_a_plain_flux_pipeline_with_long_clip_gives(pipe, stock):
    plain = FluxPipeline.from_pipe(stock, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    for prompt in ("a lighthouse at dusk", HEAD + MIDDLE + TAIL_A):
        assert all(torch.equal(e, a) for e, a in zip(encode(plain, prompt), encode(pipe, prompt), strict=True))
    states, _ = encode(pipe, HEAD + PAST_248 + TAIL_A)  # past CLIP's window, T5 reads on as the stock pipeline
    assert torch.equal(states, stock_t5(stock, HEAD + PAST_248 + TAIL_A))


def test_weights_scale_t5_states_and_leave_the_pooled_vector_unweighted(pipe, stock):
    plain_states, plain_pooled = encode(pipe, "a red boat")
    states, pooled = encode(pipe, "a (red:1.5) boat")
    same_states, same_pooled = encode(pipe, "a (red:1.0) boat")
    assert torch.equal(same_states, plain_states) and torch.equal(same_pooled, plain_pooled)  # no literal brackets
    assert torch.equal(pooled, plain_pooled)

    t5_ids = stock.tokenizer_2("a red boat").input_ids
    red = [i for i, token in enumerate(stock.tokenizer_2.convert_ids_to_tokens(t5_ids)) if "red" in token]
    weights = torch.ones(T5_ROWS)
    weights[red] = 1.5
    reference = stock_t5(stock, "a red boat")[0]  # A1111's "Original" emphasis on the stock states
    weighted = reference * weights.unsqueeze(-1)
    torch.testing.assert_close(states[0], weighted * (reference.mean() / weighted.mean()), rtol=1e-5, atol=1e-6)

    off = LongCLIPFluxPipeline.from_pipe(pipe, prompt_weighting=False)
    literal_states, literal_pooled = encode(off, "a (red:1.5) boat")
    assert not torch.allclose(literal_pooled, plain_pooled) and not torch.allclose(literal_states, plain_states)
    assert torch.equal(encode(off, "a red boat")[1], plain_pooled)


def test_break_ends_the_pooled_window_and_only_separates_words_for_t5(pipe, stock):
    states, pooled = encode(pipe, "a lighthouse BREAK a red boat")
    assert torch.equal(pooled, encode(pipe, "a lighthouse")[1])
    assert torch.equal(states, stock_t5(stock, "a lighthouse a red boat"))


def test_prompt_2_goes_to_t5_and_prompt_to_clip(pipe, stock):
    states, pooled = encode(pipe, "a red boat", prompt_2="an oil painting of a lighthouse")
    assert torch.equal(pooled, encode(pipe, "a red boat")[1])
    assert torch.equal(states, stock_t5(stock, "an oil painting of a lighthouse"))


def test_images_per_prompt_and_given_embeds(pipe):
    prompts = [HEAD + MIDDLE + TAIL_A, "a red boat"]
    states, pooled = encode(pipe, prompts, num_images_per_prompt=2)
    assert states.shape == (4, T5_ROWS, 80) and pooled.shape == (4, 32)
    assert torch.equal(states[0], states[1]) and torch.equal(pooled[2], pooled[3])
    from_text = generate(pipe, prompts)
    from_embeds = generate(pipe, None, prompt_embeds=states[::2], pooled_prompt_embeds=pooled[::2])
    assert np.array_equal(from_text, from_embeds)
    given = {"prompt_embeds": states[::2], "pooled_prompt_embeds": pooled[::2]}
    assert generate(pipe, None, **given, num_images_per_prompt=2).shape == (4, 64, 64, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": ["a", "b"], "prompt_2": ["x"]}, ValueError, "`prompt_2` has 1 prompts but `prompt` has 2"),
        ({"prompt": "a", "prompt_2": [1]}, TypeError, "`prompt_2` must be a string or a list of strings"),
        ({"prompt": ["a", 3]}, TypeError, "list of int, str"),
        ({"prompt": "a (cat:20)"}, ValueError, r"\(cat:20\): weight 20 is outside the range 0 to 10"),
        ({"prompt": "a ((cat:4):4)"}, ValueError, "'cat' gets weight 16 from nested groups"),
    ],
)
def test_bad_input_is_refused_before_any_compute(pipe, kwargs, error, message, monkeypatch):
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: pytest.fail("the transformer ran"))
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        monkeypatch.setattr(encoder, "forward", lambda *a, **k: pytest.fail("a text encoder ran"))
    with pytest.raises(error, match=message):
        pipe(num_inference_steps=1, output_type="np", height=64, width=64, **kwargs)


def test_given_embeds_without_a_pooled_vector_are_refused(pipe):
    states, _ = encode(pipe, "a lighthouse")
    with pytest.raises(ValueError, match="`prompt_embeds` is given without `pooled_prompt_embeds`"):
        pipe.encode_prompt(None, prompt_embeds=states, device="cpu")


def test_unfitting_text_encoders_are_refused(pipe, stock):
    with pytest.raises(ValueError, match="tokenizer reads 77 tokens but the text encoder has 248 positions"):
        LongCLIPFluxPipeline.from_pipe(stock, text_encoder=pipe.text_encoder, tokenizer=tiny_clip_tokenizer())
    from transformers import CLIPTextModelWithProjection

    projected = CLIPTextModelWithProjection(stock.text_encoder.config)
    with pytest.raises(
        ValueError, match="text_encoder is a CLIPTextModelWithProjection, but Flux.*with_projection=False"
    ):
        LongCLIPFluxPipeline.from_pipe(stock, text_encoder=projected)
