"""What every family's Long-CLIP text-to-image pipeline shares, checked across the families: with the stock encoders
and a short prompt nothing changes; a saved pipeline loads back with the installed class, as a diffusers custom
pipeline, and with plain diffusers in a fresh process (all families in one process).

The stock pipelines' `encode_prompt` runs under `torch.no_grad()` inside `__call__`; T5's attention gives other
last bits with autograd on, so parity is checked as the pipelines call it, without grad.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from helpers.pipelines import CFG_ENCODE_KWARGS, HEAD, MIDDLE, PAST_248, TAIL_A, generate, reload_in_fresh_process

import longclip_diffusers.pipelines as long_pipelines
from longclip_diffusers.families import FAMILIES
from longclip_diffusers.pipelines import FLUX_PIPELINE_DIR, SD3_PIPELINE_DIR, SD_PIPELINE_DIR, SDXL_PIPELINE_DIR

PROMPTS = ["a lighthouse at dusk", "a red boat"]
SD = {"device": "cpu", "num_images_per_prompt": 2, "do_classifier_free_guidance": True}
SD3 = {"prompt_2": None, "prompt_3": None, "device": "cpu"}  # the stock SD 3 pipeline takes them positionally
NO_T5 = {"text_encoder_3": None, "tokenizer_3": None}  # SD 3 runs without T5: zeros in its place
ALL, PROMPT_SIDE = "all", "prompt side"
# clip_skip: the stock SDXL and SD 3 pipelines apply it to the prompt only (their negative reads layer -2
# regardless); ours apply it to both, so those cases compare the prompt side (embeds and pooled vector).
STOCK_CASES = [
    pytest.param("sd15", {}, {**SD, "negative_prompt": ["blurry", "dark, low quality"]}, ALL, id="sd15"),
    # SD 2.x: an OpenCLIP-H padding with "!", v-prediction
    pytest.param("sd2", {}, {**SD, "negative_prompt": ["blurry", "dark, low quality"]}, ALL, id="sd2"),
    pytest.param(
        "sdxl", {}, {"device": "cpu", "num_images_per_prompt": 2, "negative_prompt": ["blurry", "dark"]}, ALL, id="sdxl"
    ),
    pytest.param("sdxl", {}, {"device": "cpu", "num_images_per_prompt": 2}, ALL, id="sdxl-zeros-for-no-negative"),
    pytest.param(
        "sdxl",
        {},
        {
            "device": "cpu",
            "num_images_per_prompt": 2,
            "negative_prompt": "blurry",
            "prompt_2": ["an oil painting", "a photo"],
            "negative_prompt_2": "dark",
        },
        ALL,
        id="sdxl-prompt_2",
    ),
    pytest.param(
        "sdxl", {}, {"device": "cpu", "negative_prompt": "blurry", "clip_skip": 1}, PROMPT_SIDE, id="sdxl-clip-skip"
    ),
    pytest.param("sd3", {}, {**SD3, "num_images_per_prompt": 2, "negative_prompt": ["blurry", "dark"]}, ALL, id="sd3"),
    pytest.param("sd3", {}, {**SD3, "num_images_per_prompt": 2}, ALL, id="sd3-empty-negative"),
    pytest.param(
        "sd3",
        {},
        {
            **SD3,
            "num_images_per_prompt": 2,
            "prompt_2": ["an oil painting", "a photo"],
            "prompt_3": ["a lighthouse, seen from the sea", "a boat in a harbour"],
            "negative_prompt": "blurry",
            "negative_prompt_2": "dark",
            "negative_prompt_3": "noise",
        },
        ALL,
        id="sd3-prompt_2-prompt_3",
    ),
    pytest.param("sd3", {}, {**SD3, "negative_prompt": "blurry", "clip_skip": 1}, PROMPT_SIDE, id="sd3-clip-skip"),
    pytest.param("sd3", NO_T5, SD3, ALL, id="sd3-without-t5"),
    pytest.param("flux", {}, {"device": "cpu", "num_images_per_prompt": 2}, ALL, id="flux"),
    pytest.param(
        "flux",
        {},
        {
            "device": "cpu",
            "num_images_per_prompt": 2,
            "prompt_2": ["an oil painting of a lighthouse", "a photo of a boat"],
        },
        ALL,
        id="flux-prompt_2",
    ),
]
# What each family's image parity runs with: Flux reads the negative through encode_prompt too (true CFG).
IMAGE_CASES = {
    "sd15": ("a lighthouse at dusk", {}),
    "sd2": ("a lighthouse at dusk", {}),
    "sdxl": ("a lighthouse at dusk", {}),
    "sd3": ("a lighthouse at dusk", {}),
    "flux": ("a lighthouse", {"negative_prompt": "blurry", "true_cfg_scale": 2.0}),
}
FLUX_SIZE = {"height": 64, "width": 64}  # FluxPipeline's default size is not the model's
# Saved and reloaded per family: a setting besides the defaults, the prompt, and what encode_prompt is called with.
SAVED = {
    "sd15": ({"max_prompt_windows": 3}, HEAD + TAIL_A, CFG_ENCODE_KWARGS, {}),
    "sdxl": ({"long_prompt_strategy": "stretch"}, HEAD + PAST_248 + TAIL_A, CFG_ENCODE_KWARGS, {}),
    "sd3": ({"long_prompt_strategy": "stretch"}, HEAD + PAST_248 + TAIL_A, CFG_ENCODE_KWARGS, {}),
    "flux": ({"prompt_weighting": False}, "a (red:1.5) boat, " + HEAD + MIDDLE + TAIL_A, {}, FLUX_SIZE),
}
# The conditioning's shape for the saved prompt: [1, CLIP windows * 248 (+ T5 rows), width]
PIPELINE_DIRS = {"sd15": SD_PIPELINE_DIR, "sdxl": SDXL_PIPELINE_DIR, "sd3": SD3_PIPELINE_DIR, "flux": FLUX_PIPELINE_DIR}
SAVED_SHAPES = {"sd15": (1, 248, 32), "sdxl": (1, 2 * 248, 64), "sd3": (1, 2 * 248 + 256, 80), "flux": (1, 512, 80)}


def long_class(key: str) -> type:
    return getattr(long_pipelines, FAMILIES[key].long_pipeline)


@torch.no_grad()
@pytest.mark.parametrize(("family", "components", "kwargs", "compared"), STOCK_CASES)
def test_with_stock_encoders_and_short_prompts_the_conditioning_is_the_stock_one(
    stock_pipeline, family, components, kwargs, compared
):
    stock = stock_pipeline(family)
    if components:
        stock = type(stock).from_pipe(stock, **components)
    ours = long_class(family).from_pipe(stock)
    expected, actual = stock.encode_prompt(PROMPTS, **kwargs), ours.encode_prompt(PROMPTS, **kwargs)
    if compared == PROMPT_SIDE:
        expected, actual = (expected[0], expected[2]), (actual[0], actual[2])
    assert len(expected) == len(actual)
    assert all(torch.equal(e, a) for e, a in zip(expected, actual, strict=True)), kwargs


@pytest.mark.parametrize("family", list(IMAGE_CASES))
def test_with_stock_encoders_and_a_short_prompt_the_image_is_the_stock_one(stock_pipeline, family):
    stock = stock_pipeline(family)
    ours = long_class(family).from_pipe(stock)
    prompt, kwargs = IMAGE_CASES[family]
    assert np.array_equal(generate(stock, prompt, **kwargs), generate(ours, prompt, **kwargs))


@pytest.fixture(scope="module")
def saved(long_pipeline, tmp_path_factory):
    """Each family's Long-CLIP pipeline with its `SAVED` setting, saved: {family: (pipeline, folder)}."""
    folders = {}
    for family, (settings, *_) in SAVED.items():
        ours = long_class(family).from_pipe(long_pipeline(family), **settings)
        folder = tmp_path_factory.mktemp(family) / "pipe"
        ours.save_pretrained(folder)
        folders[family] = (ours, folder)
    return folders


@torch.no_grad()
def encode_saved(pipe, family: str):
    _, prompt, encode_kwargs, _ = SAVED[family]
    return pipe.encode_prompt(prompt=prompt, device="cpu", num_images_per_prompt=1, **encode_kwargs)


@pytest.mark.parametrize("family", list(SAVED))
def test_a_saved_pipeline_reloads_with_the_installed_class(saved, family):
    ours, folder = saved[family]
    cls, (settings, *_) = long_class(family), SAVED[family]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == [cls.code_file, cls.__name__]
    assert all(index[name] == value for name, value in settings.items())
    reloaded = cls.from_pretrained(folder)
    assert type(reloaded) is cls  # the installed class, no saved code
    assert all(reloaded.config[name] == value for name, value in settings.items())
    assert reloaded.config.prompt_weighting == settings.get("prompt_weighting", True)
    assert torch.equal(encode_saved(reloaded, family)[0], encode_saved(ours, family)[0])


@pytest.fixture(scope="module")
def reloaded(saved, tmp_path_factory):
    """Every saved family loaded back with plain diffusers, in one fresh interpreter."""
    jobs = [
        {"folder": folder, "prompt": SAVED[family][1], "encode": SAVED[family][2], "call": SAVED[family][3]}
        for family, (_, folder) in saved.items()
    ]
    return dict(zip(saved, reload_in_fresh_process(jobs, tmp_path_factory.mktemp("fresh")), strict=True))


@pytest.mark.parametrize("family", list(SAVED))
def test_a_saved_pipeline_reloads_with_plain_diffusers_in_a_fresh_process(saved, reloaded, family):
    ours, folder = saved[family]
    cls, (settings, prompt, _, call_kwargs) = long_class(family), SAVED[family]
    result = reloaded[family]
    assert result["class"] == f"diffusers_modules.local.{cls.code_file}.{cls.__name__}"
    assert all(result["config"][name] == value for name, value in settings.items())
    assert result["config"]["tokenizer"] == ("longclip_diffusers.tokenizer", "LongCLIPTokenizer")
    saved_code = (folder / f"{cls.code_file}.py").read_text()
    assert saved_code == Path(sys.modules[cls.__module__].__file__).read_text()
    expected = encode_saved(ours, family)
    assert expected[0].shape == SAVED_SHAPES[family]
    assert all(torch.equal(e, r) for e, r in zip(expected, result["embeds"], strict=True))
    assert np.array_equal(result["image"].numpy(), generate(ours, prompt, **call_kwargs))


@pytest.mark.parametrize("family", list(SAVED))
def test_a_saved_pipeline_without_trust_remote_code_says_what_to_pass(saved, family):
    _, folder = saved[family]
    code_file = long_class(family).code_file
    with pytest.raises(ValueError, match=f"(?s)custom code in {code_file}.py .*Pass `trust_remote_code=True`"):
        DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize("family", list(SAVED))
def test_save_pretrained_refuses_push_to_hub_before_writing(long_pipeline, family, tmp_path):
    with pytest.raises(ValueError, match="push_to_hub is not supported here: save_pretrained\\(folder\\), then upload"):
        long_pipeline(family).save_pretrained(tmp_path / "pipe", push_to_hub=True)
    assert not (tmp_path / "pipe").exists()


@pytest.mark.parametrize("family", list(SAVED))
def test_loads_as_a_diffusers_custom_pipeline(tiny_components, long_pipeline, family, monkeypatch):
    # diffusers imports every local custom pipeline as `diffusers_modules.local.pipeline`; a second, different
    # one in the same process would land in the first one's module (a diffusers limitation, not ours).
    monkeypatch.delitem(sys.modules, "diffusers_modules.local.pipeline", raising=False)
    pipe, cls = long_pipeline(family), long_class(family)
    custom = DiffusionPipeline.from_pretrained(
        tiny_components / family,
        custom_pipeline=str(PIPELINE_DIRS[family]),
        trust_remote_code=True,  # our own pipeline file, loaded the way diffusers loads community pipelines
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
    )
    assert type(custom).__name__ == cls.__name__
    assert torch.equal(encode_saved(custom, family)[0], encode_saved(pipe, family)[0])


@pytest.mark.parametrize(
    ("family", "kwargs", "message"),
    [
        ("sd15", {"clip_skip": 99}, r"clip_skip=99 is out of range for a 5-layer text encoder; give a whole number"),
        ("sdxl", {"clip_skip": 99}, r"clip_skip=99 is out of range for a \d-layer text encoder"),
        ("sd3", {"max_sequence_length": 0}, r"max_sequence_length=0; SD 3's T5 reads a whole number of tokens"),
        ("flux", {"max_sequence_length": 0}, r"max_sequence_length=0; Flux.1's T5 reads a whole number of tokens"),
    ],
)
def test_out_of_range_clip_skip_and_t5_length_get_one_line(long_pipeline, family, kwargs, message):
    sd = {"num_images_per_prompt": 1, "do_classifier_free_guidance": True} if family == "sd15" else {}
    with pytest.raises(ValueError, match=message):
        long_pipeline(family).encode_prompt("a lighthouse", device="cpu", **sd, **kwargs)


@pytest.mark.parametrize(("value", "accepted"), [(0, None), (2, 2), (None, None), (1.5, False), ("2", False)])
def test_max_prompt_windows_zero_reads_every_window_as_the_comfyui_node_does(long_pipeline, value, accepted):
    cls = long_class("sd15")
    if accepted is False:
        with pytest.raises(ValueError, match=f"max_prompt_windows={value!r}; give a whole number of windows"):
            cls.from_pipe(long_pipeline("sd15"), max_prompt_windows=value)
        return
    ours = cls.from_pipe(long_pipeline("sd15"), max_prompt_windows=value)
    embeds, _ = ours.encode_prompt(HEAD + PAST_248 + TAIL_A, "cpu", 1, True)
    assert embeds.shape[1] == 248 * (accepted or 2)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_a_text_encoder_of_the_wrong_width_is_refused_at_construction(stock_pipeline, family):
    from transformers import CLIPTextModel

    stock = stock_pipeline(family)
    config = stock.text_encoder.config.to_dict()
    config.update(hidden_size=48, intermediate_size=64)
    wide = CLIPTextModel(type(stock.text_encoder.config).from_dict(config))
    with pytest.raises(ValueError, match="text_encoder gives 48-wide conditioning but this LongCLIP"):
        long_class(family).from_pipe(stock, text_encoder=wide)


@pytest.mark.parametrize(
    ("family", "component", "message"),
    [
        # SDXL's UNet reads both encoders' states side by side (32 + 32) and bigG's pooled text_embeds (32)
        (
            "sdxl",
            "text_encoder",
            r"text_encoder gives 48-wide conditioning but this \w+'s denoiser reads text 64 wide, "
            r"32 of it from text_encoder_2 \(so 32 from text_encoder\); use text encoders of the same model",
        ),
        (
            "sdxl",
            "text_encoder_2",
            r"text_encoder_2 gives 48-wide conditioning but this \w+'s denoiser reads bigG's "
            r"pooled text_embeds 32 wide; use",
        ),
        # SD 3's transformer reads both CLIP projections side by side as its pooled vector (32 + 32)
        (
            "sd3",
            "text_encoder",
            r"text_encoder gives 48-wide conditioning but this \w+'s denoiser reads the pooled "
            r"vector 64 wide, 32 of it from text_encoder_2 \(so 32 from text_encoder\); use",
        ),
    ],
)
def test_a_clip_of_the_wrong_width_is_refused_at_construction_with_both_widths(
    stock_pipeline, family, component, message
):
    stock = stock_pipeline(family)
    text_encoder = getattr(stock, component)
    config = text_encoder.config.to_dict()
    config.update(hidden_size=48, intermediate_size=64, projection_dim=48)
    wide = type(text_encoder)(type(text_encoder.config).from_dict(config))
    with pytest.raises(ValueError, match=message) as refused:
        long_class(family).from_pipe(stock, **{component: wide})
    assert "\n" not in str(refused.value)


def test_a_t5_of_the_wrong_width_is_refused_for_sd3(stock_pipeline):
    stock = stock_pipeline("sd3")
    config = stock.text_encoder_3.config.to_dict()
    config.update(d_model=48)
    wide = type(stock.text_encoder_3)(type(stock.text_encoder_3.config).from_dict(config))
    with pytest.raises(ValueError, match=r"text_encoder_3 gives 48-wide conditioning but .* reads T5's states 80 wide"):
        long_class("sd3").from_pipe(stock, text_encoder_3=wide)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_pooled_vector_of_the_wrong_shape_gets_one_line(long_pipeline, family):
    pipe = long_pipeline(family)
    embeds, *rest = pipe.encode_prompt("a lighthouse", device="cpu", **({"prompt_2": None} if family == "flux" else {}))
    pooled = rest[1] if family == "sd3" else rest[0]
    width = pooled.shape[-1]
    given = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled[:, None]}
    if family == "sd3":
        given.update(negative_prompt_embeds=rest[0], negative_pooled_prompt_embeds=rest[2])
    message = rf"pooled_prompt_embeds has shape \[1, 1, {width}\]; give it as \[1, {width}\]"
    with pytest.raises(ValueError, match=message):
        pipe.encode_prompt(None, device="cpu", **given)


@pytest.mark.parametrize(
    ("family", "kwargs", "name"),
    [
        ("sd3", {"prompt": "a lighthouse", "prompt_3": HEAD + PAST_248}, "prompt_3"),
        ("sd3", {"prompt": "a lighthouse", "negative_prompt": HEAD + PAST_248}, "negative_prompt"),
        ("sd3", {"prompt": HEAD + PAST_248}, "prompt"),
        ("sd3", {"prompt": ["a boat", "a lighthouse"], "prompt_3": ["a boat", HEAD + PAST_248]}, "prompt_3[1]"),
        ("flux", {"prompt": "a lighthouse", "prompt_2": HEAD + PAST_248, "max_sequence_length": 256}, "prompt_2"),
    ],
)
def test_t5_warning_names_the_input_that_was_cut(long_pipeline, caplog, family, kwargs, name):
    import logging

    with caplog.at_level(logging.WARNING, logger="longclip_diffusers.prompts"):
        long_pipeline(family).encode_prompt(**{"prompt_2": None, **kwargs}, device="cpu")
    assert f"`{name}` is longer than the 256 tokens T5 reads" in caplog.text
    assert caplog.text.count("T5 does not see") == 1


def test_a_pipeline_class_on_another_familys_folder_names_the_class_to_use(tiny_components):
    message = (
        r"sd3 is a pipeline folder of SD 3 \(StableDiffusion3Pipeline\), not of Flux.1 \(FluxPipeline\) as "
        r"LongCLIPFluxPipeline needs; load it with LongCLIPStableDiffusion3Pipeline\.from_pretrained"
    )
    with pytest.raises(ValueError, match=message) as refused:
        long_class("flux").from_pretrained(tiny_components / "sd3")
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"of SDXL \(StableDiffusionXLPipeline\), not of SD 3 .* load it with "):
        long_class("sd3").from_pretrained(tiny_components / "sdxl")
