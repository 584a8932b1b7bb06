# Long-CLIP Stable Diffusion 3 / 3.5 pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(sd3_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPStableDiffusion3Pipeline`: SD 3 / 3.5 conditioned on prompts far past 77 CLIP tokens."""

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    SiglipImageProcessor,
    SiglipVisionModel,
    T5EncoderModel,
    T5TokenizerFast,
)

from longclip_diffusers.pipelines.encoding import StableDiffusion3PromptEncoding
from longclip_diffusers.pipelines.saving import SavesItsCode


class LongCLIPStableDiffusion3Pipeline(SavesItsCode, StableDiffusion3PromptEncoding, StableDiffusion3Pipeline):
    r"""SD 3 / 3.5 with Long-CLIP conditioning: 248-token CLIP-L windows, windows past 248, A1111 weighting.

    Same components, signature and features as [`StableDiffusion3Pipeline`]; only prompt encoding differs.
    SD 3's conditioning is kept: the penultimate hidden states of CLIP-L and bigG side by side, zero-padded to T5's
    width, followed on the sequence axis by T5's `max_sequence_length` states; pooled = both CLIP projections.
    - CLIP-L (`text_encoder`, e.g. Long-CLIP-L loaded with `with_projection=True`) sets the window length: the
      prompt is encoded in windows of 248 tokens (77 for CLIP), each with its start and end tokens, concatenated;
      the pooled vectors are the first window's. The negative prompt is padded to the same number of windows (and
      the other way round).
    - bigG (`text_encoder_2`) has no fine-tuned long version; when it is shorter than the windows it is used by
      `long_prompt_strategy`, aligned token for token with CLIP-L: `"chunk"` (default; 77-token chunks, every one
      a normal bigG input) or `"stretch"` (stretched to the window length without training). A long
      `text_encoder_2` is used as it is.
    - T5 (`text_encoder_3`) reads `prompt_3` (default `prompt`) as the stock pipeline gives it, up to
      `max_sequence_length` tokens.
    - `(word)`, `(word:1.3)`, `[word]`, `\(` and `BREAK` (A1111 syntax) weight or split the prompt for all three
      encoders unless `prompt_weighting=False`: weights scale the token states of CLIP-L, bigG and T5 (not the
      pooled vectors); `BREAK` starts a new CLIP window and only separates words for T5, which has no windows.
    - `clip_skip` applies to the negative prompt too (the stock pipeline reads its penultimate layer regardless),
      and given embeddings are repeated for `num_images_per_prompt` like computed ones.
    With the stock 77-token encoders and a prompt that fits, the conditioning equals the stock pipeline's.

    Args (besides the stock ones):
        long_prompt_strategy (`str`, defaults to `"chunk"`): `"chunk"` or `"stretch"`.
        prompt_weighting (`bool`, defaults to `True`): parse A1111 weighting syntax.
        max_prompt_windows (`int`, *optional*): drop CLIP prompt text past this many windows, with a warning that
            names the dropped words. Unlimited by default.
    """

    code_file = "pipeline_longclip_sd3"  # this module's name in a saved folder (see SavesItsCode)

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer_2: CLIPTokenizer,
        text_encoder_3: T5EncoderModel,
        tokenizer_3: T5TokenizerFast,
        image_encoder: SiglipVisionModel = None,
        feature_extractor: SiglipImageProcessor = None,
        long_prompt_strategy: str = "chunk",
        prompt_weighting: bool = True,
        max_prompt_windows: int | None = None,
    ):
        super().__init__(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self._register_long_prompt_config(
            long_prompt_strategy=long_prompt_strategy,
            prompt_weighting=prompt_weighting,
            max_prompt_windows=max_prompt_windows,
        )
