# Long-CLIP Flux.1 pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(flux_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPFluxPipeline`: Flux.1 whose CLIP-L pooled vector reads 248 tokens, with A1111 weighting."""

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    T5EncoderModel,
    T5TokenizerFast,
)

from longclip_diffusers.pipelines.encoding import FluxPromptEncoding
from longclip_diffusers.pipelines.saving import SavesItsCode


class LongCLIPFluxPipeline(SavesItsCode, FluxPromptEncoding, FluxPipeline):
    r"""Flux.1 (dev / schnell) with Long-CLIP-L: its pooled vector reads 248 tokens; A1111 weighting for T5.

    Same components, signature and features as [`FluxPipeline`]; only prompt encoding differs. Flux reads CLIP-L's
    pooled output (`text_encoder`, a `CLIPTextModel` such as Long-CLIP-L) and T5's states (`text_encoder_2`):
    - CLIP-L reads `prompt` in its first window: up to 246 tokens with Long-CLIP-L (75 with CLIP), ending at a word
      boundary or at the first `BREAK`;
    - T5 reads `prompt_2` (default `prompt`) as the stock pipeline gives it, up to `max_sequence_length` tokens;
    - `(word)`, `(word:1.3)`, `[word]`, `\(` and `BREAK` (A1111 syntax) are parsed unless `prompt_weighting=False`,
      so no bracket reaches either encoder: weights scale T5's token states (as CLIP's in the other pipelines);
      the pooled vector has no per-token states and reads the words unweighted; `BREAK` ends CLIP's window and
      only separates words for T5;
    - given embeddings are repeated for `num_images_per_prompt` like computed ones.
    With the stock 77-token CLIP-L and a prompt without weighting syntax, the conditioning equals the stock
    pipeline's.

    Args (besides the stock ones):
        prompt_weighting (`bool`, defaults to `True`): parse A1111 weighting syntax.
    """

    code_file = "pipeline_longclip_flux"  # this module's name in a saved folder (see SavesItsCode)

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        text_encoder_2: T5EncoderModel,
        tokenizer_2: T5TokenizerFast,
        transformer: FluxTransformer2DModel,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        prompt_weighting: bool = True,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self._register_long_prompt_config(prompt_weighting=prompt_weighting)
