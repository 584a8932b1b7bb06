"""The demo's logic without a browser: token coverage against the real tokenizers, bounds, scoring, requests."""

import argparse
import logging
import re
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import open_clip
import pytest
import torch
from helpers.common import LogRecords
from PIL import Image

from longclip_diffusers import LongCLIPTokenizer, tiny
from longclip_diffusers.demo import app
from longclip_diffusers.demo.app import BASES, AlignmentScorer, Sources, compare, respond, validate
from longclip_diffusers.demo.tokens import DROPPED, LONG_ONLY, VANILLA_ONLY, T5Reading, prompt_coverage
from longclip_diffusers.pipelines import generate as generation
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
def tiny_start(tiny_components, tmp_path_factory):
    """`longclip demo --tiny`'s models, and the folder it was given for temporary files (the tiny components are
    copied there from the session's, rather than written again)."""
    temporary = tmp_path_factory.mktemp("temporary")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(temporary))
        patch.setattr(tiny, "write_tiny_components", lambda out: Path(shutil.copytree(tiny_components, out)))
        return app.load_tiny_models(), temporary


@pytest.fixture(scope="module")
def tiny_models(tiny_start):
    """Every base on the tiny components, as `longclip demo --tiny` has them."""
    return tiny_start[0]


def test_the_tiny_start_loads_every_base_and_leaves_no_temporary_folder(tiny_start):
    models, temporary = tiny_start
    assert models.sources.tiny and list(models.pairs) == list(BASES)
    assert list(temporary.iterdir()) == []  # the 171 MB of tiny components were written there, then removed


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
        # what one request may cost: 3,996 characters of BREAK made 666 windows, 337 s a step on the tiny SD 3.5
        ("SD 3", "BREAK " * 666, None, 0, 4, 7.5, 64, 64, "The prompt makes 666 windows of 246 tokens for Long-CLIP"
         " (0 tokens, and each BREAK starts a window); the demo encodes at most 8. Shorten it or use fewer BREAKs."),
        ("SD 1.5", "a cat", "a, " * 1300, 0, 4, 7.5, 64, 64, "The negative prompt makes 11 windows of 246 tokens for "
         "Long-CLIP (2600 tokens); the demo encodes at most 8. Shorten it."),
        ("SDXL", "a cat " * 8 + "BREAK " * 8 + "a dog", None, 0, 4, 7.5, 64, 64, "The prompt makes 9 windows"),
        ("SD 1.5", "BREAK BREAK", None, 0, 4, 7.5, 64, 64, "The prompt holds no words once BREAK and the weighting"),
        ("SD 1.5", "a cat", None, 0, 100, 7.5, 1024, 1024, "100 steps at 1024x1024 is more than one request may "
         "cost: at that size the demo runs at most 50 steps (50 at 1024x1024). Lower the steps or the size."),
        ("SD 1.5", "a cat", None, 0, 64, 7.5, 1024, 904, "at that size the demo runs at most 56 steps"),
    ],
)  # fmt: skip
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
    assert validate("SDXL", "a cat", None, 0, 50, 7, 1024, 1024)["steps"] == 50  # the most at the largest size
    assert validate("SDXL", "a cat", None, 0, 100, 7, 720, 720)["steps"] == 100  # all steps at a smaller one
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


def demo_arguments(*flags) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    app.add_demo_arguments(parser)
    return parser.parse_args([str(flag) for flag in flags])


def test_the_demo_starts_on_the_models_it_is_given_offering_those_it_can_load(tiny_components, tmp_path, monkeypatch):
    for variable in [base.environment for base in BASES.values()] + list(app.ENVIRONMENT.values()):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "empty").mkdir()  # no model_index.json
    flags = ["--sd15", tiny_components / "sd15", "--sdxl", tiny_components / "sdxl", "--sd3", tmp_path / "empty"]
    flags += ["--flux", tiny_components / "flux", "--long-encoder", tiny_components / "longclip-sd15"]
    models = app.load_models(demo_arguments(*flags))
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


def test_a_prompt_of_eight_windows_is_generated(tiny_models):
    prompt = " BREAK ".join(["a lighthouse"] * 8)  # the most windows the demo encodes
    *_, summary, _, _ = compare(tiny_models, "SD 3", prompt, "", 0, 1, 7.5, 64, 64)
    assert "both encoders read the whole prompt (Long-CLIP in 8 windows of 246)." in summary


def test_empty_windows_are_named_as_such(tokenizers, tiny_models):
    # "BREAK BREAK" closes a window with nothing in it: the summary said "reads all 0 in 200 windows"
    prompt = "a lighthouse BREAK BREAK a boat"
    coverage = prompt_coverage(prompt, *tokenizers)
    assert coverage.long_windows == len(tokenize_windows(prompt, tokenizers[1], 246).token_ids) == 3
    assert coverage.summary.endswith("(Long-CLIP in 3 windows of 246, 1 of them empty: no words before a BREAK).")
    read = generation.long_read(tiny_models.pair("SD 1.5").long, prompt)
    assert str(read) == "4 tokens in 3 windows, 1 empty"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("", "Type a prompt first."), ("a (cat:50)", "In the prompt: (cat:50): weight 50 is outside the range 0 to 10")],
)
def test_a_refused_request_clears_the_last_result_and_says_why_once(tiny_models, prompt, message):
    first = respond(tiny_models, "SD 1.5", "a lighthouse", "", 0, 1, 7.5, 64, 64)
    assert first[0] is not None and "both encoders read the whole prompt" in first[2] and first[-1] == ""
    refused = respond(tiny_models, "SD 1.5", prompt, "", 0, 1, 7.5, 64, 64)
    assert refused[:-1] == (None, None, "", None, "")  # images, summary, highlight, scores: all cleared
    assert refused[-1].startswith(message)


def test_a_long_prompt_logs_no_indexing_errors_and_no_huge_lines(tiny_models, monkeypatch):
    pair = tiny_models.pair("SD 1.5")
    records = LogRecords()
    names = ("transformers.tokenization_utils_base", type(pair.stock).__module__)
    for name in names:
        monkeypatch.setattr(logging.getLogger(name), "handlers", [records])
    # transformers warns once per tokenizer: make this request the first
    monkeypatch.setattr(pair.stock.tokenizer, "deprecation_warnings", {})
    prompt = "lighthouse, " * 600  # 1,200 tokens, 7,200 characters
    compare(tiny_models, "SD 1.5", prompt[:4000], "", 0, 1, 7.5, 64, 64)
    assert not any("indexing errors" in message for message in records.messages)
    truncated = [message for message in records.messages if "truncated because CLIP" in message]
    assert len(truncated) == 1 and truncated[0].endswith("more characters)")
    assert len(truncated[0]) < generation.LOGGED_PROMPT_CHARS + 40
    pair.stock.tokenizer.deprecation_warnings.clear()  # outside the pipelines the warning is as it was
    pair.stock.tokenizer(prompt)
    assert any("indexing errors" in message for message in records.messages)


@pytest.fixture
def no_hub(monkeypatch):
    """No Hugging Face Hub here: fail the test if anything asks it (the Hub mocked, as the only network part)."""
    import huggingface_hub

    def asked(*args, **kwargs):
        pytest.fail("the Hub was asked")

    for name in ("hf_hub_download", "list_repo_files", "snapshot_download", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, asked)
        monkeypatch.setattr(f"huggingface_hub.file_download.{name}", asked, raising=False)


def test_a_typo_in_a_local_path_is_refused_at_once(tiny_components, tmp_path, monkeypatch, no_hub):
    # it cost ~40 s of Hub retries, then the demo started on the tiny models without saying why
    for variable in [base.environment for base in BASES.values()] + list(app.ENVIRONMENT.values()):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(app, "load_pipelines", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.chdir(tiny_components)
    encoder = ["--long-encoder", "longclip-sd15"]
    with pytest.raises(FileNotFoundError) as refused:
        app.load_models(demo_arguments("--sd15", "sd15x", *encoder))  # one word: no Hub id either
    assert str(refused.value) == "sd15x: no such file or folder (the SD 1.5 pipeline, from --sd15 or LONGCLIP_SD15)."
    with pytest.raises(FileNotFoundError, match=r"^sd3/typo: no such file or folder \(the SD 3 pipeline"):
        app.load_models(demo_arguments("--sd15", "sd15", "--sd3", "sd3/typo", *encoder))  # `sd3/` is a folder here
    monkeypatch.setenv("LONGCLIP_ENCODER", str(tmp_path / "long.pt"))
    with pytest.raises(FileNotFoundError, match="the SD 1.5 Long-CLIP encoder, from --long-encoder or LONGCLIP_ENC"):
        app.load_models(demo_arguments("--sd15", "sd15"))


def test_named_models_that_do_not_load_are_an_error_not_a_fallback(tiny_components, tmp_path, monkeypatch, no_hub):
    for variable in [base.environment for base in BASES.values()] + list(app.ENVIRONMENT.values()):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(app, "load_tiny_models", lambda: pytest.fail("the demo fell back to the tiny models"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="no diffusers pipeline there"):
        app.load_models(demo_arguments("--sd15", tmp_path / "empty", "--long-encoder", tiny_components / "longclip-l"))
