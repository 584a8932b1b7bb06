"""The ComfyUI nodes, driven the way ComfyUI's executor drives them; conditioning equal to the pipelines'."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy_fakes import LONG, PROMPTS, SHORT, WEIGHTED, WINDOWS, FakeComfyCLIP, install_comfy_stubs
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from longclip_diffusers import CheckpointError, LongCLIPTokenizer, stretch_model
from longclip_diffusers.comfyui import (
    CATEGORY,
    LONGCLIP,
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    LongCLIP,
    LongCLIPLoader,
    LongCLIPStretch,
    LongCLIPTextEncode,
    LongCLIPTextEncodeSDXL,
    host,
)
from longclip_diffusers.formats import checkpoint_from_state_dict, infer_open_clip_model
from longclip_diffusers.pipelines import LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline
from longclip_diffusers.tiny import tiny_text_config

SD_LONG = "longclip-sd15/text_encoder/model.safetensors"  # as ComfyUI lists a diffusers folder's weights
SDXL_LONG = "longclip-sdxl/text_encoder/model.safetensors"
SDXL_G = "sdxl/text_encoder_2/model.safetensors"
SIZES = dict(width=1024, height=768, crop_w=0, crop_h=16, target_width=1024, target_height=768)


def call(node_class: type, **inputs):
    """Run a node as ComfyUI's executor does: a fresh instance, FUNCTION called with the inputs by name."""
    return getattr(node_class(), node_class.FUNCTION)(**inputs)


def cond_of(conditioning: list) -> tuple[torch.Tensor, dict]:
    assert isinstance(conditioning, list) and len(conditioning) == 1
    tensor, extras = conditioning[0]
    return tensor, extras


def openai_like_config(hidden_size: int, projection_dim: int = 32):
    """A tiny CLIP text config with OpenAI's 64-wide heads, so a weights-only copy is read back the same."""
    config = tiny_text_config(hidden_size, projection_dim)
    config.num_attention_heads = hidden_size // 64
    config.num_hidden_layers = 3
    return config


# ----------------------------------------------------------------------------------------------------------
# Fixtures: ComfyUI faked, the tiny pipelines, and the encoders loaded by the loader node from its folder
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def comfy(monkeypatch, tiny_components):
    """ComfyUI's modules faked, with the tiny components as the text encoder folder."""
    return install_comfy_stubs(monkeypatch, tiny_components)


@pytest.fixture(scope="module")
def sd_pipe(tiny_components, long_parts):
    stock = StableDiffusionPipeline.from_pretrained(tiny_components / "sd15")
    text_encoder, tokenizer = long_parts("sd15")
    return LongCLIPStableDiffusionPipeline.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_components, long_parts):
    stock = StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl")
    text_encoder, tokenizer = long_parts("sdxl")
    return LongCLIPStableDiffusionXLPipeline.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def loaded(tiny_components):
    """{"sd": clip_l, "l": clip_l, "g": clip_g} loaded by the loader node from ComfyUI's (faked) model folder."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        install_comfy_stubs(monkeypatch, tiny_components)
        return {
            "sd": call(LongCLIPLoader, text_encoder=SD_LONG, clip_type="clip_l")[0],
            "l": call(LongCLIPLoader, text_encoder=SDXL_LONG, clip_type="clip_l")[0],
            "g": call(LongCLIPLoader, text_encoder=SDXL_G, clip_type="clip_g")[0],
        }


@pytest.fixture(scope="module")
def big_g():
    """A bigG stand-in a weights-only copy reads back exactly (64-wide heads), with its projection."""
    torch.manual_seed(3)
    return CLIPTextModelWithProjection(openai_like_config(128)).eval()


# ----------------------------------------------------------------------------------------------------------
# The node contract
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_every_node_follows_comfyuis_contract(name, comfy):
    node_class = NODE_CLASS_MAPPINGS[name]
    assert name in NODE_DISPLAY_NAME_MAPPINGS
    assert node_class.CATEGORY == CATEGORY == "Long-CLIP"
    assert callable(getattr(node_class, node_class.FUNCTION))
    assert isinstance(node_class.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in node_class.RETURN_TYPES)
    schema = node_class.INPUT_TYPES()
    assert set(schema) <= {"required", "optional"} and schema["required"]
    for section in schema.values():
        for input_name, spec in section.items():
            assert isinstance(spec, tuple) and len(spec) == 2, input_name
            kind, options = spec
            assert isinstance(kind, (str, list)) and isinstance(options, dict), input_name
            if isinstance(kind, list) and "default" in options:
                assert options["default"] in kind
            if "default" in options and "min" in options:
                assert options["min"] <= options["default"] <= options["max"]
    parameters = node_class.__dict__[node_class.FUNCTION].__code__.co_varnames
    assert all(input_name in parameters for section in schema.values() for input_name in section)


def test_input_and_output_types_connect(comfy):
    assert LongCLIPLoader.RETURN_TYPES == LongCLIPStretch.RETURN_TYPES == (LONGCLIP,)
    assert LongCLIPTextEncode.RETURN_TYPES == LongCLIPTextEncodeSDXL.RETURN_TYPES == ("CONDITIONING",)
    assert LongCLIPTextEncode.INPUT_TYPES()["required"]["long_clip"][0] == LONGCLIP
    sdxl = LongCLIPTextEncodeSDXL.INPUT_TYPES()["required"]
    assert sdxl["long_clip"][0] == sdxl["clip_g"][0] == LONGCLIP
    assert set(SIZES) <= set(sdxl)  # the size fields of ComfyUI's CLIPTextEncodeSDXL
    assert sdxl["strategy"][0] == ["chunk", "stretch"]
    assert LongCLIPStretch.INPUT_TYPES()["required"]["clip"][0] == "CLIP"  # ComfyUI's own CLIP socket


def test_the_loader_lists_comfyuis_text_encoder_folder(comfy):
    names = LongCLIPLoader.INPUT_TYPES()["required"]["text_encoder"][0]
    assert SD_LONG in names and SDXL_G in names
    assert all(not name.startswith("/") for name in names)


def test_outside_comfyui_the_loader_lists_nothing_and_reads_local_paths(tiny_components):
    assert LongCLIPLoader.INPUT_TYPES()["required"]["text_encoder"][0] == []
    (long_clip,) = call(LongCLIPLoader, text_encoder=str(tiny_components / "longclip-sd15"), clip_type="clip_l")
    assert long_clip.num_positions == 248 and long_clip.text_encoder.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="no such file"):
        call(LongCLIPLoader, text_encoder=str(tiny_components / "missing.safetensors"), clip_type="clip_l")


def test_inside_comfyui_the_loader_reads_only_its_folders(comfy, published_pt):
    path, _ = published_pt
    assert path.is_file()
    for name in (str(path), "../" + path.name, "missing.safetensors"):
        with pytest.raises(FileNotFoundError, match="not in ComfyUI's models/text_encoders"):
            call(LongCLIPLoader, text_encoder=name, clip_type="clip_l")


def test_the_loader_reads_devices_and_dtypes_from_comfyui(monkeypatch, tiny_components):
    _, model_management = install_comfy_stubs(monkeypatch, tiny_components, dtype=torch.float8_e4m3fn)
    assert host.model_dtype() == torch.float32  # CPU: float32 whatever ComfyUI stores text encoders in
    monkeypatch.setattr(model_management, "text_encoder_device", lambda: torch.device("cuda"))
    assert host.model_dtype() == torch.float16  # fp8 is storage only for a plain transformers model
    monkeypatch.setattr(model_management, "text_encoder_dtype", lambda device=None: torch.bfloat16)
    assert host.model_dtype() == torch.bfloat16


def test_the_loader_sets_up_each_role(loaded):
    sd, g = loaded["sd"], loaded["g"]
    assert isinstance(sd, LongCLIP) and sd.clip_type == "clip_l" and sd.num_positions == 248
    assert sd.tokenizer.pad_token == "<|endoftext|>"
    assert g.clip_type == "clip_g" and g.has_projection and g.num_positions == 77
    assert g.tokenizer.pad_token == "!" and g.tokenizer.model_max_length == 77  # as SDXL's tokenizer_2


# ----------------------------------------------------------------------------------------------------------
# SD 1.5: the node's conditioning is the pipeline's
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_sd15_node_equals_the_pipeline(prompt, loaded, sd_pipe):
    text = PROMPTS[prompt]
    for clip_skip in (0, 1):
        conditioning = call(LongCLIPTextEncode, long_clip=loaded["sd"], text=text, clip_skip=clip_skip)[0]
        cond, extras = cond_of(conditioning)
        expected, _ = sd_pipe.encode_prompt(text, "cpu", 1, False, clip_skip=clip_skip or None)
        assert torch.equal(cond, expected)
        assert set(extras) == {"pooled_output"}
    assert cond.shape == (1, WINDOWS[prompt] * 248, 32) and cond.dtype == torch.float32


def test_sd15_node_matches_the_pipelines_positive_and_negative(loaded, sd_pipe):
    negative = "blurry, low quality, watermark, " * 50  # two windows, as LONG
    expected, expected_negative = sd_pipe.encode_prompt(LONG, "cpu", 1, True, negative_prompt=negative)
    for text, embeds in ((LONG, expected), (negative, expected_negative)):
        cond, _ = cond_of(call(LongCLIPTextEncode, long_clip=loaded["sd"], text=text)[0])
        assert torch.equal(cond, embeds)


def test_sd15_node_options(loaded):
    plain, _ = cond_of(call(LongCLIPTextEncode, long_clip=loaded["sd"], text=WEIGHTED, weighting=False)[0])
    weighted, _ = cond_of(call(LongCLIPTextEncode, long_clip=loaded["sd"], text=WEIGHTED)[0])
    assert plain.shape == (1, 248, 32) and weighted.shape == (1, 2 * 248, 32)  # BREAK is weighting syntax too
    capped, _ = cond_of(call(LongCLIPTextEncode, long_clip=loaded["sd"], text=LONG, max_windows=1)[0])
    assert capped.shape == (1, 248, 32)
    with pytest.raises(ValueError, match="clip_skip=5 is out of range"):
        call(LongCLIPTextEncode, long_clip=loaded["sd"], text=SHORT, clip_skip=5)
    with pytest.raises(ValueError, match="SD 1.x reads a clip_l encoder"):
        call(LongCLIPTextEncode, long_clip=loaded["g"], text=SHORT)


# ----------------------------------------------------------------------------------------------------------
# SDXL: the node's conditioning and pooled output are the pipeline's, both strategies
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["chunk", "stretch"])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_sdxl_node_equals_the_pipeline(prompt, strategy, loaded, sdxl_pipe):
    text = PROMPTS[prompt]
    pipe = LongCLIPStableDiffusionXLPipeline.from_pipe(sdxl_pipe, long_prompt_strategy=strategy)
    inputs = dict(long_clip=loaded["l"], clip_g=loaded["g"], text=text, strategy=strategy, **SIZES)
    cond, extras = cond_of(call(LongCLIPTextEncodeSDXL, **inputs)[0])
    expected, _, pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)
    assert {key: extras[key] for key in SIZES} == SIZES
    assert cond.shape == (1, WINDOWS[prompt] * 248, 64) and extras["pooled_output"].shape == (1, 32)

    cond, extras = cond_of(call(LongCLIPTextEncodeSDXL, **inputs, text_g="an oil painting", clip_skip=1)[0])
    expected, _, pooled, _ = pipe.encode_prompt(
        text, prompt_2="an oil painting", device="cpu", do_classifier_free_guidance=False, clip_skip=1
    )
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)


def test_sdxl_node_matches_the_pipelines_positive_prompt_under_guidance(loaded, sdxl_pipe):
    expected, _, pooled, _ = sdxl_pipe.encode_prompt(LONG, device="cpu", negative_prompt="blurry")
    cond, extras = cond_of(
        call(LongCLIPTextEncodeSDXL, long_clip=loaded["l"], clip_g=loaded["g"], text=LONG, **SIZES)[0]
    )
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)


def test_sdxl_node_refuses_swapped_encoders(loaded):
    with pytest.raises(ValueError, match="Connect a Long-CLIP-L loaded as clip_l to `long_clip`"):
        call(LongCLIPTextEncodeSDXL, long_clip=loaded["g"], clip_g=loaded["l"], text=SHORT, **SIZES)


# ----------------------------------------------------------------------------------------------------------
# Long-CLIP from a ComfyUI CLIP (e.g. a checkpoint's own clip_g / clip_l), stretched without training
# ----------------------------------------------------------------------------------------------------------


def test_bigg_from_a_checkpoints_clip_equals_the_pipeline_with_that_bigg(loaded, sdxl_pipe, big_g, comfy):
    clip = FakeComfyCLIP(clip_l=sdxl_pipe.text_encoder, clip_g=big_g)
    (as_is,) = call(LongCLIPStretch, clip=clip, clip_type="clip_g", keep=20, ratio=1)
    (stretched,) = call(LongCLIPStretch, clip=clip, clip_type="clip_g", keep=20, ratio=4)
    assert as_is.num_positions == 77 and stretched.num_positions == 248 and stretched.has_projection
    for strategy, clip_g in (("chunk", as_is), ("stretch", as_is), ("chunk", stretched)):
        pipe = LongCLIPStableDiffusionXLPipeline.from_pipe(
            sdxl_pipe, text_encoder_2=big_g, long_prompt_strategy="stretch" if clip_g is stretched else strategy
        )
        inputs = dict(long_clip=loaded["l"], clip_g=clip_g, text=LONG, strategy=strategy, **SIZES)
        cond, extras = cond_of(call(LongCLIPTextEncodeSDXL, **inputs)[0])
        expected, _, pooled, _ = pipe.encode_prompt(LONG, device="cpu", do_classifier_free_guidance=False)
        assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled), strategy


def test_long_clip_l_from_a_checkpoints_clip_equals_a_stretched_encoder(sd_pipe, comfy):
    torch.manual_seed(4)
    clip_l = CLIPTextModel(openai_like_config(64)).eval()
    (long_clip,) = call(LongCLIPStretch, clip=FakeComfyCLIP(clip_l=clip_l), clip_type="clip_l", keep=20, ratio=4)
    assert long_clip.num_positions == 248 and not long_clip.has_projection
    pipe = LongCLIPStableDiffusionPipeline.from_pipe(
        sd_pipe, text_encoder=stretch_model(copy.deepcopy(clip_l)), tokenizer=LongCLIPTokenizer.from_clip_bpe()
    )
    cond, _ = cond_of(call(LongCLIPTextEncode, long_clip=long_clip, text=LONG)[0])
    assert torch.equal(cond, pipe.encode_prompt(LONG, "cpu", 1, False)[0])


def test_stretch_node_refuses_what_it_cannot_make(big_g, comfy):
    with pytest.raises(ValueError, match=r"This CLIP has no clip_g text encoder \(it has: clip_l\)"):
        call(LongCLIPStretch, clip=FakeComfyCLIP(clip_l=big_g), clip_type="clip_g", keep=20, ratio=4)
    with pytest.raises(ValueError, match="ratio 4 makes a 248-position Long-CLIP-L"):
        call(LongCLIPStretch, clip=FakeComfyCLIP(clip_l=big_g), clip_type="clip_l", keep=20, ratio=1)


# ----------------------------------------------------------------------------------------------------------
# Loader errors and weights-only files
# ----------------------------------------------------------------------------------------------------------


def test_the_loader_refuses_a_short_clip_l_and_a_clip_g_without_projection(comfy):
    with pytest.raises(CheckpointError, match='plain CLIP, not Long-CLIP.*"Long-CLIP from CLIP'):
        call(LongCLIPLoader, text_encoder="sd15/text_encoder/model.safetensors", clip_type="clip_l")
    with pytest.raises(CheckpointError, match="has no text projection"):
        call(LongCLIPLoader, text_encoder=SD_LONG, clip_type="clip_g")
    with pytest.raises(ValueError, match="Unknown clip_type 'clip_h'"):
        call(LongCLIPLoader, text_encoder=SD_LONG, clip_type="clip_h")


def test_weights_only_bigg_and_h_get_open_clips_heads_and_activation():
    def shapes(layers: int, width: int) -> dict[str, torch.Tensor]:  # shapes only: meta tensors
        def meta(*shape):
            return torch.empty(shape, device="meta")

        tensors = {
            "text_model.embeddings.token_embedding.weight": meta(49408, width),
            "text_model.embeddings.position_embedding.weight": meta(77, width),
            "text_model.final_layer_norm.weight": meta(width),
            "text_projection.weight": meta(width, width),
        }
        for i in range(layers):
            tensors[f"text_model.encoder.layers.{i}.mlp.fc1.weight"] = meta(4 * width, width)
        return tensors

    for layers, width, architecture, heads in ((32, 1280, "ViT-bigG-14", 20), (24, 1024, "ViT-H-14", 16)):
        state_dict = shapes(layers, width)
        assert infer_open_clip_model(state_dict) == architecture
        config = checkpoint_from_state_dict(state_dict, path="clip.safetensors").text_config
        assert (config.num_attention_heads, config.hidden_act) == (heads, "gelu")
    assert infer_open_clip_model(shapes(12, 768)) is None  # CLIP-L: OpenAI's conventions
    assert checkpoint_from_state_dict(shapes(12, 768), path="clip_l.safetensors").text_config.hidden_act == "quick_gelu"
