"""The five model families Long-CLIP conditions, described once: which text encoders each has and how it reads them.

The pipelines, the ComfyUI conditioning, `longclip generate`, the demo, `longclip tiny` and `longclip comfy-export`
read this table; nothing else describes a family. `key` names a family in code, folders and flags (`sd15`);
`name` names it to users ("SD 1.5").

Each text encoder is read at a layer: -1 is the last layer after the final layer norm (SD 1.x/2.x), -2 the
penultimate one without it (SDXL, SD 3); `clip_skip` reads that many layers earlier. A pooled vector is CLIP's
`text_embeds` (its projection) or its `pooler_output` (Flux, before the projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["clip_l", "clip_h", "clip_g", "t5"]


@dataclass(frozen=True)
class TextEncoderRole:
    """One text encoder of a family: its component and tokenizer names, what it is, and what the family reads.

    `layer`: the hidden layer its conditioning states come from (None: they are not read); `final_norm`: whether
    the final layer norm applies to them; `pooled`: "projection" (`text_embeds`), "output" (`pooler_output`,
    without the projection) or None; `long`: a Long-CLIP may take its place (CLIP-L, SD 2's H).
    """

    component: str
    tokenizer: str
    role: Role
    layer: int | None = None
    final_norm: bool = False
    pooled: Literal["projection", "output"] | None = None
    long: bool = False

    @property
    def projection(self) -> bool | None:
        """Whether it must have a text projection (True), must not (False), or either (None)."""
        return {"projection": True, "output": False}.get(self.pooled)


@dataclass(frozen=True)
class T5Spec:
    """A family's T5: its tokenizer's component name, and the `max_sequence_length` the stock pipeline reads by
    default and at most."""

    tokenizer: str
    default_length: int
    max_length: int


@dataclass(frozen=True)
class ComfyWorkflow:
    """What `longclip comfy-export` puts in the family's example workflow: the model file, image size, sampling,
    and the nodes that differ between families (T5 and the negative prompt follow the family itself)."""

    model_file: str
    size: int
    steps: int
    cfg: float
    scheduler: str
    encode_node: str  # the node of ours encoding its prompts
    clip_g: str | None = None  # its bigG: "checkpoint" (the checkpoint's own, taken as it is) or "file" (loaded)
    size_inputs: bool = False  # the encode node takes SDXL's size conditioning
    guidance: float | None = None  # the distilled guidance the encode node is given (Flux.1)
    diffusion_model_only: bool = False  # the model file holds the denoiser alone: the VAE is loaded apart
    latent_node: str = "EmptyLatentImage"  # "EmptySD3LatentImage" for 16-channel latents


@dataclass(frozen=True)
class Family:
    """A family of Stable Diffusion models, as Long-CLIP conditions it."""

    key: str
    name: str
    stock_pipeline: str  # the diffusers text-to-image class, `_class_name` in its model_index.json
    long_pipeline: str  # its Long-CLIP counterpart in `longclip_diffusers.pipelines`
    encoders: tuple[TextEncoderRole, ...]
    clip_activation: str  # the `hidden_act` of its first CLIP, which tells SD 1.x (CLIP-L) from SD 2.x (H)
    default_pipeline: str  # the Hub id offered when none is given
    tiny_builder: str  # the `longclip_diffusers.tiny` function building a tiny pipeline of it
    t5: T5Spec | None = None
    big_g_strategies: bool = False  # a bigG shorter than the windows reads them by "chunk" or "stretch"
    reads_negative: bool = True  # Flux.1's guidance is distilled: at its settings it reads no negative prompt
    window_limit: int | None = None  # the windows of the long CLIP it reads (Flux: the first, its pooled vector)
    comfy: ComfyWorkflow | None = None
    single_file: bool = False  # `from_single_file` reads a Long-CLIP baked into its checkpoints (single_file.py)
    variants: tuple[str, ...] = ()  # its other diffusers pipeline classes (prompt encoding as `stock_pipeline`'s)

    @property
    def clip_encoders(self) -> tuple[TextEncoderRole, ...]:
        return tuple(encoder for encoder in self.encoders if encoder.role != "t5")

    @property
    def long_encoder(self) -> TextEncoderRole:
        """The encoder a Long-CLIP replaces (CLIP-L; SD 2's OpenCLIP-H)."""
        return next(encoder for encoder in self.encoders if encoder.long)


_CLIP_L_LAST = TextEncoderRole("text_encoder", "tokenizer", "clip_l", layer=-1, final_norm=True, long=True)
_CLIP_L_PENULTIMATE = TextEncoderRole("text_encoder", "tokenizer", "clip_l", layer=-2, long=True)
_BIG_G = TextEncoderRole("text_encoder_2", "tokenizer_2", "clip_g", layer=-2, pooled="projection")

# In the order `longclip tiny` writes them (each tiny pipeline's seed is its position) and the demo offers them.
FAMILIES: dict[str, Family] = {
    family.key: family
    for family in (
        Family(
            "sd15",
            "SD 1.5",
            "StableDiffusionPipeline",
            "LongCLIPStableDiffusionPipeline",
            (_CLIP_L_LAST,),
            clip_activation="quick_gelu",
            default_pipeline="stable-diffusion-v1-5/stable-diffusion-v1-5",
            tiny_builder="tiny_sd15_pipeline",
            single_file=True,
            comfy=ComfyWorkflow("v1-5-pruned-emaonly.safetensors", 512, 30, 7.0, "normal", "LongCLIPTextEncode"),
            variants=(
                "AnimateDiffControlNetPipeline",
                "AnimateDiffPAGPipeline",
                "AnimateDiffPipeline",
                "AnimateDiffSparseControlNetPipeline",
                "AnimateDiffVideoToVideoControlNetPipeline",
                "AnimateDiffVideoToVideoPipeline",
                "CycleDiffusionPipeline",
                "LatentConsistencyModelImg2ImgPipeline",
                "LatentConsistencyModelPipeline",
                "PIAPipeline",
                "StableDiffusionAdapterPipeline",
                "StableDiffusionControlNetImg2ImgPipeline",
                "StableDiffusionControlNetInpaintPipeline",
                "StableDiffusionControlNetPAGInpaintPipeline",
                "StableDiffusionControlNetPAGPipeline",
                "StableDiffusionControlNetPipeline",
                "StableDiffusionControlNetXSPipeline",
                "StableDiffusionDepth2ImgPipeline",
                "StableDiffusionDiffEditPipeline",
                "StableDiffusionGLIGENPipeline",
                "StableDiffusionGLIGENTextImagePipeline",
                "StableDiffusionImg2ImgPipeline",
                "StableDiffusionInpaintPipeline",
                "StableDiffusionLDM3DPipeline",
                "StableDiffusionPAGImg2ImgPipeline",
                "StableDiffusionPAGInpaintPipeline",
                "StableDiffusionPAGPipeline",
                "StableDiffusionPanoramaPipeline",
                "StableDiffusionParadigmsPipeline",
                "StableDiffusionSAGPipeline",
                "StableDiffusionUpscalePipeline",
                "StableUnCLIPImg2ImgPipeline",
                "StableUnCLIPPipeline",
                "TextToVideoSDPipeline",
                "TextToVideoZeroPipeline",
                "VideoToVideoSDPipeline",
            ),
        ),
        Family(
            "sdxl",
            "SDXL",
            "StableDiffusionXLPipeline",
            "LongCLIPStableDiffusionXLPipeline",
            (_CLIP_L_PENULTIMATE, _BIG_G),
            clip_activation="quick_gelu",
            default_pipeline="stabilityai/stable-diffusion-xl-base-1.0",
            tiny_builder="tiny_sdxl_pipeline",
            big_g_strategies=True,
            single_file=True,
            comfy=ComfyWorkflow(
                "sd_xl_base_1.0.safetensors",
                1024,
                30,
                7.0,
                "normal",
                "LongCLIPTextEncodeSDXL",
                clip_g="checkpoint",
                size_inputs=True,
            ),
            variants=(
                "AnimateDiffSDXLPipeline",
                "StableDiffusionXLAdapterPipeline",
                "StableDiffusionXLControlNetImg2ImgPipeline",
                "StableDiffusionXLControlNetInpaintPipeline",
                "StableDiffusionXLControlNetPAGImg2ImgPipeline",
                "StableDiffusionXLControlNetPAGPipeline",
                "StableDiffusionXLControlNetPipeline",
                "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                "StableDiffusionXLControlNetUnionInpaintPipeline",
                "StableDiffusionXLControlNetUnionPipeline",
                "StableDiffusionXLControlNetXSPipeline",
                "StableDiffusionXLImg2ImgPipeline",
                "StableDiffusionXLInpaintPipeline",
                "StableDiffusionXLPAGImg2ImgPipeline",
                "StableDiffusionXLPAGInpaintPipeline",
                "StableDiffusionXLPAGPipeline",
                "TextToVideoZeroSDXLPipeline",
            ),
        ),
        Family(
            "sd2",
            "SD 2.x",
            "StableDiffusionPipeline",
            "LongCLIPStableDiffusionPipeline",
            (TextEncoderRole("text_encoder", "tokenizer", "clip_h", layer=-1, final_norm=True, long=True),),
            clip_activation="gelu",
            default_pipeline="stabilityai/stable-diffusion-2-1",
            tiny_builder="tiny_sd2_pipeline",  # runs SD 1.5's pipeline classes (its `variants`)
        ),
        Family(
            "sd3",
            "SD 3",
            "StableDiffusion3Pipeline",
            "LongCLIPStableDiffusion3Pipeline",
            (
                TextEncoderRole("text_encoder", "tokenizer", "clip_l", layer=-2, pooled="projection", long=True),
                _BIG_G,
                TextEncoderRole("text_encoder_3", "tokenizer_3", "t5", layer=-1),
            ),
            clip_activation="quick_gelu",
            default_pipeline="stabilityai/stable-diffusion-3.5-medium",
            tiny_builder="tiny_sd3_pipeline",
            t5=T5Spec("tokenizer_3", default_length=256, max_length=512),
            big_g_strategies=True,
            comfy=ComfyWorkflow(
                "sd3.5_large.safetensors",
                1024,
                28,
                4.5,
                "sgm_uniform",
                "LongCLIPTextEncodeSD3",
                clip_g="file",
                latent_node="EmptySD3LatentImage",
            ),
            variants=(
                "StableDiffusion3ControlNetInpaintingPipeline",
                "StableDiffusion3ControlNetPipeline",
                "StableDiffusion3Img2ImgPipeline",
                "StableDiffusion3InpaintPipeline",
                "StableDiffusion3PAGImg2ImgPipeline",
                "StableDiffusion3PAGPipeline",
            ),
        ),
        Family(
            "flux",
            "Flux.1",
            "FluxPipeline",
            "LongCLIPFluxPipeline",
            (
                TextEncoderRole("text_encoder", "tokenizer", "clip_l", pooled="output", long=True),
                TextEncoderRole("text_encoder_2", "tokenizer_2", "t5", layer=-1),
            ),
            clip_activation="quick_gelu",
            default_pipeline="black-forest-labs/FLUX.1-schnell",
            tiny_builder="tiny_flux_pipeline",
            t5=T5Spec("tokenizer_2", default_length=512, max_length=512),
            reads_negative=False,
            window_limit=1,
            comfy=ComfyWorkflow(
                "flux1-dev.safetensors",
                1024,
                20,
                1.0,
                "simple",
                "LongCLIPTextEncodeFlux",
                guidance=3.5,
                diffusion_model_only=True,
                latent_node="EmptySD3LatentImage",
            ),
            variants=(
                "FluxControlImg2ImgPipeline",
                "FluxControlInpaintPipeline",
                "FluxControlNetImg2ImgPipeline",
                "FluxControlNetInpaintPipeline",
                "FluxControlNetPipeline",
                "FluxControlPipeline",
                "FluxFillPipeline",
                "FluxImg2ImgPipeline",
                "FluxInpaintPipeline",
                "FluxKontextInpaintPipeline",
                "FluxKontextPipeline",
                "FluxPriorReduxPipeline",
            ),
        ),
    )
}


def families_of(stock_pipeline: str) -> list[Family]:
    """The families whose text-to-image pipeline is `stock_pipeline` (SD 1.x and 2.x share one)."""
    return [family for family in FAMILIES.values() if family.stock_pipeline == stock_pipeline]


def family_of(stock_pipeline: str, clip_activation: str | None = None) -> Family | None:
    """The family whose text-to-image pipeline is `stock_pipeline`, told apart by its first CLIP's activation where
    families share one (the first of them when it is not given or fits none); None for no family here."""
    matches = families_of(stock_pipeline)
    fitting = (family for family in matches if clip_activation in (None, family.clip_activation))
    return next(fitting, matches[0] if matches else None)


def describe_families() -> str:
    """ "StableDiffusionPipeline (SD 1.5, SD 2.x), StableDiffusionXLPipeline (SDXL), ...", for error messages."""
    names: dict[str, list[str]] = {}
    for family in FAMILIES.values():
        names.setdefault(family.stock_pipeline, []).append(family.name)
    return ", ".join(f"{stock} ({', '.join(family_names)})" for stock, family_names in names.items())


def family_running(pipeline_class: str) -> Family | None:
    """The family whose text-to-image class or one of whose `variants` is `pipeline_class` (SD 2.x runs SD 1.5's
    classes: SD 1.5 is named for them); None for a class of no family here."""
    return next(
        (f for f in FAMILIES.values() if pipeline_class == f.stock_pipeline or pipeline_class in f.variants), None
    )
