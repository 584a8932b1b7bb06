# Long-CLIP Flux.1 pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(flux_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPFluxPipeline`: Flux.1 whose CLIP-L pooled vector reads 248 tokens, with A1111 weighting."""

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.loaders import FluxLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    T5EncoderModel,
    T5TokenizerFast,
)

from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.prompts import (
    as_prompt_list,
    encode_flux_prompts,
    has_added_tokens,
    paired_prompt_list,
    repeat_per_image,
    require_pooled,
    require_pooler_output,
)
from longclip_diffusers.tokenizer import check_pair


class LongCLIPFluxPipeline(SavesItsCode, FluxPipeline):
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
        self.register_to_config(prompt_weighting=prompt_weighting)
        self._check_text_components()

    def _check_text_components(self) -> None:
        if self.text_encoder is not None:
            require_pooler_output(self.text_encoder, "text_encoder")
            if self.tokenizer is not None:
                check_pair(self.tokenizer, self.text_encoder.config, "text_encoder/tokenizer")

    def encode_prompt(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.FloatTensor | None = None,
        pooled_prompt_embeds: torch.FloatTensor | None = None,
        max_sequence_length: int = 512,
        lora_scale: float | None = None,
    ):
        r"""Encode prompts into Flux conditioning (T5 states, CLIP-L pooled vector, text ids); arguments as in the
        stock pipeline."""
        device = device or self._execution_device

        # 1. Validate before any compute
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            prompts_2 = paired_prompt_list(prompt_2, prompts, "prompt_2")
            self._check_text_components()
        else:
            require_pooled(pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds")

        # 2. LoRA scale on both text encoders, as the stock pipeline applies it
        text_encoders = [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]
        if lora_scale is not None and isinstance(self, FluxLoraLoaderMixin):
            self._lora_scale = lora_scale
            if USE_PEFT_BACKEND:
                for text_encoder in text_encoders:
                    scale_lora_layers(text_encoder, lora_scale)

        # 3. Encode
        if prompt_embeds is None:
            if isinstance(self, TextualInversionLoaderMixin):  # multi-vector textual-inversion tokens
                if has_added_tokens(self.tokenizer):
                    prompts = self.maybe_convert_prompt(prompts, self.tokenizer)
                if has_added_tokens(self.tokenizer_2):
                    prompts_2 = self.maybe_convert_prompt(prompts_2, self.tokenizer_2)
            prompt_embeds, pooled_prompt_embeds = encode_flux_prompts(
                prompts,
                self.text_encoder,
                self.tokenizer,
                self.text_encoder_2,
                self.tokenizer_2,
                prompts_2=prompts_2,
                max_sequence_length=max_sequence_length,
                weighting=self.config.prompt_weighting,
                device=device,
            )

        # 4. Device and one copy per image, as the stock pipeline does
        prompt_embeds = repeat_per_image(prompt_embeds.to(device), num_images_per_prompt)
        pooled_prompt_embeds = repeat_per_image(pooled_prompt_embeds.to(device), num_images_per_prompt)

        if isinstance(self, FluxLoraLoaderMixin) and USE_PEFT_BACKEND:
            for text_encoder in text_encoders:
                unscale_lora_layers(text_encoder, lora_scale)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.transformer.dtype
        text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=device, dtype=dtype)
        return prompt_embeds, pooled_prompt_embeds, text_ids
