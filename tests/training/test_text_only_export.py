"""The SDXL and SD 2.x paths end to end: a tiny OpenCLIP-bigG- (or ViT-H-) shaped model trained text-only on cached
image features, exported, and used by the tiny pipelines as their encoder, with prompts past 77 tokens.

Real parts throughout: open_clip models, accelerate runs through the command line, transformers and diffusers
pipelines (tiny random weights from `longclip tiny`).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from helpers.training import one_line_error, run_cli, save_pretrained, write_dataset
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer, prompts
from longclip_diffusers.checkpoint import Checkpoint, CheckpointError
from longclip_diffusers.cli import main
from longclip_diffusers.convert import sd2_text_encoder
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.layouts import hf_to_canonical
from longclip_diffusers.pipelines import LongCLIPStableDiffusionXLPipeline
from longclip_diffusers.training.model import TextCLIP, encode_text_cut

# OpenCLIP-bigG's and -H's conventions (GELU, a text projection, no QuickGELU) at the widths of the tiny pipelines'
# encoders (`longclip tiny`): 32 hidden, projection 32. bigG-shaped: SDXL's text_encoder_2; H-shaped: 5 layers, of
# which SD 2.x's encoder keeps 4 (as diffusers keeps 23 of ViT-H's 24).
TINY_VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
TINY_BIGG = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": {"width": 32, "heads": 4, "layers": 3}}
TINY_H = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": {"width": 32, "heads": 4, "layers": 5}}
# About 155 CLIP tokens; the two versions differ only past token 140, far past 77.
PROMPT = (
    "A highly detailed oil painting of an old stone lighthouse on a rugged cliff at dusk, waves crashing against "
    "the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, a warm "
    "yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden staircase "
    "winding down to a small pier where fishermen mend their nets, stacks of lobster pots, coils of rope and "
    "barrels of salted herring along the quay, where an old dog sleeps beside a lantern and children chase each "
    "other between the drying nets, a row of narrow houses with slate roofs and smoking chimneys facing the water, "
    "their windows glowing amber in the fading light, and beyond the harbour wall{}"
)
TAILS = (" a red fishing boat with patched sails rocks at anchor.", " a white steamship with tall funnels waits.")


def train_text_only(folder: Path, name: str, config: dict) -> Path:
    """`longclip cache-features`, then `longclip train --image-features`, as a user runs them; the run folder."""
    (folder / f"{name}.json").write_text(json.dumps(config))
    pretrained = save_pretrained(folder / f"{name}.safetensors", seed=3, config=config)
    common = ["--model", folder / f"{name}.json", "--pretrained", pretrained, "--train-data", folder / "train.jsonl"]
    features, run = folder / f"{name}-features", folder / f"{name}-run"
    assert main(list(map(str, ["cache-features", *common, "--output", features, "--workers", 0]))) == 0
    flags = [
        "--output", run, "--image-features", features, "--batch-size", 8, "--epochs", 2, "--lr", "1e-3",
        "--warmup-steps", 1, "--pca-components", 4, "--workers", 0, "--save-every", 4, "--report-to", "none",
    ]  # fmt: skip
    assert main(list(map(str, ["train", *common, *flags]))) == 0
    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), count=16)


@pytest.fixture(scope="module")
def bigg_run(data):
    return train_text_only(data, "bigg", TINY_BIGG)


@pytest.fixture(scope="module")
def h_run(data):
    return train_text_only(data, "vit-h", TINY_H)


def trained_text_tower(run: Path, config: dict) -> TextCLIP:
    """The run's last checkpoint as the open_clip text tower it trained."""
    from longclip_diffusers.stretch import stretch_model

    model = stretch_model(TextCLIP(config))
    weights = load_file(run / "checkpoints/step_4/model.safetensors")
    model.load_state_dict({key.removeprefix("clip."): value for key, value in weights.items()})
    return model.eval()


def tokens(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=248, truncation=True, return_tensors="pt").input_ids


def test_a_text_only_run_exports_a_long_text_encoder_with_projection_and_tokenizer(data, bigg_run, tmp_path, capsys):
    final = bigg_run / "final"
    encoder = CLIPTextModelWithProjection.from_pretrained(final / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(final / "tokenizer")
    config = encoder.config
    assert (config.max_position_embeddings, config.hidden_act, config.hidden_size, config.projection_dim) == (
        248, "gelu", 32, 32,
    )  # fmt: skip
    assert (tokenizer.model_max_length, tokenizer.pad_token) == (248, "!")  # pads as SDXL's tokenizer_2
    ids = tokens(tokenizer, PROMPT.format(TAILS[0]))
    assert (ids == 49407).nonzero()[0, 1] > 150  # the caption reaches far past 77 tokens
    with torch.no_grad():
        expected = encode_text_cut(trained_text_tower(bigg_run, TINY_BIGG), ids)  # open_clip's own modules
        torch.testing.assert_close(F.normalize(encoder(ids).text_embeds, dim=-1), expected, atol=1e-5, rtol=0)
    loaded = LongCLIPTextEncoder.from_pretrained(final)  # the library's loader and `longclip convert` read it too
    assert type(loaded) is CLIPTextModelWithProjection and load_checkpoint(final).num_positions == 248
    code, _, err = run_cli(capsys, ["convert", final, tmp_path / "again"])
    assert code == 0, err


def test_sdxl_takes_the_long_bigg_as_text_encoder_2_and_reads_it_directly(bigg_run, tiny_components, monkeypatch):
    long_bigg = LongCLIPTextEncoder.from_pretrained(bigg_run / "final")
    long_bigg_tokenizer = LongCLIPTokenizer.from_pretrained(bigg_run / "final")
    clip_l = tiny_components / "longclip-sdxl"  # a 248-position CLIP-L: the window length both encoders share
    pipe = LongCLIPStableDiffusionXLPipeline.from_pretrained(
        tiny_components / "sdxl",
        text_encoder=LongCLIPTextEncoder.from_pretrained(clip_l),
        tokenizer=LongCLIPTokenizer.from_pretrained(clip_l),
        text_encoder_2=long_bigg,
        tokenizer_2=long_bigg_tokenizer,
    )

    def refuse(*args, **kwargs):
        raise AssertionError("the long bigG was chunked or stretched instead of read as it is")

    monkeypatch.setattr(prompts, "encode_windows_chunked", refuse)
    monkeypatch.setattr(prompts, "stretched_view", refuse)
    conditioning = []
    for tail in TAILS:
        prompt = PROMPT.format(tail)
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        with torch.no_grad():  # SDXL's rule: bigG's penultimate states without the final norm, its projected pool
            output = long_bigg(tokens(long_bigg_tokenizer, prompt), output_hidden_states=True)
        torch.testing.assert_close(embeds[..., 32:], output.hidden_states[-2], atol=1e-6, rtol=0)
        torch.testing.assert_close(pooled, output.text_embeds, atol=1e-6, rtol=0)
        conditioning.append((embeds, pooled))
    assert embeds.shape == (1, 248, 64)
    assert not torch.allclose(conditioning[0][1], conditioning[1][1], atol=1e-4)  # the pool reads past token 140

    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT.format(TAILS[0]), num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


def test_sd2_gets_the_long_h_one_layer_short_reading_the_penultimate_layer(h_run, tiny_components, tmp_path, capsys):
    code, _, err = run_cli(capsys, ["convert", h_run / "final", tmp_path / "sd2", "--sd2"])
    assert code == 0, err
    encoder = CLIPTextModel.from_pretrained(tmp_path / "sd2/text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "sd2/tokenizer")
    assert (encoder.config.num_hidden_layers, encoder.config.hidden_act, tokenizer.pad_token) == (4, "gelu", "!")

    tower = trained_text_tower(h_run, TINY_H)  # 5 layers, in open_clip's own modules
    prompt = PROMPT.format(TAILS[0])
    ids = tokens(tokenizer, prompt)
    with torch.no_grad():  # SD 2.x's rule: the penultimate layer's states through the final layer norm
        states = tower.token_embedding(ids) + tower.positional_embedding
        for block in tower.transformer.resblocks[:-1]:
            states = block(states, attn_mask=tower.attn_mask)
        expected = tower.ln_final(states)
        torch.testing.assert_close(encoder(ids).last_hidden_state, expected, atol=1e-5, rtol=0)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_components / "sd2", text_encoder=encoder, tokenizer=tokenizer)
    embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=False)  # the stock pipeline
    torch.testing.assert_close(embeds, expected, atol=1e-5, rtol=0)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


def test_a_text_only_final_as_pretrained_is_named_as_what_it_is(data, bigg_run, tmp_path, capsys):
    args = ["train", "--train-data", data / "train.jsonl", "--model", data / "bigg.json", "--output", tmp_path / "run"]
    code, _, err = run_cli(capsys, [*args, "--pretrained", bigg_run / "final"])
    one_line_error(code, err, "a text encoder without an image tower", "train --image-features", "--resume")
    assert "open_clip architecture" not in err
    assert not (tmp_path / "run").exists()


def test_sd2_conversion_refuses_what_it_cannot_make(h_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, ["convert", h_run / "final", tmp_path / "a.safetensors", "--sd2", "--to", "comfyui"])
    one_line_error(code, err, "--sd2 writes SD 2.x's text encoder", "--to diffusers")
    code, _, err = run_cli(capsys, ["convert", h_run / "final", tmp_path / "b", "--sd2", "--with-projection"])
    one_line_error(code, err, "without --with-projection")
    assert not (tmp_path / "b").exists()


def test_sd2_conversion_refuses_sd_2s_own_23_layer_encoder():
    config = CLIPTextConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"
    )
    with torch.device("meta"):  # shapes only: SD 2.x's encoder without its 1.4 GB of weights
        state_dict = hf_to_canonical(CLIPTextModel(config).state_dict())
    with pytest.raises(CheckpointError, match="already SD 2.x's text encoder .23 of OpenCLIP-H's 24 layers"):
        sd2_text_encoder(Checkpoint(state_dict, config, source="sd-2-1/text_encoder"))
