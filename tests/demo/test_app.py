"""The demo's logic without a browser: token coverage against the real tokenizers, bounds, scoring, requests."""

import argparse
import re

import gradio as gr
import open_clip
import pytest
import torch
from PIL import Image

from longclip_diffusers import LongCLIPTokenizer
from longclip_diffusers.demo import app
from longclip_diffusers.demo.app import BASES, AlignmentScorer, Models, Sources, compare, validate
from longclip_diffusers.demo.tokens import DROPPED, LONG_ONLY, VANILLA_ONLY, T5Reading, prompt_coverage
from longclip_diffusers.prompts import tokenize_windows
from longclip_diffusers.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

LONG_PROMPT = (
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, "
    "a warm yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden "
    "staircase winding down to a small pier. Beyond the harbour a red fishing boat with patched sails rocks at "
    "anchor, its crew hauling nets full of silver fish."
)


@pytest.fixture(scope="module")
def tokenizers():
    return tiny_clip_tokenizer(), LongCLIPTokenizer.from_clip_bpe()


def reference_token_count(text: str) -> int:
    """Long-CLIP's own tokenizer (open_clip's, which the reference implementation uses): ids without BOS/EOS."""
    return len(open_clip.tokenizer.SimpleTokenizer().encode(text))


def test_short_prompts_are_read_whole_by_both(tokenizers):
    coverage = prompt_coverage("a lighthouse at dusk", *tokenizers)
    assert coverage.spans == [("a lighthouse at dusk", None)]
    assert coverage.vanilla_tokens == coverage.vanilla_reads == coverage.long_tokens == coverage.long_reads == 4
    assert coverage.long_windows == 1
    assert "both encoders read the whole prompt." in coverage.summary


def test_the_highlight_starts_exactly_where_the_stock_pipeline_truncates(tokenizers):
    vanilla, long = tokenizers
    coverage = prompt_coverage(LONG_PROMPT, vanilla, long)
    (seen, none), (unseen, label) = coverage.spans
    assert none is None and label == LONG_ONLY and seen + unseen == LONG_PROMPT
    truncated = vanilla(LONG_PROMPT, max_length=77, truncation=True).input_ids[1:-1]  # what the stock pipeline keeps
    assert vanilla(seen, add_special_tokens=False).input_ids == truncated
    assert coverage.long_tokens == reference_token_count(LONG_PROMPT) > 77
    assert coverage.vanilla_reads == 75 and coverage.long_reads == coverage.long_tokens
    assert "vanilla CLIP reads the first 75" in coverage.summary
    assert f"Long-CLIP reads all {coverage.long_tokens}." in coverage.summary


def test_each_side_is_counted_with_its_own_tokenizer(tokenizers):
    # The stock pipeline's plain CLIPTokenizer reads `&amp;` as 3 tokens; Long-CLIP's unescapes it to `&`.
    prompt = "&amp;" * 40
    vanilla, long = tokenizers
    coverage = prompt_coverage(prompt, vanilla, long)
    assert coverage.summary.startswith("**120 tokens for vanilla CLIP, 39 for Long-CLIP**")
    assert "vanilla CLIP reads the first 75 and never sees the highlighted rest; Long-CLIP reads all 39." in (
        coverage.summary
    )
    assert [label for _, label in coverage.spans] == [None, LONG_ONLY]
    stock_ids = vanilla(prompt, add_special_tokens=False).input_ids
    assert coverage.vanilla_tokens == len(stock_ids) == 120 and coverage.vanilla_reads == 75
    assert coverage.long_tokens == coverage.long_reads == reference_token_count(prompt) == 39


def test_weighting_syntax_and_break_are_text_for_vanilla_only(tokenizers):
    prompt = "(masterpiece:1.3), a lighthouse BREAK [a red boat]"
    coverage = prompt_coverage(prompt, *tokenizers)
    assert coverage.summary.endswith("both encoders read the whole prompt (Long-CLIP in 2 windows of 246).")
    assert coverage.vanilla_tokens == len(tokenizers[0](prompt, add_special_tokens=False).input_ids) == 15
    assert coverage.long_tokens == reference_token_count("masterpiece, a lighthouse") + reference_token_count(
        "a red boat"
    )
    assert coverage.long_windows == 2  # BREAK starts a window
    # a Long-CLIP pipeline built with prompt_weighting=False reads the brackets and BREAK as text too
    unweighted = prompt_coverage(prompt, *tokenizers, weighting=False)
    assert unweighted.long_tokens == reference_token_count(prompt) and unweighted.long_windows == 1


def test_a_prompt_past_one_window_says_how_many_windows_long_clip_reads(tokenizers):
    prompt = " ".join([LONG_PROMPT] * 3)
    tokens = reference_token_count(prompt)
    assert tokens > 246
    coverage = prompt_coverage(prompt, *tokenizers)
    assert f"Long-CLIP reads all {tokens} in 2 windows of 246." in coverage.summary
    assert coverage.long_tokens == tokens and coverage.long_windows == 2


def test_a_window_limit_marks_the_words_long_clip_drops(tokenizers):
    vanilla, long = tokenizers
    prompt = " ".join([LONG_PROMPT] * 3)
    coverage = prompt_coverage(prompt, vanilla, long, max_windows=1)
    assert [label for _, label in coverage.spans] == [None, LONG_ONLY, DROPPED]
    assert "".join(text for text, _ in coverage.spans) == prompt
    first_window = tokenize_windows(prompt, long, 246).token_ids[0]
    assert coverage.long_reads == len(first_window) < coverage.long_tokens
    read_text = coverage.spans[0][0] + coverage.spans[1][0]
    assert long(read_text, add_special_tokens=False).input_ids == first_window  # the text before the red span
    assert f"Long-CLIP reads the first {len(first_window)}." in coverage.summary


def test_text_only_vanilla_reads_when_long_clip_stops_first(tokenizers):
    prompt = "a cat BREAK " + LONG_PROMPT
    coverage = prompt_coverage(prompt, *tokenizers, max_windows=1)
    assert [label for _, label in coverage.spans] == [None, VANILLA_ONLY, DROPPED]
    assert coverage.spans[0][0] == "a cat BREAK " and coverage.long_reads == 2


def test_a_word_the_stock_pipeline_reads_only_part_of_is_highlighted_whole(tokenizers):
    prompt = "cat " * 74 + "lighthouses at dusk"  # token 75 is `ligh`, 76 `thou`: the cut falls inside the word
    coverage = prompt_coverage(prompt, *tokenizers)
    assert coverage.vanilla_reads == 75
    assert coverage.spans == [("cat " * 74, None), ("lighthouses at dusk", LONG_ONLY)]


def test_flux_reads_one_window_and_t5_reads_up_to_its_length(tokenizers):
    vanilla, long = tokenizers
    t5_tokenizer = tiny_t5_tokenizer(vanilla)
    prompt = " ".join([LONG_PROMPT] * 3)  # past one Long-CLIP window
    coverage = prompt_coverage(prompt, vanilla, long, max_windows=1, pooled_only=True, t5=T5Reading(t5_tokenizer, 512))
    first_window = tokenize_windows(prompt, long, 246).token_ids[0]
    assert [label for _, label in coverage.spans] == [None, LONG_ONLY, DROPPED]
    assert coverage.long_reads == len(first_window) < coverage.long_tokens
    t5_tokens = len(t5_tokenizer(prompt, add_special_tokens=False).input_ids)  # no weighting syntax: the raw prompt
    assert coverage.summary.endswith(
        f"Long-CLIP reads the first {len(first_window)} (Flux reads CLIP-L's pooled vector, of one window). "
        f"T5 (in both pipelines) reads all {t5_tokens} of its tokens."
    )
    short = prompt_coverage(
        "a lighthouse", vanilla, long, max_windows=1, pooled_only=True, t5=T5Reading(t5_tokenizer, 3)
    )
    short_t5 = len(t5_tokenizer("a lighthouse", add_special_tokens=False).input_ids)
    assert short_t5 > 2 and short.summary.endswith(
        f"both encoders read the whole prompt. T5 (in both pipelines) reads the first 2 of its {short_t5} tokens."
    )
    # past max_sequence_length: T5 reads its first max_sequence_length - 1 tokens, then `</s>` (as the pipelines)
    sd3 = prompt_coverage(prompt, vanilla, long, t5=T5Reading(t5_tokenizer, 256))
    assert sd3.summary.endswith(f"T5 (in both pipelines) reads the first 255 of its {t5_tokens} tokens.")
    assert "in 2 windows of 246" in sd3.summary  # SD 3's CLIP encoders read windows as SDXL's
    weighted = prompt_coverage("a (red:1.3) boat BREAK x", vanilla, long, t5=T5Reading(t5_tokenizer, 256))
    assert weighted.t5_tokens == len(t5_tokenizer("a red boat x", add_special_tokens=False).input_ids)


@pytest.fixture(scope="module")
def tiny_models(tiny_components):
    """Every base on the tiny components, as `longclip demo --tiny` has them."""
    pipelines = {name: str(tiny_components / base.flag) for name, base in BASES.items()}
    encoders = {name: str(tiny_components / f"longclip-{base.flag}") for name, base in BASES.items()}
    return Models(Sources(pipelines, encoders, tiny=True))


@pytest.mark.parametrize(
    ("base", "prompt", "negative", "seed", "steps", "guidance", "width", "height", "message"),
    [
        ("SD 1.5", "", None, 0, 4, 7.5, 64, 64, "Type a prompt"),
        ("SD 1.5", None, None, 0, 4, 7.5, 64, 64, "Type a prompt"),
        ("SD 1.5", "x" * 4001, None, 0, 4, 7.5, 64, 64, "The prompt has 4001 characters; the demo takes at most 4000"),
        ("SD 1.5", "a cat", "x" * 100_000, 0, 4, 7.5, 64, 64, "The negative prompt has 100000 characters"),
        ("SD 1.5", "a cat", 3, 0, 4, 7.5, 64, 64, "The negative prompt must be text"),
        ("SD 1.5", "a cat", None, 2**64, 4, 7.5, 64, 64, "Seed must be a whole number between 0 and 9007199254740991"),
        ("SD 1.5", "a cat", None, -1, 4, 7.5, 64, 64, "Seed must be a whole number between 0 and"),
        ("SD 1.5", "a cat", None, float("nan"), 4, 7.5, 64, 64, "Seed must be a whole number"),
        ("SD 1.5", "a cat", None, None, 4, 7.5, 64, 64, "Seed must be a whole number"),
        ("SD 1.5", "a cat", None, 1.5, 4, 7.5, 64, 64, "Seed must be a whole number"),
        ("SD 1.5", "a cat", None, 0, 0, 7.5, 64, 64, "Steps must be a whole number between 1 and 100"),
        ("SD 1.5", "a cat", None, 0, 2.5, 7.5, 64, 64, "Steps must be a whole number between 1 and 100, got 2.5"),
        ("SD 1.5", "a cat", None, 0, float("nan"), 7.5, 64, 64, "Steps must be a whole number"),
        ("SD 1.5", "a cat", None, 0, 4, 7.5, 66, 64, "Width must be a multiple of 8"),
        ("SD 1.5", "a cat", None, 0, 4, 7.5, 64.5, 64, "Width must be a multiple of 8"),
        ("SD 1.5", "a cat", None, 0, 4, 7.5, 64, 2048, "Height must be a multiple of 8 between 64 and 1024"),
        ("SD 1.5", "a cat", None, 0, 4, 99, 64, 64, "Guidance must be a number between 0 and 30"),
        ("SD 1.5", "a cat", None, 0, 4, float("nan"), 64, 64, "Guidance must be a number between 0 and 30"),
        ("SD 1.5", "a cat", None, 0, 4, float("inf"), 64, 64, "Guidance must be a number"),
        ("SD 1.5", "a cat", None, 0, 4, None, 64, 64, "Guidance must be a number"),
        ("../../etc", "a cat", None, 0, 4, 7.5, 64, 64, "Choose a base among SD 1.5, SDXL, SD 2.x, SD 3, Flux.1"),
        ("SD 1.5", "a (cat:13)", None, 0, 4, 7.5, 64, 64, "In the prompt: (cat:13): weight 13 is outside the range 0"),
        ("SD 3", "a cat", "(blurry:-1)", 0, 4, 7.5, 64, 64, "In the negative prompt: (blurry:-1): weight -1 is"),
        ("Flux.1", "a ((cat:4):4)", None, 0, 4, 7.5, 64, 64, "In the prompt: 'cat' gets weight 16 from nested"),
    ],
)
def test_every_input_is_bounded(
    tiny_models, monkeypatch, base, prompt, negative, seed, steps, guidance, width, height, message
):
    # through the request handler, as the browser and the API reach it: a message, never a traceback, before any
    # model runs
    monkeypatch.setattr(app, "generate", lambda *a, **k: pytest.fail("a pipeline ran"))
    with pytest.raises(gr.Error, match=re.escape(message)):
        compare(tiny_models, base, prompt, negative, seed, steps, guidance, width, height)


def test_valid_inputs_become_the_generation_options():
    options = validate("SDXL", "a cat", None, 2**53 - 1, 30.0, 7, 1024.0, 64)
    assert options == dict(seed=2**53 - 1, steps=30, width=1024, height=64, guidance_scale=7.0)
    assert all(type(options[key]) is int for key in ("seed", "steps", "width", "height"))
    with pytest.raises(ValueError, match="Choose a base among SD 1.5, Flux.1"):
        validate("SDXL", "a cat", None, 0, 30, 7, 64, 64, bases=["SD 1.5", "Flux.1"])  # the bases offered


@pytest.mark.parametrize("base", list(BASES))
def test_a_request_returns_both_images_and_the_coverage(tiny_models, base):
    vanilla, long, summary, spans, scores = compare(tiny_models, base, LONG_PROMPT, "blurry", 3, 2, 7.5, 64, 64)
    assert vanilla.size == long.size == (64, 64)
    assert vanilla.tobytes() != long.tobytes()
    pair = tiny_models.pair(base)
    stock_tokens = pair.stock.tokenizer(LONG_PROMPT, add_special_tokens=False).input_ids
    assert summary.startswith(f"**{len(stock_tokens)} tokens for vanilla CLIP")
    assert "vanilla CLIP reads the first 75" in summary and spans[-1][1] == LONG_ONLY
    assert "vision tower" in scores  # the tiny Long-CLIP is text only
    assert pair is tiny_models.pair(base) and pair.family.name == BASES[base].family  # loaded once
    denoiser = "unet" if hasattr(pair.stock, "unet") else "transformer"
    assert getattr(pair.long, denoiser) is getattr(pair.stock, denoiser)
    assert ("T5 (in both pipelines) reads all" in summary) == (base in ("SD 3", "Flux.1"))
    assert ("Flux.1 reads no negative prompt" in summary) == (base == "Flux.1")
    assert ("Flux reads CLIP-L's pooled vector" in summary) == (base == "Flux.1")


def test_flux_generates_without_the_negative_prompt_it_does_not_read(tiny_models):
    with_negative = compare(tiny_models, "Flux.1", LONG_PROMPT, "blurry", 3, 2, 7.5, 64, 64)
    without = compare(tiny_models, "Flux.1", LONG_PROMPT, "", 3, 2, 7.5, 64, 64)
    assert with_negative[1].tobytes() == without[1].tobytes()
    assert "it was left out" in with_negative[2] and "negative" not in without[2]


def test_sources_follow_flags_then_environment_then_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGCLIP_SD3", "my/sd3")
    monkeypatch.delenv("LONGCLIP_SD2_ENCODER", raising=False)
    sources = Sources.from_settings({"SDXL": "my/sdxl", "SD 3": None}, encoder="my/long-clip")
    assert sources.bases == ["SD 1.5", "SDXL", "SD 3", "Flux.1"]  # SD 2.x needs a long OpenCLIP-H of its own
    assert sources.pipelines["SDXL"] == "my/sdxl" and sources.pipelines["SD 3"] == "my/sd3"
    assert sources.pipelines["Flux.1"] == BASES["Flux.1"].default and sources.encoders["Flux.1"] == "my/long-clip"
    monkeypatch.setenv("LONGCLIP_SD2_ENCODER", "my/long-h")
    sources = Sources.from_settings({})
    assert "SD 2.x" in sources.bases and sources.encoders["SD 2.x"] == "my/long-h"
    assert sources.encoders["SD 1.5"] == "BeichenZhang/LongCLIP-L"


def test_the_demo_starts_on_the_models_it_is_given_offering_those_it_can_load(tiny_components, tmp_path, monkeypatch):
    for variable in [base.environment for base in BASES.values()] + list(app.ENVIRONMENT.values()):
        monkeypatch.delenv(variable, raising=False)
    parser = argparse.ArgumentParser()
    app.add_demo_arguments(parser)
    flags = ["--sd15", tiny_components / "sd15", "--sdxl", tiny_components / "sdxl", "--sd3", tmp_path / "missing"]
    flags += ["--flux", tiny_components / "flux", "--long-encoder", tiny_components / "longclip-sd15"]
    models = app.load_models(parser.parse_args([str(flag) for flag in flags]))
    assert not models.sources.tiny and list(models.pairs) == ["SD 1.5"]  # the others load on first use
    # SD 3.5 cannot be read, SD 2.x has no long OpenCLIP-H, and Flux.1's default Hub id was replaced by the tiny one
    assert models.sources.bases == ["SD 1.5", "SDXL", "Flux.1"]


def test_only_bases_whose_pipeline_loads_are_offered(tiny_components, tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    pipelines = {
        "SD 1.5": str(tiny_components / "sd15"),
        "SDXL": str(tmp_path / "empty"),  # no model_index.json
        "SD 3": str(tiny_components / "flux"),  # another family
        "Flux.1": str(tiny_components / "flux"),
    }
    encoders = dict.fromkeys(pipelines, str(tiny_components / "longclip-sd15"))
    offered = Sources(pipelines, encoders).loadable()
    assert offered.bases == ["SD 1.5", "Flux.1"]
    assert (
        "Leaving SDXL out" in caplog.text and f"Leaving SD 3 out: {tiny_components / 'flux'} is a Flux.1" in caplog.text
    )


def test_the_coverage_follows_the_long_clip_pipeline_settings(tiny_models):
    long = tiny_models.pair("SD 1.5").long
    prompt = " ".join([LONG_PROMPT] * 3)
    long.register_to_config(max_prompt_windows=1)
    try:
        *_, summary, spans, _ = compare(tiny_models, "SD 1.5", prompt, "", 0, 1, 7.5, 64, 64)
    finally:
        long.register_to_config(max_prompt_windows=None)
    assert [label for _, label in spans] == [None, LONG_ONLY, DROPPED]
    assert "Long-CLIP reads the first" in summary


def test_alignment_score_equals_open_clip_similarity(published_pt):
    path, reference = published_pt
    scorer = AlignmentScorer.load(str(path))
    images = [Image.new("RGB", (32, 32), color) for color in ("red", "navy")]
    prompt = "a red square " * 30
    scores = scorer(images, prompt)

    preprocess = open_clip.image_transform(32, is_train=False)
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=248)([prompt])
    with torch.no_grad():
        image_features = reference.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        text_features = reference.encode_text(ids, normalize=True)
    expected = (100 * image_features @ text_features.T).squeeze(-1).tolist()
    assert scores == pytest.approx(expected, abs=0.02)
