"""The Long-CLIP counterparts of the daily diffusers pipelines (img2img, inpaint, ControlNet, PAG, LCM, AnimateDiff,
refiner, Kontext, ...) on tiny models: the same invariants for every class, read at the denoiser's input.

Each stock variant is built from its family's tiny text-to-image pipeline (`from_pipe`, plus a tiny ControlNet,
T2I-Adapter or motion adapter where the class needs one, or a denoiser with the input channels it reads: Flux Fill
and Control, SD 3 inpaint); its counterpart comes from `with_long_prompts`.
"""

import functools

import diffusers
import pytest
import torch
from helpers.pipelines import HEAD, MIDDLE, TAIL_A, TAIL_B
from PIL import Image

import longclip_diffusers.pipelines as long_pipelines
from longclip_diffusers.families import FAMILIES
from longclip_diffusers.pipelines import LongCLIPStableDiffusionXLPipeline, long_clip_class, with_long_prompts

IMAGE = Image.new("RGB", (64, 64), (200, 40, 40))
MASK = Image.new("L", (64, 64), 255)
FLUX_SIZE = {"height": 64, "width": 64}


def controlnet(stock):
    return diffusers.ControlNetModel.from_unet(stock.unet, conditioning_embedding_out_channels=(8, 16))


def reconfigured(model, **changes):
    """A new `model` of the same class, its config changed by `changes`, with random weights (seed 0)."""
    config = {key: value for key, value in model.config.items() if key != "_use_default_values"}
    torch.manual_seed(0)
    return type(model).from_config({**config, **changes})


def lcm_unet(stock):
    """The UNet with the guidance-scale embedding an LCM-distilled UNet has (`time_cond_proj_dim`)."""
    unet = reconfigured(stock.unet, time_cond_proj_dim=32)
    missing, unexpected = unet.load_state_dict(stock.unet.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("time_embedding.cond_proj") for key in missing)
    return unet


def refiner_unet(stock):
    """A refiner's UNet: conditioned on bigG's states alone."""
    return reconfigured(stock.unet, cross_attention_dim=32)


def motion_adapter(stock):
    unet = stock.unet.config
    torch.manual_seed(0)
    return diffusers.MotionAdapter(
        block_out_channels=unet.block_out_channels,
        motion_layers_per_block=unet.layers_per_block,
        motion_norm_num_groups=unet.norm_num_groups,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )


def controlnet_union(stock):
    """A ControlNet-Union whose control-type transformer is as wide as the UNet's first block."""
    base = diffusers.ControlNetUnionModel.from_unet(stock.unet, conditioning_embedding_out_channels=(8, 16))
    width = stock.unet.config.block_out_channels[0]
    return reconfigured(base, num_trans_channel=width, num_trans_head=2, num_proj_channel=width)


def t2i_adapter(stock, adapter_type: str = "full_adapter_xl", downscale_factor: int = 4):
    """A T2I-Adapter whose features match the tiny UNet's blocks. SDXL's: both at a quarter of the latent size (the
    tiny SDXL UNet adds the first after its downsampler); SD 1.5's: at 1/2 and 1/4 with `cross_attention_first`."""
    torch.manual_seed(0)
    channels = list(stock.unet.config.block_out_channels)
    return diffusers.T2IAdapter(channels=channels, downscale_factor=downscale_factor, adapter_type=adapter_type)


def cross_attention_first(stock):
    """The UNet with SD 1.5's block order (cross-attention block first, its adapter feature before downsampling):
    the SD 1.5 T2I-Adapter halves its features' size at each block, as SD 1.5's UNet does."""
    down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
    return reconfigured(stock.unet, down_block_types=down, up_block_types=up)


def flux_fill_transformer(stock):
    """Flux Fill's transformer reads the packed latents, the packed masked-image latents and the packed mask (one
    channel per pixel of a latent's vae_scale_factor x vae_scale_factor patch, packed 2x2)."""
    packed = stock.transformer.config.in_channels
    mask = 4 * stock.vae_scale_factor**2
    return reconfigured(stock.transformer, in_channels=2 * packed + mask, out_channels=packed)


def flux_control_transformer(stock):
    """Flux Control's transformer reads the packed latents and the packed control-image latents."""
    packed = stock.transformer.config.in_channels
    return reconfigured(stock.transformer, in_channels=2 * packed, out_channels=packed)


def sd3_controlnet(stock, extra_channels: int = 0):
    torch.manual_seed(0)
    return diffusers.SD3ControlNetModel.from_transformer(
        stock.transformer, num_layers=1, num_extra_conditioning_channels=extra_channels
    )


def flux_controlnet(stock):
    torch.manual_seed(0)
    config = stock.transformer.config
    return diffusers.FluxControlNetModel.from_transformer(
        stock.transformer,
        num_layers=1,
        num_single_layers=0,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
    )


# class name -> (family, extra components from the stock text-to-image pipeline, call kwargs)
DAILY = {
    "StableDiffusionImg2ImgPipeline": ("sd15", {}, {"image": IMAGE, "strength": 0.9}),
    "StableDiffusionInpaintPipeline": ("sd15", {}, {"image": IMAGE, "mask_image": MASK, "strength": 0.9}),
    "StableDiffusionControlNetPipeline": ("sd15", {"controlnet": controlnet}, {"image": IMAGE}),
    "StableDiffusionControlNetImg2ImgPipeline": (
        "sd15",
        {"controlnet": controlnet},
        {"image": IMAGE, "control_image": IMAGE, "strength": 0.9},
    ),
    "StableDiffusionControlNetInpaintPipeline": (
        "sd15",
        {"controlnet": controlnet},
        {"image": IMAGE, "mask_image": MASK, "control_image": IMAGE, "strength": 0.9},
    ),
    "StableDiffusionPAGPipeline": ("sd15", {"pag_applied_layers": lambda stock: ["mid"]}, {}),
    "LatentConsistencyModelPipeline": (
        "sd15",
        {"scheduler": lambda stock: diffusers.LCMScheduler.from_config(stock.scheduler.config), "unet": lcm_unet},
        {},
    ),
    "AnimateDiffPipeline": ("sd15", {"motion_adapter": motion_adapter}, {"num_frames": 2}),
    "AnimateDiffVideoToVideoPipeline": (
        "sd15",
        {"motion_adapter": motion_adapter},
        {"video": [IMAGE, IMAGE], "strength": 0.9},
    ),
    "StableDiffusionAdapterPipeline": (
        "sd15",
        {
            "unet": cross_attention_first,
            "adapter": functools.partial(t2i_adapter, adapter_type="full_adapter", downscale_factor=2),
        },
        {"image": IMAGE},
    ),
    "StableDiffusionXLImg2ImgPipeline": ("sdxl", {}, {"image": IMAGE, "strength": 0.9}),
    "StableDiffusionXLInpaintPipeline": ("sdxl", {}, {"image": IMAGE, "mask_image": MASK, "strength": 0.9}),
    "StableDiffusionXLControlNetPipeline": ("sdxl", {"controlnet": controlnet}, {"image": IMAGE}),
    "StableDiffusionXLControlNetImg2ImgPipeline": (
        "sdxl",
        {"controlnet": controlnet},
        {"image": IMAGE, "control_image": IMAGE, "strength": 0.9},
    ),
    "StableDiffusionXLControlNetInpaintPipeline": (
        "sdxl",
        {"controlnet": controlnet},
        {"image": IMAGE, "mask_image": MASK, "control_image": IMAGE, "strength": 0.9},
    ),
    "StableDiffusionXLControlNetUnionPipeline": (
        "sdxl",
        {"controlnet": controlnet_union},
        {"control_image": [IMAGE], "control_mode": [0]},
    ),
    "StableDiffusionXLAdapterPipeline": ("sdxl", {"adapter": t2i_adapter}, {"image": IMAGE}),
    "AnimateDiffSDXLPipeline": ("sdxl", {"motion_adapter": motion_adapter}, {"num_frames": 2}),
    "StableDiffusion3Img2ImgPipeline": ("sd3", {}, {"image": IMAGE, "strength": 0.9}),
    "StableDiffusion3InpaintPipeline": (  # SD 3's inpainting reads 16 latent channels, as SD 3's VAE makes
        "sd3",
        {
            "vae": lambda stock: reconfigured(stock.vae, latent_channels=16),
            "transformer": lambda stock: reconfigured(stock.transformer, in_channels=16, out_channels=16),
        },
        {"image": IMAGE, "mask_image": MASK, "strength": 0.9},
    ),
    "StableDiffusion3ControlNetPipeline": ("sd3", {"controlnet": sd3_controlnet}, {"control_image": IMAGE}),
    "StableDiffusion3ControlNetInpaintingPipeline": (  # the control image: masked-image latents and the mask
        "sd3",
        {"controlnet": functools.partial(sd3_controlnet, extra_channels=1)},
        {"control_image": IMAGE, "control_mask": MASK},
    ),
    "FluxImg2ImgPipeline": ("flux", {}, {"image": IMAGE, "strength": 0.9, **FLUX_SIZE}),
    "FluxInpaintPipeline": ("flux", {}, {"image": IMAGE, "mask_image": MASK, "strength": 0.9, **FLUX_SIZE}),
    "FluxKontextPipeline": ("flux", {}, {"image": IMAGE, **FLUX_SIZE, "max_area": 64 * 64, "_auto_resize": False}),
    "FluxControlNetPipeline": ("flux", {"controlnet": flux_controlnet}, {"control_image": IMAGE, **FLUX_SIZE}),
    "FluxFillPipeline": (
        "flux",
        {"transformer": flux_fill_transformer},
        {"image": IMAGE, "mask_image": MASK, **FLUX_SIZE},
    ),
    "FluxControlPipeline": ("flux", {"transformer": flux_control_transformer}, {"control_image": IMAGE, **FLUX_SIZE}),
}
# SDXL's refiner: img2img with bigG alone (`text_encoder_2`); Long-CLIP-L has no place in it.
REFINER = "StableDiffusionXLImg2ImgPipeline (refiner)"


class Reached(Exception):
    """Raised by the denoiser once it has seen its first input: the test has what it came for."""


@pytest.fixture(scope="module")
def stock_variant(stock_pipeline):
    """Builds (once) the tiny stock pipeline of a daily class, from its family's text-to-image pipeline."""

    @functools.cache
    def build(name: str):
        if name == REFINER:
            sdxl = stock_pipeline("sdxl")
            return diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(
                sdxl, text_encoder=None, tokenizer=None, unet=refiner_unet(sdxl)
            )
        family, extras, _ = DAILY[name]
        stock = stock_pipeline(family)
        return getattr(diffusers, name).from_pipe(stock, **{key: make(stock) for key, make in extras.items()})

    return build


def call_kwargs(name: str) -> dict:
    return DAILY["StableDiffusionXLImg2ImgPipeline" if name == REFINER else name][2]


def denoiser_input(pipe, prompt, name: str, **kwargs) -> dict[str, torch.Tensor]:
    """What the pipeline's denoiser receives first for `prompt`: its text conditioning, as tensors."""
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    seen = {}

    def forward(*args, **inputs):
        seen.update({key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)})
        raise Reached

    original, processors = denoiser.forward, denoiser.attn_processors
    denoiser.forward = forward
    try:
        with pytest.raises(Reached):
            pipe(prompt=prompt, num_inference_steps=2, output_type="latent", **call_kwargs(name), **kwargs)
    finally:  # stopped mid-call, PAG would leave its attention processors on the shared denoiser
        denoiser.forward = original
        denoiser.set_attn_processor(processors)
    keys = ("encoder_hidden_states", "pooled_projections", "added_cond_kwargs")
    return {key: value for key, value in seen.items() if key in keys}


def long_variant(stock, long_parts, family: str, **settings):
    text_encoder, tokenizer = long_parts(family)
    if stock.text_encoder is None:  # the refiner
        return with_long_prompts(stock, **settings)
    return with_long_prompts(stock, text_encoder=text_encoder, tokenizer=tokenizer, **settings)


def family_of(name: str) -> str:
    return "sdxl" if name == REFINER else DAILY[name][0]


NAMES = [*DAILY, REFINER]


@pytest.mark.parametrize("name", NAMES)
def test_the_counterpart_subclasses_the_stock_class_and_shares_its_components(stock_variant, long_parts, name):
    stock = stock_variant(name)
    ours = long_variant(stock, long_parts, family_of(name))
    assert type(ours).__name__ == f"LongCLIP{type(stock).__name__}" and isinstance(ours, type(stock))
    assert type(ours) is getattr(long_pipelines, type(ours).__name__) is long_clip_class(type(stock))
    shared = [key for key in stock.components if key not in ("text_encoder", "tokenizer")]
    assert all(ours.components[key] is stock.components[key] for key in shared)


@pytest.mark.parametrize("name", NAMES)
def test_a_word_at_token_180_reaches_the_denoiser(stock_variant, long_parts, name):
    family = family_of(name)
    ours = long_variant(stock_variant(name), long_parts, family)
    prompt = HEAD + MIDDLE
    if name != REFINER:
        assert len(ours.tokenizer(prompt).input_ids) > 181  # the tails start past token 180
    a = denoiser_input(ours, prompt + TAIL_A, name)
    b = denoiser_input(ours, prompt + TAIL_B, name)
    assert not torch.allclose(a["encoder_hidden_states"], b["encoder_hidden_states"])
    if FAMILIES[family].t5 is not None:  # T5 reads the tail too: the pooled vector, CLIP's alone, must see it
        assert not torch.allclose(a["pooled_projections"], b["pooled_projections"])


@pytest.mark.parametrize("name", NAMES)
def test_weight_one_is_no_weight_and_break_opens_a_window(stock_variant, long_parts, name):
    family = family_of(name)
    ours = long_variant(stock_variant(name), long_parts, family)
    plain = denoiser_input(ours, "a red boat", name)
    same = denoiser_input(ours, "a (red:1.0) boat", name)
    assert all(torch.equal(plain[key], same[key]) for key in plain)
    broken = denoiser_input(ours, "a red BREAK boat", name)
    if FAMILIES[family].t5 is not None and family == "flux":  # Flux: BREAK ends CLIP-L's pooled window
        assert torch.equal(broken["pooled_projections"], denoiser_input(ours, "a red", name)["pooled_projections"])
    else:
        window = ours.tokenizer_2.model_max_length if name == REFINER else ours.tokenizer.model_max_length
        rows = broken["encoder_hidden_states"].shape[1] - plain["encoder_hidden_states"].shape[1]
        assert rows == window


@pytest.mark.parametrize("name", NAMES)
def test_with_stock_encoders_and_a_short_prompt_conditioning_and_latents_are_the_stock_ones(stock_variant, name):
    stock = stock_variant(name)
    ours = with_long_prompts(stock)
    prompt = "a lighthouse at dusk"
    expected, actual = denoiser_input(stock, prompt, name), denoiser_input(ours, prompt, name)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    latents = [final_latents(pipe, prompt, name) for pipe in (stock, ours)]
    assert torch.equal(*latents)


def final_latents(pipe, prompt: str, name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    output = pipe(prompt=prompt, num_inference_steps=2, generator=generator, output_type="latent", **call_kwargs(name))
    return torch.as_tensor(output.frames if hasattr(output, "frames") else output.images)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_keeps_its_one_line_error(stock_variant, long_parts, name):
    ours = long_variant(stock_variant(name), long_parts, family_of(name))
    # AnimateDiff video-to-video counts the prompts against its one video first, in a line of its own
    video = name == "AnimateDiffVideoToVideoPipeline"
    message = "passed 2 text prompts .* but only 1 initial images" if video else "list of int, str"
    with pytest.raises(ValueError if video else TypeError, match=message):
        ours(prompt=["a", 3], num_inference_steps=1, output_type="latent", **call_kwargs(name))
    with pytest.raises(ValueError, match=r"\(cat:20\): weight 20 is outside the range 0 to 10"):
        ours(prompt="a (cat:20)", num_inference_steps=1, output_type="latent", **call_kwargs(name))


def test_auto_pipelines_map_long_clip_classes_to_long_clip_classes_and_stock_to_stock(long_pipeline, stock_pipeline):
    t2i = LongCLIPStableDiffusionXLPipeline.from_pipe(long_pipeline("sdxl"), long_prompt_strategy="stretch")
    i2i = diffusers.AutoPipelineForImage2Image.from_pipe(t2i)
    inpaint = diffusers.AutoPipelineForInpainting.from_pipe(i2i)
    back = diffusers.AutoPipelineForText2Image.from_pipe(inpaint)
    names = [type(pipe).__name__ for pipe in (i2i, inpaint, back)]
    assert names == [
        "LongCLIPStableDiffusionXLImg2ImgPipeline",
        "LongCLIPStableDiffusionXLInpaintPipeline",
        "LongCLIPStableDiffusionXLPipeline",
    ]
    assert all(pipe.text_encoder is t2i.text_encoder and pipe.unet is t2i.unet for pipe in (i2i, inpaint, back))
    assert all(pipe.config.long_prompt_strategy == "stretch" for pipe in (i2i, inpaint, back))
    controlled = diffusers.AutoPipelineForText2Image.from_pipe(
        long_pipeline("sd15"), controlnet=controlnet(stock_pipeline("sd15"))
    )
    assert type(controlled).__name__ == "LongCLIPStableDiffusionControlNetPipeline"
    stock = diffusers.AutoPipelineForImage2Image.from_pipe(stock_pipeline("sdxl"))
    assert type(stock) is diffusers.StableDiffusionXLImg2ImgPipeline


# One class per family, with an extra component (ControlNet) or a widened denoiser (SD 3 inpaint, Flux Fill).
SAVED = {
    "StableDiffusionControlNetPipeline": {},
    "StableDiffusionXLImg2ImgPipeline": {"long_prompt_strategy": "stretch"},
    "StableDiffusion3InpaintPipeline": {"long_prompt_strategy": "stretch"},
    "FluxFillPipeline": {},
}


@pytest.mark.parametrize("name", SAVED)
def test_a_saved_counterpart_reloads_with_its_class_and_with_plain_diffusers(stock_variant, long_parts, name, tmp_path):
    ours = long_variant(stock_variant(name), long_parts, family_of(name), **SAVED[name])
    ours.save_pretrained(tmp_path / "pipe")
    expected = denoiser_input(ours, HEAD + MIDDLE + TAIL_A, name)
    reloaded = type(ours).from_pretrained(tmp_path / "pipe")
    assert type(reloaded) is type(ours)
    assert all(reloaded.config[key] == value for key, value in SAVED[name].items())
    plain = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(plain).__name__ == type(ours).__name__ and type(plain).__module__.startswith("diffusers_modules")
    for pipe in (reloaded, plain):
        actual = denoiser_input(pipe, HEAD + MIDDLE + TAIL_A, name)
        assert all(torch.equal(expected[key], actual[key]) for key in expected)
