"""The README snippet: Long-CLIP in the stock diffusers `StableDiffusionPipeline`, no code change in diffusers."""

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer

# ~200 CLIP tokens; the words after "Beyond the harbour" start past token 77.
HEAD = (
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, "
    "a warm yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden "
    "staircase winding down to a small pier. Beyond the harbour"
)
TAIL_A = (
    " a red fishing boat with patched sails rocks gently at anchor, its crew hauling nets full of silver fish, "
    "lanterns swinging from the mast, a dog barking on the deck, ropes coiled beside wooden crates of apples, "
    "the reflection of the first stars shimmering on the calm water of the bay, mountains fading into mist "
    "far away on the horizon, painted in thick impasto brush strokes in the style of a nineteenth century "
    "romantic landscape, golden hour light, rich glazes, a faint rainbow arching over the distant lighthouse "
    "island, children waving from the pier, a cat asleep on a barrel, gulls diving for scraps."
)
TAIL_B = TAIL_A.replace("red fishing boat", "white steamship").replace("silver fish", "wooden barrels")


@pytest.fixture(scope="module")
def long_pipe(tiny_components):
    text_encoder = LongCLIPTextEncoder.from_pretrained(tiny_components / "longclip-sd15")
    tokenizer = LongCLIPTokenizer.from_pretrained(tiny_components / "longclip-sd15")
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_components / "sd15", text_encoder=text_encoder, tokenizer=tokenizer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(pipe, prompt: str) -> torch.Tensor:
    prompt_embeds, negative_embeds = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="blurry")
    assert negative_embeds.shape == prompt_embeds.shape
    return prompt_embeds


def generate(pipe, prompt: str) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images[0]


def test_the_prompt_is_far_past_77_tokens(long_pipe):
    n_tokens = len(long_pipe.tokenizer(HEAD + TAIL_A).input_ids)
    n_head = len(long_pipe.tokenizer(HEAD).input_ids) - 1  # without the end token
    assert 180 <= n_tokens <= 248
    assert n_head >= 77  # the tail starts at position 77 or later: stock CLIP reads positions 0..76


def test_a_long_prompt_gives_248_conditioning_tokens(long_pipe):
    assert encode(long_pipe, HEAD + TAIL_A).shape == (1, 248, 32)


def test_the_tail_past_token_77_changes_the_conditioning_and_the_image(long_pipe):
    a, b = encode(long_pipe, HEAD + TAIL_A), encode(long_pipe, HEAD + TAIL_B)
    start = len(long_pipe.tokenizer(HEAD).input_ids) - 1  # first token where the two prompts differ
    assert torch.equal(a[:, :start], b[:, :start])  # causal attention: the shared head is unchanged
    assert (a[:, start:] - b[:, start:]).abs().max() > 1e-3
    assert np.abs(generate(long_pipe, HEAD + TAIL_A) - generate(long_pipe, HEAD + TAIL_B)).max() > 1e-3


def test_with_stock_clip_the_same_tail_is_cut_off(tiny_components):
    """The problem Long-CLIP solves: the stock 77-token pipeline never sees the tail."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_components / "sd15")
    pipe.set_progress_bar_config(disable=True)
    a, b = encode(pipe, HEAD + TAIL_A), encode(pipe, HEAD + TAIL_B)
    assert a.shape == (1, 77, 32)
    assert torch.equal(a, b)


def test_short_prompts_condition_exactly_like_the_stock_encoder_on_the_shared_positions(long_pipe, tiny_components):
    """The tiny Long-CLIP is the stock encoder stretched: up to 20 tokens nothing changes, bit for bit."""
    stock = StableDiffusionPipeline.from_pretrained(tiny_components / "sd15")
    long_embeds, stock_embeds = encode(long_pipe, "a lighthouse at dusk"), encode(stock, "a lighthouse at dusk")
    assert torch.equal(long_embeds[:, :20], stock_embeds[:, :20])


def test_the_pipeline_saves_and_loads_back(long_pipe, tmp_path):
    long_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe/model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["longclip_diffusers.tokenizer", "LongCLIPTokenizer"]
    config = json.loads((tmp_path / "pipe/tokenizer/tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "CLIPTokenizer" and config["model_max_length"] == 248

    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert reloaded.text_encoder.config.max_position_embeddings == 248
    assert torch.equal(encode(reloaded, HEAD + TAIL_A), encode(long_pipe, HEAD + TAIL_A))
