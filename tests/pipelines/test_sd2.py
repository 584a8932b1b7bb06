"""LongCLIPStableDiffusionPipeline on the tiny SD 2.x components, with `longclip stretch` of SD 2's own encoder.

SD 2.x conventions: an OpenCLIP-H text encoder stored by diffusers with 23 of its 24 layers (SD 2 reads the
penultimate layer, after the final layer norm), a tokenizer that pads with "!", and a v-prediction scheduler.
"""

import json

import numpy as np
import pytest
import torch
from helpers.pipelines import HEAD, PAST_248, TAIL_A, TAIL_B, generate
from transformers import CLIPTextModel

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
from longclip_diffusers.cli import main
from longclip_diffusers.pipelines import LongCLIPStableDiffusionPipeline
from longclip_diffusers.prompts import final_layer_norm


@pytest.fixture
def stock(stock_pipeline):
    return stock_pipeline("sd2")


@pytest.fixture(scope="module")
def long_h(tiny_components, tmp_path_factory):
    """`longclip stretch` of the SD 2 pipeline's own text encoder: a training-free long H."""
    out = tmp_path_factory.mktemp("long_h") / "long_h"
    assert main(["stretch", str(tiny_components / "sd2"), str(out), "--subfolder", "text_encoder"]) == 0
    return LongCLIPTextEncoder.from_pretrained(out), LongCLIPTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def pipe(stock_pipeline, long_h):
    text_encoder, tokenizer = long_h
    return LongCLIPStableDiffusionPipeline.from_pipe(
        stock_pipeline("sd2"), text_encoder=text_encoder, tokenizer=tokenizer
    )


def encode(pipe, prompt, negative="blurry", **kwargs):
    return pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative, **kwargs)


def test_stretch_keeps_sd2s_encoder_and_its_pad_token(long_h, stock, pipe):
    text_encoder, tokenizer = long_h
    assert tokenizer.pad_token == stock.tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0
    assert text_encoder.config.max_position_embeddings == tokenizer.model_max_length == 248
    for field in ("hidden_act", "num_hidden_layers", "hidden_size"):
        assert getattr(text_encoder.config, field) == getattr(stock.text_encoder.config, field), field
    assert stock.text_encoder.config.max_position_embeddings == 77  # the stock encoder is left as it was

    prompt = "a lighthouse on a cliff at dusk"
    ids = tokenizer(prompt, padding="max_length", return_tensors="pt").input_ids
    assert ids[0, -1] == 0  # padded with "!", as SD 2's conditioning was trained
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
    embeds, _ = encode(pipe, prompt)
    assert torch.equal(embeds, expected)
    stock_embeds, _ = encode(stock, prompt)  # the stretch keeps the first 20 positions: the same states there
    torch.testing.assert_close(embeds[:, :20], stock_embeds[:, :20], rtol=0, atol=1e-5)


def test_generates_from_a_long_prompt_and_the_tail_changes_it(pipe):
    a, _ = encode(pipe, HEAD + TAIL_A)
    b, _ = encode(pipe, HEAD + TAIL_B)
    start = len(pipe.tokenizer(HEAD).input_ids) - 1
    assert a.shape == (1, 248, 32) and start >= 77
    assert torch.equal(a[:, :start], b[:, :start]) and not torch.allclose(a[:, start:], b[:, start:])
    images = generate(pipe, HEAD + PAST_248 + TAIL_A, negative_prompt="blurry")
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert np.abs(images - generate(pipe, HEAD + PAST_248 + TAIL_B, negative_prompt="blurry")).max() > 1e-3


def test_the_v_prediction_scheduler_survives_from_pipe_save_and_load(pipe, stock, tmp_path):
    assert stock.scheduler.config.prediction_type == "v_prediction"
    assert dict(pipe.scheduler.config) == dict(stock.scheduler.config)
    pipe.save_pretrained(tmp_path / "pipe")
    saved = json.loads((tmp_path / "pipe/scheduler/scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDIMScheduler" and saved["prediction_type"] == "v_prediction"
    reloaded = LongCLIPStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert dict(reloaded.scheduler.config) == dict(stock.scheduler.config)
    assert reloaded.tokenizer.pad_token == "!"
    assert np.array_equal(generate(reloaded, HEAD + TAIL_A), generate(pipe, HEAD + TAIL_A))


def test_clip_skip_reads_an_earlier_layer_after_the_final_norm(pipe, long_h):
    text_encoder, tokenizer = long_h
    ids = tokenizer("a lighthouse at dusk", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = final_layer_norm(text_encoder)(text_encoder(ids, output_hidden_states=True).hidden_states[-2])
    actual, _ = encode(pipe, "a lighthouse at dusk", clip_skip=1)
    assert torch.equal(actual, expected)


def test_a_full_depth_long_h_reads_sd2s_layer_with_clip_skip_1(pipe, long_h):
    """A long H trained with open_clip keeps all of the tower's layers, one more than diffusers stores for SD 2:
    with `clip_skip=1` it gives the conditioning of the stored encoder."""
    text_encoder, _ = long_h
    config = text_encoder.config.to_dict()
    config["num_hidden_layers"] += 1
    torch.manual_seed(0)
    full_depth = CLIPTextModel(type(text_encoder.config).from_dict(config)).eval()
    missing, unexpected = full_depth.load_state_dict(text_encoder.state_dict(), strict=False)
    assert not unexpected and missing and all(".layers.4." in key for key in missing)  # only the last layer is new
    ours = LongCLIPStableDiffusionPipeline.from_pipe(pipe, text_encoder=full_depth)
    assert torch.equal(encode(ours, HEAD + TAIL_A, clip_skip=1)[0], encode(pipe, HEAD + TAIL_A)[0])
    assert not torch.allclose(encode(ours, HEAD + TAIL_A)[0], encode(pipe, HEAD + TAIL_A)[0])
