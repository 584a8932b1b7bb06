"""The demo's logic without a browser: token coverage against the real tokenizers, bounds, scoring, requests."""

import gradio as gr
import open_clip
import pytest
import torch
from PIL import Image

from longclip_diffusers import LongCLIPTokenizer
from longclip_diffusers.demo.app import AlignmentScorer, Models, Sources, compare, validate
from longclip_diffusers.demo.tokens import DROPPED, LONG_ONLY, prompt_coverage
from longclip_diffusers.tiny import tiny_clip_tokenizer

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


def test_short_prompts_are_read_whole_by_both(tokenizers):
    coverage = prompt_coverage("a lighthouse at dusk", *tokenizers)
    assert coverage.spans == [("a lighthouse at dusk", None)]
    assert coverage.tokens == coverage.vanilla_reads == coverage.long_reads == 4
    assert "both encoders read the whole prompt" in coverage.summary


def test_the_highlight_starts_exactly_where_the_stock_pipeline_truncates(tokenizers):
    vanilla, long = tokenizers
    coverage = prompt_coverage(LONG_PROMPT, vanilla, long)
    (seen, none), (unseen, label) = coverage.spans
    assert none is None and label == LONG_ONLY and seen + unseen == LONG_PROMPT
    truncated = vanilla(LONG_PROMPT, max_length=77, truncation=True).input_ids[1:-1]  # what the stock pipeline keeps
    assert vanilla(seen, add_special_tokens=False).input_ids == truncated
    assert coverage.tokens == len(long(LONG_PROMPT, add_special_tokens=False).input_ids) > 77
    assert coverage.vanilla_reads == 75 and coverage.long_reads == coverage.tokens
    assert "reads the first 75" in coverage.summary and f"Long-CLIP reads all {coverage.tokens}" in coverage.summary


def test_a_long_clip_limit_marks_the_dropped_words(tokenizers):
    coverage = prompt_coverage(LONG_PROMPT, *tokenizers, long_limit=90)
    assert [label for _, label in coverage.spans] == [None, LONG_ONLY, DROPPED]
    assert "".join(text for text, _ in coverage.spans) == LONG_PROMPT
    assert coverage.long_reads == 90


@pytest.mark.parametrize(
    ("prompt", "steps", "width", "height", "guidance", "message"),
    [
        ("", 4, 64, 64, 7.5, "Type a prompt"),
        ("x" * 4001, 4, 64, 64, 7.5, "at most 4000"),
        ("a cat", 0, 64, 64, 7.5, "Steps must be between 1 and 100"),
        ("a cat", 4, 66, 64, 7.5, "Width must be a multiple of 8"),
        ("a cat", 4, 64, 2048, 7.5, "Height must be a multiple of 8 between 64 and 1024"),
        ("a cat", 4, 64, 64, 99, "Guidance must be between 0 and 30"),
    ],
)
def test_inputs_are_bounded(prompt, steps, width, height, guidance, message):
    with pytest.raises(ValueError, match=message):
        validate(prompt, steps, width, height, guidance)


@pytest.fixture(scope="module")
def tiny_models(tiny_components):
    sources = Sources(
        {"SD 1.5": str(tiny_components / "sd15"), "SDXL": str(tiny_components / "sdxl")},
        str(tiny_components / "longclip-sd15"),
        tiny=True,
    )
    return Models(sources)


@pytest.mark.parametrize("base", ["SD 1.5", "SDXL"])
def test_a_request_returns_both_images_and_the_coverage(tiny_models, base):
    vanilla, long, summary, spans, scores = compare(tiny_models, base, LONG_PROMPT, "blurry", 3, 2, 7.5, 64, 64)
    assert vanilla.size == long.size == (64, 64)
    assert vanilla.tobytes() != long.tobytes()
    assert "vanilla CLIP reads the first 75" in summary and spans[-1][1] == LONG_ONLY
    assert "vision tower" in scores  # the tiny Long-CLIP is text only
    assert tiny_models.pair(base) is tiny_models.pair(base)  # loaded once
    assert tiny_models.pair(base).long.unet is tiny_models.pair(base).stock.unet


def test_bad_requests_become_messages_not_crashes(tiny_models):
    with pytest.raises(gr.Error, match="Type a prompt first"):
        compare(tiny_models, "SD 1.5", "  ", "", 0, 2, 7.5, 64, 64)
    with pytest.raises(gr.Error, match="Choose a base"):
        compare(tiny_models, "../../etc", "a cat", "", 0, 2, 7.5, 64, 64)


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
