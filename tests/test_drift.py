"""`longclip drift`: its invariants, its readings against the stock pipelines' own conditioning, its report."""

import json

import pytest
import torch

from longclip_diffusers.checkpoint import CheckpointError
from longclip_diffusers.cli import main
from longclip_diffusers.drift import (
    FAMILIES,
    SUMMARY_KEYS,
    load_drift_encoder,
    measure_drift,
    prompt_token_ids,
    read_family,
)
from longclip_diffusers.drift_prompts import DRIFT_PROMPTS
from longclip_diffusers.tiny import tiny_clip_tokenizer


@pytest.fixture(scope="module")
def clip_l(tiny_components):
    """SD 3's CLIP-L (a CLIPTextModelWithProjection, 77 positions) and its training-free stretch (`longclip tiny`)."""
    return (
        load_drift_encoder(tiny_components / "sd3", subfolder="text_encoder"),
        load_drift_encoder(tiny_components / "longclip-sd3"),
    )


def test_builtin_prompts_are_many_varied_and_short():
    lengths = [len(ids) for ids in tiny_clip_tokenizer()(list(DRIFT_PROMPTS), add_special_tokens=False).input_ids]
    assert len(set(DRIFT_PROMPTS)) == len(DRIFT_PROMPTS) >= 200
    assert min(lengths) >= 5 and max(lengths) <= 75
    assert sum(n <= 18 for n in lengths) >= 30 and sum(n >= 50 for n in lengths) >= 30  # short and long ones


def test_reference_against_itself_is_zero(clip_l):
    reference, _ = clip_l
    results = measure_drift(reference, reference, DRIFT_PROMPTS[:40], progress=False)
    assert list(results) == list(FAMILIES)
    for family, drift in results.items():
        summary = drift.summary()
        if family != "flux":
            assert torch.count_nonzero(drift.rel_l2) == 0, family
            assert summary["real_tokens_rel_l2"] == summary["padding_rel_l2"] == 0.0
        assert summary["pooled_cosine"] is None if family in ("sd15", "sd2") else summary["pooled_cosine"] > 1 - 1e-6


def test_a_training_free_stretch_keeps_every_real_token_of_short_prompts(clip_l):
    reference, stretched = clip_l
    results = measure_drift(reference, stretched, progress=False)
    lengths = torch.tensor([len(ids) + 2 for ids in prompt_token_ids(DRIFT_PROMPTS, reference, stretched)])
    short = lengths <= 20
    assert short.sum() >= 30
    for family, drift in results.items():
        if family != "flux":
            assert drift.rel_l2[short][drift.real[short]].max() <= 1e-6, family
            assert drift.rel_l2[:, 21:].min() > 1e-3, family  # past the kept rows (row 20 is kept too) states move
        if drift.pooled_cosine is not None:
            assert drift.pooled_cosine[short].min() >= 1 - 1e-6, family
            assert drift.pooled_cosine[lengths > 21].max() < 1 - 1e-4, family  # an EOS past row 20 moved


def _readings(family, encoders, prompts):
    token_ids = prompt_token_ids(prompts, encoders[0], encoders[0])
    return [read_family(family, encoder, prompts, token_ids, 77) for encoder in encoders]


@torch.no_grad()
def test_sdxl_reading_is_the_stock_pipelines_conditioning(tiny_components):
    from diffusers import StableDiffusionXLPipeline

    prompts = list(DRIFT_PROMPTS[:6])
    stock = StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl")
    embeds, _, pooled, _ = stock.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    encoders = [load_drift_encoder(tiny_components / "sdxl", subfolder=f) for f in ("text_encoder", "text_encoder_2")]
    (l_states, l_pooled), (g_states, g_pooled) = _readings("sdxl", encoders, prompts)
    assert l_pooled is None  # SDXL's CLIP-L has no projection; its pooled vector comes from bigG
    torch.testing.assert_close(torch.cat([l_states, g_states], dim=-1), embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_pooled, pooled, rtol=0, atol=1e-5)


@torch.no_grad()
def test_sd3_and_flux_readings_are_the_stock_pipelines_conditioning(tiny_components):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    prompts = list(DRIFT_PROMPTS[:6])
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_components / "sd3")
    embeds, _, pooled, _ = stock.encode_prompt(prompts, None, None, device="cpu", do_classifier_free_guidance=False)
    encoders = [load_drift_encoder(tiny_components / "sd3", subfolder=f) for f in ("text_encoder", "text_encoder_2")]
    (l_states, l_pooled), (g_states, g_pooled) = _readings("sd3", encoders, prompts)
    clip_states = torch.cat([l_states, g_states], dim=-1)
    torch.testing.assert_close(clip_states, embeds[:, :77, : clip_states.shape[-1]], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([l_pooled, g_pooled], dim=-1), pooled, rtol=0, atol=1e-5)

    flux = FluxPipeline.from_pretrained(tiny_components / "flux")
    _, flux_pooled, _ = flux.encode_prompt(prompts, None, device="cpu")
    encoder = load_drift_encoder(tiny_components / "flux", subfolder="text_encoder")
    ((states, pooled),) = _readings("flux", [encoder], prompts)
    assert states is None
    torch.testing.assert_close(pooled, flux_pooled, rtol=0, atol=1e-5)


@torch.no_grad()
def test_sd15_reading_is_the_stock_pipelines_conditioning(tiny_components):
    from diffusers import StableDiffusionPipeline

    prompts = list(DRIFT_PROMPTS[:6])
    stock = StableDiffusionPipeline.from_pretrained(tiny_components / "sd15")
    embeds, _ = stock.encode_prompt(prompts, "cpu", 1, False)
    encoder = load_drift_encoder(tiny_components / "sd15", subfolder="text_encoder")
    ((states, pooled),) = _readings("sd15", [encoder], prompts)
    assert pooled is None
    torch.testing.assert_close(states, embeds, rtol=0, atol=1e-5)


def test_command_writes_json_and_plot_and_keeps_an_earlier_report(tiny_components, tmp_path, capsys):
    prompt_file = tmp_path / "mine.txt"
    prompt_file.write_text("a lighthouse at dusk\n\na corgi wearing sunglasses on a skateboard\n")
    arguments = [
        "drift",
        "--reference",
        str(tiny_components / "sd15"),
        "--reference-subfolder",
        "text_encoder",
        "--model",
        str(tiny_components / "longclip-sd15"),
        "--family",
        "sd15",
        "--prompts",
        str(prompt_file),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sd15: real tokens rel L2 ") and "wrote drift.json, drift.png" in printed
    report = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert report["prompts"] == len(DRIFT_PROMPTS) + 2
    summary = report["families"]["sd15"]
    assert list(summary) == [*SUMMARY_KEYS, "by_position"]
    assert summary["pooled_cosine"] is None and len(summary["by_position"]["rel_l2"]) == 77
    assert max(summary["by_position"]["rel_l2"][:20]) <= 1e-6 < min(summary["by_position"]["rel_l2"][21:])
    assert (tmp_path / "out" / "drift.png").read_bytes().startswith(b"\x89PNG")
    assert main(arguments) == 1
    assert "holds an earlier drift report (drift.json, drift.png)" in capsys.readouterr().err


def test_pairs_that_cannot_be_compared_are_refused_in_one_line(tiny_components, tmp_path, capsys):
    sd15 = load_drift_encoder(tiny_components / "sd15", subfolder="text_encoder")
    sd2 = load_drift_encoder(tiny_components / "sd2", subfolder="text_encoder")
    with pytest.raises(CheckpointError, match="depths differ \\(4 against 5 layers\\)"):
        measure_drift(sd15, sd2, progress=False)
    long_l = load_drift_encoder(tiny_components / "longclip-sd15")
    with pytest.raises(CheckpointError, match="--model has 77 positions, fewer than the reference's 248"):
        measure_drift(long_l, sd15, progress=False)
    with pytest.raises(ValueError, match="prompt 1 .* is longer than the 75 tokens the reference reads"):
        measure_drift(sd15, long_l, ["word " * 80], progress=False)
    long_prompts = tmp_path / "long.txt"
    long_prompts.write_text("")
    code = main(["drift", "--reference", "x", "--model", "y", "--prompts", str(long_prompts)])
    assert code == 1 and "holds no prompts" in capsys.readouterr().err


def test_eval_reports_drift_beside_retrieval(tiny_components, tmp_path):
    from PIL import Image

    from longclip_diffusers.tiny import tiny_clip_model
    from longclip_diffusers.training.eval_models import EvalModel
    from longclip_diffusers.training.eval_sets import load_jsonl
    from longclip_diffusers.training.evaluate import evaluate

    tiny_clip_model(0).save_pretrained(tmp_path / "clip")  # the CLIP `longclip-l` was stretched from
    for index, colour in enumerate(("red", "blue")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{index}.png")
    lines = [json.dumps({"image": f"{i}.png", "caption": f"a {c} square"}) for i, c in enumerate(("red", "blue"))]
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n")
    models = {"long": tiny_components / "longclip-l", "clip": EvalModel(tmp_path / "clip", max_length=77)}
    report = evaluate(
        models, {"set": load_jsonl(tmp_path / "set.jsonl")}, tmp_path / "out", drift_reference=tmp_path / "clip"
    )
    expected = measure_drift(
        load_drift_encoder(tmp_path / "clip"), load_drift_encoder(tiny_components / "longclip-l"), progress=False
    )
    assert list(report["drift"]["models"]) == ["long"]  # a 77-token baseline has no drift to report
    for family, summary in report["drift"]["models"]["long"].items():
        assert summary == {key: expected[family].summary()[key] for key in SUMMARY_KEYS}
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["drift"] == report["drift"] and "set" in written["results"]["long"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    sd15 = report["drift"]["models"]["long"]["sd15"]
    assert f"| long | sd15 | {sd15['real_tokens_rel_l2']:.4f} | {sd15['real_tokens_cosine']:.4f} |" in markdown
