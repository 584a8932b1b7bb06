# Long-CLIP Stable Diffusion 3 / 3.5 pipeline for diffusers.
#
# Load it like the stock pipeline, or as a diffusers custom pipeline:
#     DiffusionPipeline.from_pretrained(sd3_id, custom_pipeline=<this folder>, text_encoder=..., tokenizer=...)
# A folder written by its `save_pretrained` holds a copy of this file and loads back with
#     DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
"""`LongCLIPStableDiffusion3Pipeline`: SD 3 / 3.5 conditioned on prompts far past 77 CLIP tokens."""

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.loaders import SD3LoraLoaderMixin
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    SiglipImageProcessor,
    SiglipVisionModel,
    T5EncoderModel,
    T5TokenizerFast,
)

from longclip_diffusers.pipelines.saving import SavesItsCode
from longclip_diffusers.prompts import (
    SDXL_STRATEGIES,
    TextEncoderSpec,
    as_prompt_list,
    encode_sd3_prompts,
    negative_prompt_list,
    paired_prompt_list,
    repeat_per_image,
    require_pooled,
    require_text_projection,
    sdxl_text_spec,
    windows_in,
)
from longclip_diffusers.tokenizer import check_pair


class LongCLIPStableDiffusion3Pipeline(SavesItsCode, StableDiffusion3Pipeline):
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
        """SD 3 reads both CLIP encoders' penultimate layer (one more per `clip_skip`), without the final norm."""
        pairs = [(self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)]
        return [sdxl_text_spec(text_encoder, tokenizer, clip_skip) for text_encoder, tokenizer in pairs]

    def _check_text_components(self) -> None:
        for names in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            text_encoder, tokenizer = (getattr(self, name, None) for name in names)
            if text_encoder is not None:
                require_text_projection(text_encoder, names[0])
                if tokenizer is not None:
                    check_pair(tokenizer, text_encoder.config, "/".join(names))

    def encode_prompt(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        prompt_embeds: torch.FloatTensor | None = None,
        negative_prompt_embeds: torch.FloatTensor | None = None,
        pooled_prompt_embeds: torch.FloatTensor | None = None,
        negative_pooled_prompt_embeds: torch.FloatTensor | None = None,
        clip_skip: int | None = None,
        max_sequence_length: int = 256,
        lora_scale: float | None = None,
    ):
        r"""Encode prompts (of any length) into SD 3 conditioning; arguments as in the stock pipeline."""
        device = device or self._execution_device

        # 1. Validate before any compute
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            prompts_2 = paired_prompt_list(prompt_2, prompts, "prompt_2")
            prompts_3 = paired_prompt_list(prompt_3, prompts, "prompt_3")
            batch_size = len(prompts)
        else:
            require_pooled(pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds")
            prompts, prompts_2, prompts_3 = [], [], []
            batch_size = prompt_embeds.shape[0]
        need_negative = do_classifier_free_guidance and negative_prompt_embeds is None
        if do_classifier_free_guidance and not need_negative:
            require_pooled(negative_pooled_prompt_embeds, "negative_prompt_embeds", "negative_pooled_prompt_embeds")
        negatives, negatives_2, negatives_3 = [], [], []
        if need_negative:
            negatives = negative_prompt_list(negative_prompt, batch_size)
            negatives_2 = negative_prompt_list(negative_prompt_2 or negative_prompt, batch_size, "negative_prompt_2")
            negatives_3 = negative_prompt_list(negative_prompt_3 or negative_prompt, batch_size, "negative_prompt_3")
        texts = prompts + negatives
        if texts:
            self._check_text_components()

        # 2. LoRA scale on both CLIP encoders, as the stock pipeline applies it
        clip_encoders = [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]
        if lora_scale is not None and isinstance(self, SD3LoraLoaderMixin):
            self._lora_scale = lora_scale
            if USE_PEFT_BACKEND:
                for text_encoder in clip_encoders:
                    scale_lora_layers(text_encoder, lora_scale)

        # 3. Encode positive and negative prompts together, so their window counts line up
        if texts:
            given = prompt_embeds if prompt_embeds is not None else negative_prompt_embeds
            specs = self._text_specs(clip_skip)
            texts_2 = prompts_2 + negatives_2
            embeds, pooled = encode_sd3_prompts(
                texts,
                specs,
                self.text_encoder_3,
                self.tokenizer_3,
                prompts_2=texts_2 if texts_2 != texts else None,
                prompts_3=prompts_3 + negatives_3,
                max_sequence_length=max_sequence_length,
                t5_width=self.transformer.config.joint_attention_dim if self.text_encoder_3 is None else None,
                strategy=self.config.long_prompt_strategy,
                weighting=self.config.prompt_weighting,
                max_windows=self.config.max_prompt_windows,
                min_windows=windows_in(_clip_part(given, max_sequence_length), specs[0].num_positions),
                split_at=batch_size if prompt_embeds is None and need_negative else None,
                device=device,
            )
            if prompt_embeds is None:
                prompt_embeds, pooled_prompt_embeds = embeds[:batch_size], pooled[:batch_size]
            if need_negative:
                negative_prompt_embeds, negative_pooled_prompt_embeds = embeds[-batch_size:], pooled[-batch_size:]
        if do_classifier_free_guidance and negative_prompt_embeds.shape[1] != prompt_embeds.shape[1]:
            raise ValueError(
                f"prompt_embeds has {prompt_embeds.shape[1]} tokens but negative_prompt_embeds has "
                f"{negative_prompt_embeds.shape[1]}; encode both with the same number of windows and the same "
                "max_sequence_length."
            )

        # 4. Device and one copy per image, as the stock pipeline does
        prompt_embeds = repeat_per_image(prompt_embeds.to(device), num_images_per_prompt)
        pooled_prompt_embeds = repeat_per_image(pooled_prompt_embeds.to(device), num_images_per_prompt)
        if do_classifier_free_guidance:
            negative_prompt_embeds = repeat_per_image(negative_prompt_embeds.to(device), num_images_per_prompt)
            negative_pooled_prompt_embeds = repeat_per_image(
                negative_pooled_prompt_embeds.to(device), num_images_per_prompt
            )

        if isinstance(self, SD3LoraLoaderMixin) and USE_PEFT_BACKEND:
            for text_encoder in clip_encoders:
                unscale_lora_layers(text_encoder, lora_scale)
        return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds


def _clip_part(embeds: torch.Tensor | None, max_sequence_length: int) -> torch.Tensor | None:
    """The CLIP rows of given SD 3 embeddings (T5's `max_sequence_length` rows follow them)."""
    return None if embeds is None else embeds[:, : max(embeds.shape[1] - max_sequence_length, 0)]
