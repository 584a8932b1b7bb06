# Long-CLIP Stable Diffusion XL pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(sdxl_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPStableDiffusionXLPipeline`: SDXL conditioned on prompts far past 77 tokens."""

from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from longclip_diffusers.pipelines.encoding import StableDiffusionXLPromptEncoding
from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.pipelines.single_file import LongCLIPSingleFileMixin


class LongCLIPStableDiffusionXLPipeline(
    LongCLIPSingleFileMixin, SavesItsCode, StableDiffusionXLPromptEncoding, StableDiffusionXLPipeline
):
    r"""SDXL with Long-CLIP conditioning: 248-token CLIP-L windows, windows past 248, A1111 weighting.

    Same components, signature and features as [`StableDiffusionXLPipeline`]; only prompt encoding differs.
    CLIP-L (`text_encoder`) is Long-CLIP and sets the window length; SDXL's conditioning is kept: penultimate
    hidden states of both encoders, concatenated, and the pooled `text_embeds` of `text_encoder_2`. OpenCLIP-bigG
    (`text_encoder_2`) has no fine-tuned long version; when it is shorter than the windows it is used by
    `long_prompt_strategy`:
    - `"chunk"` (default): bigG reads the same tokens in 77-token chunks, its states aligned token for token
      with CLIP-L's; every chunk stays a normal bigG input. The pooled vector is the first chunk's.
    - `"stretch"`: bigG stretched to the window length without training (one pass; the pooled vector sees the
      whole window, but positions past 20 were never trained).
    A long `text_encoder_2` (e.g. from `longclip stretch`) is used as it is. With the stock 77-token encoders
    and a prompt that fits, the conditioning equals the stock pipeline's.

    Args (besides the stock ones):
        long_prompt_strategy (`str`, defaults to `"chunk"`): `"chunk"` or `"stretch"`.
        prompt_weighting (`bool`, defaults to `True`): parse A1111 weighting syntax.
        max_prompt_windows (`int`, *optional*): drop prompt text past this many windows, with a warning that
            names the dropped words. Unlimited by default.
    """

    code_file = "pipeline_longclip_sdxl"  # this module's name in a saved folder (see SavesItsCode)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        long_prompt_strategy: str = "chunk",
        prompt_weighting: bool = True,
        max_prompt_windows: int | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self._register_long_prompt_config(
            long_prompt_strategy=long_prompt_strategy,
            prompt_weighting=prompt_weighting,
            max_prompt_windows=max_prompt_windows,
        )
