# Long-CLIP Stable Diffusion XL pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(sdxl_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPStableDiffusionXLPipeline`: SDXL conditioned on prompts far past 77 tokens."""

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.pipelines.single_file import LongCLIPSingleFileMixin
from longclip_diffusers.prompts import (
    SDXL_STRATEGIES,
    TextEncoderSpec,
    as_prompt_list,
    encode_prompts,
    has_added_tokens,
    negative_prompt_list,
    repeat_per_image,
    sdxl_text_spec,
    windows_in,
)
from longclip_diffusers.tokenizer import check_pair


class LongCLIPStableDiffusionXLPipeline(LongCLIPSingleFileMixin, SavesItsCode, StableDiffusionXLPipeline):
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
        if long_prompt_strategy not in SDXL_STRATEGIES:
            raise ValueError(
                f"long_prompt_strategy={long_prompt_strategy!r}; choose one of {', '.join(SDXL_STRATEGIES)}."
            )
        self.register_to_config(
            long_prompt_strategy=long_prompt_strategy,
            prompt_weighting=prompt_weighting,
            max_prompt_windows=max_prompt_windows,
        )
        self._check_text_components()

    def _text_specs(self, clip_skip: int | None) -> list[TextEncoderSpec]:
        """SDXL reads the penultimate layer (one more per `clip_skip`), without the final layer norm."""
        pairs = [(self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)]
        return [sdxl_text_spec(te, tok, clip_skip) for te, tok in pairs if te is not None]

    def _check_text_components(self) -> None:
        for names in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            text_encoder, tokenizer = (getattr(self, name, None) for name in names)
            if text_encoder is not None and tokenizer is not None:
                check_pair(tokenizer, text_encoder.config, "/".join(names))

    def encode_prompt(
        self,
        prompt: str,
        prompt_2: str | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | None = None,
        negative_prompt_2: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        r"""Encode prompts (of any length) into SDXL conditioning; arguments as in the stock pipeline."""
        device = device or self._execution_device

        # 1. Validate before any compute
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            prompts_2 = as_prompt_list(prompt_2, "prompt_2") if prompt_2 is not None else prompts
            if len(prompts_2) != len(prompts):
                raise ValueError(f"`prompt_2` has {len(prompts_2)} prompts but `prompt` has {len(prompts)}.")
            batch_size = len(prompts)
        else:
            prompts, prompts_2 = [], []
            batch_size = prompt_embeds.shape[0]
        zero_negative = negative_prompt is None and self.config.force_zeros_for_empty_prompt
        need_negative = do_classifier_free_guidance and negative_prompt_embeds is None and not zero_negative
        negatives, negatives_2 = [], []
        if need_negative:
            negatives = negative_prompt_list(negative_prompt, batch_size)
            negatives_2 = negative_prompt_list(negative_prompt_2, batch_size, "negative_prompt_2")
            if negative_prompt_2 is None:
                negatives_2 = negatives
        texts, texts_2 = prompts + negatives, prompts_2 + negatives_2
        if texts:
            self._check_text_components()

        # 2. LoRA scale on both text encoders, as the stock pipeline applies it
        text_encoders = [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]
        if lora_scale is not None and isinstance(self, StableDiffusionXLLoraLoaderMixin):
            self._lora_scale = lora_scale
            for text_encoder in text_encoders:
                if not USE_PEFT_BACKEND:
                    adjust_lora_scale_text_encoder(text_encoder, lora_scale)
                else:
                    scale_lora_layers(text_encoder, lora_scale)

        # 3. Encode positive and negative prompts together, so their window counts line up
        if texts:
            specs = self._text_specs(clip_skip)
            if isinstance(self, TextualInversionLoaderMixin):  # multi-vector textual-inversion tokens
                if has_added_tokens(specs[0].tokenizer):
                    texts = self.maybe_convert_prompt(texts, specs[0].tokenizer)
                if has_added_tokens(specs[-1].tokenizer):
                    texts_2 = self.maybe_convert_prompt(texts_2, specs[-1].tokenizer)
            given = prompt_embeds if prompt_embeds is not None else negative_prompt_embeds
            embeds, pooled = encode_prompts(
                texts,
                specs,
                strategy=self.config.long_prompt_strategy,
                weighting=self.config.prompt_weighting,
                max_windows=self.config.max_prompt_windows,
                prompts_2=texts_2 if texts_2 != texts else None,
                split_at=batch_size if prompt_embeds is None and need_negative else None,
                min_windows=windows_in(given, specs[0].num_positions),
                device=device,
            )
            if prompt_embeds is None:
                prompt_embeds = embeds[:batch_size]
                pooled_prompt_embeds = pooled[:batch_size] if pooled_prompt_embeds is None else pooled_prompt_embeds
            if need_negative:
                negative_prompt_embeds = embeds[-batch_size:]
                if negative_pooled_prompt_embeds is None:
                    negative_pooled_prompt_embeds = pooled[-batch_size:]
        if do_classifier_free_guidance and negative_prompt_embeds is None:  # zero_negative
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        if do_classifier_free_guidance and negative_prompt_embeds.shape[1] != prompt_embeds.shape[1]:
            raise ValueError(
                f"prompt_embeds has {prompt_embeds.shape[1]} tokens but negative_prompt_embeds has "
                f"{negative_prompt_embeds.shape[1]}; encode both with the same number of windows."
            )

        # 4. Dtype, device and one copy per image, as the stock pipeline does
        dtype = self.text_encoder_2.dtype if self.text_encoder_2 is not None else self.unet.dtype
        prompt_embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        pooled_prompt_embeds = repeat_per_image(pooled_prompt_embeds.to(device=device), num_images_per_prompt)
        if do_classifier_free_guidance:
            negative_prompt_embeds = repeat_per_image(
                negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt
            )
            negative_pooled_prompt_embeds = repeat_per_image(
                negative_pooled_prompt_embeds.to(device=device), num_images_per_prompt
            )

        if isinstance(self, StableDiffusionXLLoraLoaderMixin) and USE_PEFT_BACKEND:
            for text_encoder in text_encoders:
                unscale_lora_layers(text_encoder, lora_scale)
        return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
