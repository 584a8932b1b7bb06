# Long-CLIP Stable Diffusion (1.x / 2.x) pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(sd15_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPStableDiffusionPipeline`: Stable Diffusion conditioned on prompts far past 77 tokens."""

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.pipelines.single_file import LongCLIPSingleFileMixin
from longclip_diffusers.prompts import (
    as_prompt_list,
    encode_prompts,
    has_added_tokens,
    negative_prompt_list,
    repeat_per_image,
    sd_text_spec,
    windows_in,
)
from longclip_diffusers.tokenizer import check_pair


class LongCLIPStableDiffusionPipeline(LongCLIPSingleFileMixin, SavesItsCode, StableDiffusionPipeline):
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
        self.register_to_config(prompt_weighting=prompt_weighting, max_prompt_windows=max_prompt_windows)
        self._check_text_components()

    def _check_text_components(self) -> None:
        if self.text_encoder is not None and self.tokenizer is not None:
            check_pair(self.tokenizer, self.text_encoder.config, "text_encoder/tokenizer")

    def encode_prompt(
        self,
        prompt,
        device,
        num_images_per_prompt,
        do_classifier_free_guidance,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        r"""Encode prompts (of any length) into text-encoder hidden states; arguments as in the stock pipeline."""
        # 1. Validate before any compute
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            batch_size = len(prompts)
        else:
            batch_size = prompt_embeds.shape[0]
        need_negative = do_classifier_free_guidance and negative_prompt_embeds is None
        negatives = negative_prompt_list(negative_prompt, batch_size) if need_negative else []
        texts = (prompts if prompt_embeds is None else []) + negatives
        if texts:
            self._check_text_components()

        # 2. LoRA scale on the text encoder, as the stock pipeline applies it
        if lora_scale is not None and isinstance(self, StableDiffusionLoraLoaderMixin):
            self._lora_scale = lora_scale
            if not USE_PEFT_BACKEND:
                adjust_lora_scale_text_encoder(self.text_encoder, lora_scale)
            else:
                scale_lora_layers(self.text_encoder, lora_scale)

        # 3. Encode positive and negative prompts together, so their window counts line up
        if texts:
            if isinstance(self, TextualInversionLoaderMixin) and has_added_tokens(self.tokenizer):
                texts = self.maybe_convert_prompt(texts, self.tokenizer)  # multi-vector textual-inversion tokens
            window = self.tokenizer.model_max_length
            given = prompt_embeds if prompt_embeds is not None else negative_prompt_embeds
            spec = sd_text_spec(self.text_encoder, self.tokenizer, clip_skip)
            embeds, _ = encode_prompts(
                texts,
                [spec],
                weighting=self.config.prompt_weighting,
                max_windows=self.config.max_prompt_windows,
                split_at=batch_size if prompt_embeds is None and need_negative else None,
                min_windows=windows_in(given, window),
                device=device,
            )
            if prompt_embeds is None:
                prompt_embeds = embeds[:batch_size]
            if need_negative:
                negative_prompt_embeds = embeds[-batch_size:]
        if do_classifier_free_guidance and negative_prompt_embeds.shape[1] != prompt_embeds.shape[1]:
            raise ValueError(
                f"prompt_embeds has {prompt_embeds.shape[1]} tokens but negative_prompt_embeds has "
                f"{negative_prompt_embeds.shape[1]}; encode both with the same number of windows."
            )

        # 4. Dtype, device and one copy per image, as the stock pipeline does
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        if do_classifier_free_guidance:
            negative_prompt_embeds = repeat_per_image(
                negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt
            )

        if self.text_encoder is not None and isinstance(self, StableDiffusionLoraLoaderMixin) and USE_PEFT_BACKEND:
            unscale_lora_layers(self.text_encoder, lora_scale)
        return prompt_embeds, negative_prompt_embeds
