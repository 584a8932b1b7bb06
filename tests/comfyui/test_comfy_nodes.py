"""The ComfyUI nodes, driven the way ComfyUI's executor drives them; conditioning equal to the pipelines'."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from helpers.comfy_fakes import (
    LONG,
    PROMPTS,
    SHORT,
    WEIGHTED,
    WINDOWS,
    FakeComfyCLIP,
    install_comfy_stubs,
    openai_like_config,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from longclip_diffusers import CheckpointError, LongCLIPTokenizer, stretch_model
from longclip_diffusers.comfyui import (
    CATEGORY,
    LONGCLIP,
    LONGCLIP_T5,
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    LongCLIP,
    LongCLIPLoader,
    LongCLIPStretch,
    LongCLIPT5FromCLIP,
    LongCLIPTextEncode,
    LongCLIPTextEncodeFlux,
    LongCLIPTextEncodeSD3,
    LongCLIPTextEncodeSDXL,
    host,
)
from longclip_diffusers.formats import checkpoint_from_state_dict
from longclip_diffusers.layouts import hf_to_canonical, infer_open_clip_model
from longclip_diffusers.pipelines import (
    LongCLIPFluxPipeline,
    LongCLIPStableDiffusion3Pipeline,
    LongCLIPStableDiffusionPipeline,
    LongCLIPStableDiffusionXLPipeline,
)
from longclip_diffusers.stretch import MAX_POSITIONS, stretched_length

SD_LONG = "longclip-sd15/text_encoder/model.safetensors"  # as ComfyUI lists a diffusers folder's weights
SDXL_LONG = "longclip-sdxl/text_encoder/model.safetensors"
SDXL_G = "sdxl/text_encoder_2/model.safetensors"
SD3_LONG = "longclip-sd3/text_encoder/model.safetensors"
SD3_G = "sd3/text_encoder_2/model.safetensors"
FLUX_LONG = "longclip-flux/text_encoder/model.safetensors"
SIZES = dict(width=1024, height=768, crop_w=0, crop_h=16, target_width=1024, target_height=768)


def call(node_class: type, **inputs):
    """Run a node as ComfyUI's executor does: a fresh instance, FUNCTION called with the inputs by name."""
    return getattr(node_class(), node_class.FUNCTION)(**inputs)


def cond_of(conditioning: list) -> tuple[torch.Tensor, dict]:
    assert isinstance(conditioning, list) and len(conditioning) == 1
    tensor, extras = conditioning[0]
    return tensor, extras


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
def sd3_pipe(tiny_components, long_parts):
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_components / "sd3")
    text_encoder, tokenizer = long_parts("sd3")
    return LongCLIPStableDiffusion3Pipeline.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def flux_pipe(tiny_components, long_parts):
    stock = FluxPipeline.from_pretrained(tiny_components / "flux")
    text_encoder, tokenizer = long_parts("flux")
    return LongCLIPFluxPipeline.from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def loaded(tiny_components, sd3_pipe, flux_pipe):
    """Encoders loaded by the loader node from ComfyUI's (faked) model folder: SD 1.5's clip_l ("sd"), SDXL's
    clip_l and clip_g ("l", "g"), SD 3's ("sd3_l", "sd3_g") and Flux's clip_l ("flux"); and each pipeline's T5,
    taken by the T5 node out of a ComfyUI CLIP that holds it ("sd3_t5", "flux_t5")."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        install_comfy_stubs(monkeypatch, tiny_components)
        loads = {"sd": (SD_LONG, "clip_l"), "l": (SDXL_LONG, "clip_l"), "g": (SDXL_G, "clip_g")}
        loads.update({"sd3_l": (SD3_LONG, "clip_l"), "sd3_g": (SD3_G, "clip_g"), "flux": (FLUX_LONG, "clip_l")})
        encoders = {
            key: call(LongCLIPLoader, text_encoder=name, clip_type=kind)[0] for key, (name, kind) in loads.items()
        }
        for key, (t5, tokenizer) in {
            "sd3_t5": (sd3_pipe.text_encoder_3, sd3_pipe.tokenizer_3),
            "flux_t5": (flux_pipe.text_encoder_2, flux_pipe.tokenizer_2),
        }.items():
            encoders[key] = call(LongCLIPT5FromCLIP, clip=FakeComfyCLIP(t5_tokenizer=tokenizer, t5xxl=t5))[0]
        return encoders


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
    assert LongCLIPT5FromCLIP.INPUT_TYPES()["required"]["clip"][0] == "CLIP"
    assert LongCLIPT5FromCLIP.RETURN_TYPES == (LONGCLIP_T5,)
    sd3 = LongCLIPTextEncodeSD3.INPUT_TYPES()["required"]
    flux = LongCLIPTextEncodeFlux.INPUT_TYPES()["required"]
    assert sd3["long_clip"][0] == sd3["clip_g"][0] == flux["long_clip"][0] == LONGCLIP
    assert sd3["t5"][0] == flux["t5"][0] == LONGCLIP_T5
    assert flux["guidance"] == ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})  # as ComfyUI's
    assert LongCLIPTextEncodeSD3.RETURN_TYPES == LongCLIPTextEncodeFlux.RETURN_TYPES == ("CONDITIONING",)


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
# SD 3: CLIP windows and T5, the pipeline's conditioning and pooled vectors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["chunk", "stretch"])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_sd3_node_equals_the_pipeline(prompt, strategy, loaded, sd3_pipe):
    text = PROMPTS[prompt]
    pipe = LongCLIPStableDiffusion3Pipeline.from_pipe(sd3_pipe, long_prompt_strategy=strategy)
    inputs = dict(long_clip=loaded["sd3_l"], clip_g=loaded["sd3_g"], t5=loaded["sd3_t5"], text=text, strategy=strategy)
    cond, extras = cond_of(call(LongCLIPTextEncodeSD3, **inputs)[0])
    with torch.no_grad():  # as the pipeline calls encode_prompt
        expected, _, pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)
    assert set(extras) == {"pooled_output"}  # as ComfyUI's CLIPTextEncodeSD3
    assert cond.shape == (1, WINDOWS[prompt] * 248 + 256, 80) and extras["pooled_output"].shape == (1, 64)

    options = dict(text_g="an oil painting", text_t5="a lighthouse, seen from the sea", clip_skip=1)
    cond, extras = cond_of(call(LongCLIPTextEncodeSD3, **inputs, **options, max_sequence_length=77)[0])
    with torch.no_grad():
        expected, _, pooled, _ = pipe.encode_prompt(
            text,
            prompt_2=options["text_g"],
            prompt_3=options["text_t5"],
            device="cpu",
            do_classifier_free_guidance=False,
            clip_skip=1,
            max_sequence_length=77,
        )
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)
    assert cond.shape[1] == WINDOWS[prompt] * 248 + 77


def test_sd3_node_matches_the_pipelines_positive_and_negative(loaded, sd3_pipe):
    negative = "blurry, low quality, watermark, " * 50  # two windows, as LONG
    with torch.no_grad():
        expected, expected_negative, pooled, negative_pooled = sd3_pipe.encode_prompt(
            LONG, device="cpu", negative_prompt=negative
        )
    inputs = dict(long_clip=loaded["sd3_l"], clip_g=loaded["sd3_g"], t5=loaded["sd3_t5"])
    for text, embeds, pooled_embeds in ((LONG, expected, pooled), (negative, expected_negative, negative_pooled)):
        cond, extras = cond_of(call(LongCLIPTextEncodeSD3, **inputs, text=text)[0])
        assert torch.equal(cond, embeds) and torch.equal(extras["pooled_output"], pooled_embeds)


def test_sd3_node_refuses_what_sd3_cannot_read(loaded):
    inputs = dict(clip_g=loaded["sd3_g"], t5=loaded["sd3_t5"], text=SHORT)
    with pytest.raises(ValueError, match="has no text projection, but SD 3 reads CLIP-L's projected pooled vector"):
        call(LongCLIPTextEncodeSD3, long_clip=loaded["flux"], **inputs)  # Flux's Long-CLIP-L: no projection
    with pytest.raises(ValueError, match="Connect a Long-CLIP-L loaded as clip_l to `long_clip` and SD 3's bigG"):
        call(LongCLIPTextEncodeSD3, long_clip=loaded["sd3_g"], clip_g=loaded["sd3_l"], t5=loaded["sd3_t5"], text=SHORT)
    with pytest.raises(ValueError, match="weight 20 is outside the range 0 to 10"):
        call(LongCLIPTextEncodeSD3, long_clip=loaded["sd3_l"], **{**inputs, "text": "a (cat:20)"})


@pytest.mark.parametrize("strategy", ["chunk", "stretch"])
def test_sd3_node_weights_as_comfyui_core_in_clip_and_t5(strategy, loaded):
    """weight_style="comfyui" (core's formula, tested against core itself in test_real_engine.py): a weighted token's
    state is (z - z_empty) * w + z_empty, z the unweighted prompt's, z_empty the empty prompt's, in CLIP's windows
    (bigG chunked or stretched) and in T5's states; every other state, and the pooled vectors, as unweighted. The
    default (A1111's) differs."""
    inputs = dict(long_clip=loaded["sd3_l"], clip_g=loaded["sd3_g"], t5=loaded["sd3_t5"], strategy=strategy)
    for tokenizer in (loaded["sd3_l"].tokenizer, loaded["sd3_t5"].tokenizer):  # one token each: rows 1 and 2
        assert [len(tokenizer(word, add_special_tokens=False).input_ids) for word in ("a", "red")] == [1, 1]
    plain, plain_extras = cond_of(call(LongCLIPTextEncodeSD3, **inputs, text="a red boat")[0])
    empty, _ = cond_of(call(LongCLIPTextEncodeSD3, **inputs, text="")[0])
    weighted = dict(text="a (red:1.5) boat")
    cond, extras = cond_of(call(LongCLIPTextEncodeSD3, **inputs, **weighted, weight_style="comfyui")[0])
    expected = plain.clone()
    for row in (2, 248 + 1):  # BOS, a, red in CLIP's window; a, red in T5's states
        expected[:, row] = (plain[:, row] - empty[:, row]) * 1.5 + empty[:, row]
    torch.testing.assert_close(cond, expected, rtol=0, atol=1e-6)
    assert torch.equal(extras["pooled_output"], plain_extras["pooled_output"])
    default, _ = cond_of(call(LongCLIPTextEncodeSD3, **inputs, **weighted)[0])
    assert (default - cond).abs().max() > 1e-3
    with pytest.raises(ValueError, match="weight_style='core'; choose one of a1111, comfyui"):
        call(LongCLIPTextEncodeSD3, **inputs, **weighted, weight_style="core")


# ----------------------------------------------------------------------------------------------------------
# Flux: Long-CLIP-L's pooled vector and T5, the pipeline's; the guidance as ComfyUI's CLIPTextEncodeFlux gives it
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_flux_node_equals_the_pipeline(prompt, loaded, flux_pipe):
    text = PROMPTS[prompt]
    inputs = dict(long_clip=loaded["flux"], t5=loaded["flux_t5"], text=text, guidance=2.5)
    cond, extras = cond_of(call(LongCLIPTextEncodeFlux, **inputs)[0])
    with torch.no_grad():  # as the pipeline calls encode_prompt
        expected, pooled, _ = flux_pipe.encode_prompt(text, device="cpu")
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)
    assert extras == {"pooled_output": extras["pooled_output"], "guidance": 2.5}  # as ComfyUI's CLIPTextEncodeFlux
    assert cond.shape == (1, 512, 80) and cond.dtype == torch.float32 and pooled.shape == (1, 32)

    cond, extras = cond_of(
        call(LongCLIPTextEncodeFlux, **inputs, text_t5="an oil painting", max_sequence_length=128)[0]
    )
    with torch.no_grad():
        expected, pooled, _ = flux_pipe.encode_prompt(text, "an oil painting", device="cpu", max_sequence_length=128)
    assert torch.equal(cond, expected) and torch.equal(extras["pooled_output"], pooled)


def test_flux_node_reads_a_long_clip_l_with_a_projection_unprojected(loaded, flux_pipe):
    """A published Long-CLIP-L comes with its projection; Flux reads the pooled output before it."""
    with_projection = LongCLIP(
        CLIPTextModelWithProjection(loaded["flux"].text_encoder.config).eval(), loaded["flux"].tokenizer, "clip_l"
    )
    with_projection.text_encoder.text_model.load_state_dict(loaded["flux"].text_encoder.state_dict())
    inputs = dict(t5=loaded["flux_t5"], text=LONG, guidance=3.5)
    projected, _ = cond_of(call(LongCLIPTextEncodeFlux, long_clip=with_projection, **inputs)[0])
    plain, _ = cond_of(call(LongCLIPTextEncodeFlux, long_clip=loaded["flux"], **inputs)[0])
    assert torch.equal(projected, plain)
    pooled = [cond_of(call(LongCLIPTextEncodeFlux, long_clip=clip, **inputs)[0])[1]["pooled_output"]
              for clip in (with_projection, loaded["flux"])]  # fmt: skip
    assert torch.equal(*pooled)


def test_flux_node_refuses_a_clip_g(loaded):
    with pytest.raises(ValueError, match="is loaded as clip_g; Flux reads a clip_l encoder"):
        call(LongCLIPTextEncodeFlux, long_clip=loaded["sd3_g"], t5=loaded["flux_t5"], text=SHORT, guidance=3.5)


# ----------------------------------------------------------------------------------------------------------
# T5 from a ComfyUI CLIP
# ----------------------------------------------------------------------------------------------------------


def test_t5_from_a_clip_is_the_pipelines_t5(loaded, sd3_pipe):
    t5 = loaded["sd3_t5"]
    reference = sd3_pipe.text_encoder_3
    assert t5.tokenizer is sd3_pipe.tokenizer_3  # ComfyUI's own tokenizer object, as the CLIP holds it
    assert t5.text_encoder is not reference and t5.text_encoder.config.num_heads == reference.config.num_heads
    assert t5.text_encoder.config.relative_attention_num_buckets == reference.config.relative_attention_num_buckets
    ids = sd3_pipe.tokenizer_3(LONG, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(t5.text_encoder(ids)[0], reference(ids)[0])
    for name, parameter in t5.text_encoder.named_parameters():  # a copy: ComfyUI may patch its own in place
        assert parameter.data_ptr() != reference.get_parameter(name).data_ptr(), name


def test_t5_from_a_clip_stored_in_scaled_fp8_is_multiplied_out(sd3_pipe, comfy):
    """ComfyUI's t5xxl_fp8_e4m3fn_scaled files: fp8 weights with a `scale_weight` each, `scaled_fp8` marker."""
    reference = sd3_pipe.text_encoder_3

    class ScaledFP8CLIP(FakeComfyCLIP):
        def get_sd(self):
            state_dict = super().get_sd()
            for key in [key for key in state_dict if key.endswith(".q.weight")]:
                state_dict[key] = (state_dict[key] / 0.25).to(torch.float8_e4m3fn)
                state_dict[key.removesuffix("weight") + "scale_weight"] = torch.tensor(0.25)
            state_dict["t5xxl.transformer.scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
            return state_dict

    clip = ScaledFP8CLIP(t5_tokenizer=sd3_pipe.tokenizer_3, t5xxl=reference)
    (t5,) = call(LongCLIPT5FromCLIP, clip=clip)
    assert t5.text_encoder.dtype == torch.float32
    for key, value in clip.get_sd().items():
        if key.endswith(".q.weight"):
            name = key.removeprefix("t5xxl.transformer.")
            expected = value.float() * 0.25
            assert torch.equal(t5.text_encoder.get_parameter(name), expected)
            assert torch.allclose(expected, reference.get_parameter(name), rtol=0.07, atol=1e-3)


def test_t5_from_a_clip_without_t5_is_refused(sd3_pipe, comfy):
    with pytest.raises(
        ValueError, match=r"This CLIP has no t5xxl text encoder \(it has: clip_g, clip_l\)\. Load one with CLIPLoader"
    ):
        call(LongCLIPT5FromCLIP, clip=FakeComfyCLIP(clip_l=sd3_pipe.text_encoder, clip_g=sd3_pipe.text_encoder_2))
    with pytest.raises(ValueError, match="holds T5 weights but no T5 tokenizer"):
        call(LongCLIPT5FromCLIP, clip=FakeComfyCLIP(t5xxl=sd3_pipe.text_encoder_3))
    broken = FakeComfyCLIP(t5_tokenizer=sd3_pipe.tokenizer_3, t5xxl=sd3_pipe.text_encoder_3)
    state_dict = broken.get_sd()
    state_dict["t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight_scale"] = torch.tensor(1.0)
    broken.get_sd = lambda: state_dict  # a quantization format these nodes do not read
    with pytest.raises(ValueError, match=r"holds a T5 these nodes cannot read \(0 weights missing, 1 unexpected"):
        call(LongCLIPT5FromCLIP, clip=broken)


# ----------------------------------------------------------------------------------------------------------
# Long-CLIP from a ComfyUI CLIP (e.g. a checkpoint's own clip_g / clip_l), stretched without training
# ----------------------------------------------------------------------------------------------------------


def test_bigg_from_a_checkpoints_clip_equals_the_pipeline_with_that_bigg(loaded, sdxl_pipe, big_g, comfy):
    clip = FakeComfyCLIP(clip_l=sdxl_pipe.text_encoder, clip_g=big_g)
    (as_is,) = call(LongCLIPStretch, clip=clip, clip_type="clip_g", keep=20, ratio=1)
    (stretched,) = call(LongCLIPStretch, clip=clip, clip_type="clip_g", keep=20, ratio=4)
    assert as_is.num_positions == 77 and stretched.num_positions == 248 and stretched.has_projection
    for strategy, clip_g in (("chunk", as_is), ("stretch", as_is), ("chunk", stretched)):
        pipe = LongCLIPStableDiffusionXLPipeline.from_pipe(  # encode-only: this bigG is wider than the tiny UNet reads
            sdxl_pipe,
            text_encoder_2=big_g,
            unet=None,
            long_prompt_strategy="stretch" if clip_g is stretched else strategy,
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
    pipe = LongCLIPStableDiffusionPipeline.from_pipe(  # encode-only: this CLIP-L is wider than the tiny UNet reads
        sd_pipe,
        text_encoder=stretch_model(copy.deepcopy(clip_l)),
        tokenizer=LongCLIPTokenizer.from_clip_bpe(),
        unet=None,
    )
    cond, _ = cond_of(call(LongCLIPTextEncode, long_clip=long_clip, text=LONG)[0])
    assert torch.equal(cond, pipe.encode_prompt(LONG, "cpu", 1, False)[0])


def test_stretch_node_bounds_allow_exactly_what_stretching_makes(big_g, comfy):
    inputs = LongCLIPStretch.INPUT_TYPES()["required"]
    keep, ratio = inputs["keep"][1], inputs["ratio"][1]
    assert (keep["min"], keep["max"], ratio["min"]) == (0, 75, 1)  # 75: the last two of CLIP's 77 rows continue
    assert all(stretched_length(77, k, ratio["max"]) <= MAX_POSITIONS for k in range(keep["max"] + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_POSITIONS} are supported"):
        stretched_length(77, 0, ratio["max"] + 1)  # the bound is tight: one more is refused at keep 0
    with pytest.raises(ValueError, match=f"at most {MAX_POSITIONS} are supported"):  # past the UI, e.g. the API
        call(LongCLIPStretch, clip=FakeComfyCLIP(clip_g=big_g), clip_type="clip_g", keep=20, ratio=10**12)


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
    def shapes(layers: int, width: int) -> dict[str, torch.Tensor]:  # shapes only: a meta-device encoder's
        config = CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers)
        with torch.device("meta"):
            return hf_to_canonical(CLIPTextModelWithProjection(config).state_dict())

    for layers, width, architecture, heads in ((32, 1280, "ViT-bigG-14", 20), (24, 1024, "ViT-H-14", 16)):
        state_dict = shapes(layers, width)
        assert infer_open_clip_model(state_dict) == architecture
        config = checkpoint_from_state_dict(state_dict, path="clip.safetensors").text_config
        assert (config.num_attention_heads, config.hidden_act) == (heads, "gelu")
    assert infer_open_clip_model(shapes(12, 768)) is None  # CLIP-L: OpenAI's conventions
    assert checkpoint_from_state_dict(shapes(12, 768), path="clip_l.safetensors").text_config.hidden_act == "quick_gelu"
