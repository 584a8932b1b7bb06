"""`from_single_file` on the Long-CLIP pipelines: single-file SD 1.5 / SDXL checkpoints (the tiny pipelines written in
the original key layout) whose CLIP-L is a Long-CLIP, and ones whose encoders are stock.

The tiny UNets are not recognisable by diffusers' model-type inference, so every load passes `config=` the tiny
pipeline's folder (as a user passes a Hub id); nothing reaches the Hub.
"""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from helpers.pipelines import HEAD, TAIL_A, generate
from helpers.single_files import ldm_state_dict
from safetensors.torch import save_file

from longclip_diffusers.pipelines import LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline

FAMILIES = {
    "sd15": (StableDiffusionPipeline, LongCLIPStableDiffusionPipeline, ["text_encoder"]),
    "sdxl": (StableDiffusionXLPipeline, LongCLIPStableDiffusionXLPipeline, ["text_encoder", "text_encoder_2"]),
}
PROMPT = HEAD + TAIL_A


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request, tiny_components, long_parts, tmp_path_factory):
    """(family, config folder, stock pipeline, Long-CLIP pipeline, stock single file, Long-CLIP single file)."""
    family = request.param
    stock_class, our_class, _ = FAMILIES[family]
    config = tiny_components / family
    stock = stock_class.from_pretrained(config)
    text_encoder, tokenizer = long_parts(family)
    long = our_class.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)
    folder = tmp_path_factory.mktemp(f"single-{family}")
    files = []
    for pipe, name in ((stock, "stock"), (long, "longclip")):
        files.append(folder / f"{family}-{name}.safetensors")
        save_file({key: value.contiguous() for key, value in ldm_state_dict(pipe).items()}, files[-1])
    return family, config, stock, long, *files


@torch.no_grad()
def encode(pipe):
    return pipe.encode_prompt(
        PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt="blurry"
    )


def assert_same_weights(loaded, expected, components):
    for name in components:
        actual, wanted = getattr(loaded, name).state_dict(), getattr(expected, name).state_dict()
        assert actual.keys() == wanted.keys(), name
        assert all(torch.equal(actual[key], wanted[key]) for key in wanted), name


def test_stock_diffusers_refuses_a_long_clip_single_file(case):
    family, config, _, _, _, long_file = case
    with pytest.raises(ValueError, match=r"expected shape torch.Size\(\[77, 32\]\), but got torch.Size\(\[248, 32\]\)"):
        FAMILIES[family][0].from_single_file(long_file, config=config)


def test_a_single_file_with_a_long_clip_loads_as_it_was_saved(case):
    family, config, _, long, _, long_file = case
    loaded = FAMILIES[family][1].from_single_file(long_file, config=config)
    assert type(loaded) is FAMILIES[family][1]
    assert_same_weights(loaded, long, ["unet", "vae", *FAMILIES[family][2]])
    assert loaded.text_encoder.config.max_position_embeddings == loaded.tokenizer.model_max_length == 248
    assert loaded.tokenizer("a cat").input_ids == long.tokenizer("a cat").input_ids
    if family == "sdxl":  # bigG stays 77 positions, its tokenizer padding with "!" as SDXL's second one does
        assert loaded.tokenizer_2.model_max_length == 77 and loaded.tokenizer_2.pad_token == "!"
    actual, expected = encode(loaded), encode(long)
    assert actual[0].shape[1] == 248
    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))
    assert np.array_equal(generate(loaded, PROMPT), generate(long, PROMPT))


def test_a_stock_single_file_loads_as_stock(case):
    family, config, stock, _, stock_file, _ = case
    loaded = FAMILIES[family][1].from_single_file(stock_file, config=config)
    assert_same_weights(loaded, stock, ["unet", "vae", *FAMILIES[family][2]])
    assert loaded.tokenizer.model_max_length == 77
    short = "a lighthouse at dusk"
    expected = stock.encode_prompt(short, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    actual = loaded.encode_prompt(short, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True) if e is not None)


def test_a_stock_single_file_takes_a_long_clip_given_as_text_encoder(case, long_parts):
    family, config, _, long, stock_file, _ = case
    text_encoder, tokenizer = long_parts(family)
    loaded = FAMILIES[family][1].from_single_file(
        stock_file, config=config, text_encoder=text_encoder, tokenizer=tokenizer
    )
    assert loaded.text_encoder is text_encoder and loaded.tokenizer is tokenizer
    assert_same_weights(loaded, long, ["unet", "vae", *FAMILIES[family][2]])
    assert all(torch.equal(a, e) for a, e in zip(encode(loaded), encode(long), strict=True))


def test_a_long_clip_without_its_tokenizer_is_refused_in_one_line(case, long_parts):
    family, config, _, _, stock_file, _ = case
    text_encoder, _ = long_parts(family)
    with pytest.raises(ValueError, match="the tokenizer reads 77 tokens but the text encoder has 248 positions"):
        FAMILIES[family][1].from_single_file(stock_file, config=config, text_encoder=text_encoder)


def test_without_config_heads_that_weights_do_not_tell_are_refused_with_the_fix(case):
    family, _, _, _, _, long_file = case  # the tiny encoders' 8-wide heads are not OpenAI's 64-wide ones
    with pytest.raises(ValueError, match="head count cannot be inferred .* Here: pass config= the pipeline's Hub id"):
        FAMILIES[family][1].from_single_file(long_file)
