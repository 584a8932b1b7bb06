# Long-CLIP Stable Diffusion (1.x / 2.x) pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(sd15_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPStableDiffusionPipeline`: Stable Diffusion conditioned on prompts far past 77 tokens."""

from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from longclip_diffusers.pipelines.encoding import StableDiffusionPromptEncoding
from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.pipelines.single_file import LongCLIPSingleFileMixin


class LongCLIPStableDiffusionPipeline(
    LongCLIPSingleFileMixin, SavesItsCode, StableDiffusionPromptEncoding, StableDiffusionPipeline
):
    r"""Stable Diffusion with Long-CLIP conditioning: 248 tokens per window, windows past 248, A1111 weighting.

    Same components, signature and features as [`StableDiffusionPipeline`]; only prompt encoding differs:
    - the prompt is encoded in windows of the text encoder's length (248 for Long-CLIP, 77 for CLIP), each with
      its start and end tokens, concatenated; the negative prompt is padded with empty-prompt windows to the
      same length (and the other way round);
    - `(word)`, `(word:1.3)`, `[word]`, `\(`, and `BREAK` weight or split the prompt (A1111 syntax), unless
      `prompt_weighting=False`;
    - `clip_skip` works with transformers 4.x and 5.x.
    With a stock 77-token encoder and a prompt that fits, the conditioning equals the stock pipeline's.

    Args (besides the stock ones):
        prompt_weighting (`bool`, defaults to `True`): parse A1111 weighting syntax.
        max_prompt_windows (`int`, *optional*): drop prompt text past this many windows, with a warning that
            names the dropped words. Unlimited by default.
    """

    code_file = "pipeline_longclip_sd"  # this module's name in a saved folder (see SavesItsCode)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker,
        feature_extractor: CLIPImageProcessor,
        image_encoder: CLIPVisionModelWithProjection = None,
        requires_safety_checker: bool = True,
        prompt_weighting: bool = True,
        max_prompt_windows: int | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self._register_long_prompt_config(prompt_weighting=prompt_weighting, max_prompt_windows=max_prompt_windows)
