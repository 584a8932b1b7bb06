"""Long-prompt `encode_prompt` for each family, shared by every Long-CLIP pipeline of that family.

A Long-CLIP pipeline is a stock diffusers pipeline with one of these mixins before it in its bases: the mixin
replaces `encode_prompt` (windows, weighting, `BREAK`, negative padding, clip_skip, LoRA scale, textual inversion
and the bigG strategies, from `longclip_diffusers.prompts`) and checks the text components as the family table
describes them. Everything else is the stock pipeline's.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.loaders import (
    FluxLoraLoaderMixin,
    SD3LoraLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
    TextualInversionLoaderMixin,
)
from diffusers.models import ModelMixin
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

from longclip_diffusers.families import FAMILIES, Family, family_running
from longclip_diffusers.prompts import (
    PromptOptions,
    TextEncoderSpec,
    check_max_windows,
    check_projection,
    check_strategy,
    encode_flux_prompts,
    encode_prompts,
    encode_sd3_prompts,
    text_encoder_specs,
)
from longclip_diffusers.tokenizer import check_pair

from .arguments import (
    as_prompt_list,
    has_added_tokens,
    input_names,
    negative_prompt_list,
    paired_prompt_list,
    repeat_per_image,
    require_pooled,
    windows_in,
)


class LongPromptEncoding:
    """What every Long-CLIP pipeline shares: its family, its long-prompt settings and the text-component checks."""

    family: Family

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' `load_config`, refusing the folder of another family's pipeline (the class to use named)."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        class_name = config.get("_class_name")
        class_name = class_name[-1] if isinstance(class_name, list) else class_name  # [module, class]: custom
        stock = class_name.removeprefix("LongCLIP") if isinstance(class_name, str) else None
        folder_family = family_running(stock) if stock else None
        if folder_family is not None and folder_family.stock_pipeline != cls.family.stock_pipeline:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a pipeline folder of {folder_family.name} ({class_name}), not of "
                f"{cls.family.name} ({cls.family.stock_pipeline}) as {cls.__name__} needs; load it with "
                f"LongCLIP{stock}.from_pretrained(...) from longclip_diffusers.pipelines."
            )
        return loaded

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' `from_pipe`, refusing in one line a pipeline with a model this class cannot take (AnimateDiff's
        motion UNet, which diffusers converts to but never back), the class to use named."""
        _check_models_fit(cls, pipeline, kwargs)
        return super().from_pipe(pipeline, **kwargs)

    def _register_long_prompt_config(self, **settings) -> None:
        """Check and record `long_prompt_strategy`, `prompt_weighting`, `max_prompt_windows` (those given)."""
        if "long_prompt_strategy" in settings:
            check_strategy(settings["long_prompt_strategy"], "long_prompt_strategy")
        if "max_prompt_windows" in settings:
            check_max_windows(settings["max_prompt_windows"], "max_prompt_windows")
        self.register_to_config(**settings)
        self._check_text_components()

    def _check_text_components(self) -> None:
        for role in self.family.clip_encoders:
            text_encoder, tokenizer = getattr(self, role.component, None), getattr(self, role.tokenizer, None)
            if text_encoder is not None:
                check_projection(self.family, role, text_encoder)
                if tokenizer is not None:
                    check_pair(tokenizer, text_encoder.config, f"{role.component}/{role.tokenizer}")

    def _text_specs(self, clip_skip: int | None) -> list[TextEncoderSpec]:
        """The family's CLIP encoders as it reads them (its layer, `clip_skip` layers earlier)."""
        roles = self.family.clip_encoders
        pairs = [(getattr(self, role.component, None), getattr(self, role.tokenizer, None)) for role in roles]
        specs = text_encoder_specs(self.family, pairs, clip_skip)
        for spec in specs:
            layers = spec.text_encoder.config.num_hidden_layers
            if isinstance(clip_skip, bool) or not isinstance(clip_skip, int | None) or -spec.hidden_layer > layers + 1:
                raise ValueError(
                    f"clip_skip={clip_skip!r} is out of range for a {layers}-layer text encoder; give a whole number "
                    f"from 0 to {layers + 1 + spec.hidden_layer + (clip_skip or 0)}."
                )
        return specs

    def _check_denoiser_width(self, widths: dict[str, int], expected: object, reads: str) -> None:
        """Refuse text encoders whose conditioning, side by side, is not as wide as the denoiser reads it: `widths`
        by component, the one to blame first (the others' widths are named in the message)."""
        if not isinstance(expected, int) or sum(widths.values()) == expected:
            return
        (name, width), *others = widths.items()
        share = "".join(f", {other_width} of it from {other}" for other, other_width in others)
        should = f" (so {expected - sum(w for _, w in others)} from {name})" if others else ""
        raise ValueError(
            f"{name} gives {width}-wide conditioning but this {type(self).__name__}'s denoiser reads {reads} "
            f"{expected} wide{share}{should}; use text encoders of the same model (a Long-CLIP of the width it "
            "replaces)."
        )

    def _pooled_width(self) -> int | None:
        """The width of the pooled vector the transformer reads (None for a pipeline without one, as Flux Redux)."""
        transformer = getattr(self, "transformer", None)
        return None if transformer is None else transformer.config.pooled_projection_dim

    def _prompt_options(self, device, split_at: int | None = None, min_windows: int = 1) -> PromptOptions:
        config = self.config
        return PromptOptions(
            strategy=config.long_prompt_strategy if self.family.big_g_strategies else "chunk",
            weighting=config.prompt_weighting,
            max_windows=getattr(config, "max_prompt_windows", None),
            min_windows=min_windows,
            split_at=split_at,
            device=device,
        )


class StableDiffusionPromptEncoding(LongPromptEncoding):
    """`encode_prompt` of SD 1.x/2.x pipelines."""

    family = FAMILIES["sd15"]  # SD 2.x reads its OpenCLIP-H the same way

    def _check_text_components(self) -> None:
        super()._check_text_components()
        unet = getattr(self, "unet", None)
        if self.text_encoder is not None and unet is not None:
            widths = {"text_encoder": self.text_encoder.config.hidden_size}
            self._check_denoiser_width(widths, unet.config.cross_attention_dim, "text")

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
            given = prompt_embeds if prompt_embeds is not None else negative_prompt_embeds
            split_at = batch_size if prompt_embeds is None and need_negative else None
            options = self._prompt_options(device, split_at, windows_in(given, self.tokenizer.model_max_length))
            embeds, _ = encode_prompts(texts, self._text_specs(clip_skip), options)
            if prompt_embeds is None:
                prompt_embeds = embeds[:batch_size]
            if need_negative:
                negative_prompt_embeds = embeds[-batch_size:]
        _check_same_length(prompt_embeds, negative_prompt_embeds if do_classifier_free_guidance else None)

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


class StableDiffusionXLPromptEncoding(LongPromptEncoding):
    """`encode_prompt` of SDXL pipelines (the refiner too: `text_encoder_2` alone)."""

    family = FAMILIES["sdxl"]

    def _check_text_components(self) -> None:
        super()._check_text_components()
        unet = getattr(self, "unet", None)
        encoders = {name: getattr(self, name, None) for name in ("text_encoder", "text_encoder_2")}
        widths = {name: encoder.config.hidden_size for name, encoder in encoders.items() if encoder is not None}
        if unet is None or not widths:
            return
        cross_attention_dim = getattr(unet.config, "cross_attention_dim", None)
        big_g = encoders["text_encoder_2"]
        if big_g is not None and cross_attention_dim != sum(widths.values()):
            # which one is wrong: bigG when its pooled text_embeds, after the size/crop ids (5 with an aesthetic
            # score), do not fit the UNet either
            time_ids = 5 if getattr(self.config, "requires_aesthetics_score", False) else 6
            time_width = getattr(unet.config, "addition_time_embed_dim", None)
            added = getattr(unet.config, "projection_class_embeddings_input_dim", None)
            if isinstance(time_width, int) and isinstance(added, int):
                pooled = {"text_encoder_2": big_g.config.projection_dim}
                self._check_denoiser_width(pooled, added - time_ids * time_width, "bigG's pooled text_embeds")
        self._check_denoiser_width(widths, cross_attention_dim, "text")

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
            split_at = batch_size if prompt_embeds is None and need_negative else None
            options = self._prompt_options(device, split_at, windows_in(given, specs[0].num_positions))
            if len(specs) == 1:  # the refiner: bigG alone reads `prompt_2`
                texts = texts_2
            embeds, pooled = encode_prompts(texts, specs, options, texts_2 if texts_2 != texts else None)
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
        _check_same_length(prompt_embeds, negative_prompt_embeds if do_classifier_free_guidance else None)

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


class StableDiffusion3PromptEncoding(LongPromptEncoding):
    """`encode_prompt` of SD 3 / 3.5 pipelines."""

    family = FAMILIES["sd3"]

    def _check_text_components(self) -> None:
        super()._check_text_components()
        transformer = getattr(self, "transformer", None)
        if transformer is None:
            return
        clips = {name: getattr(self, name, None) for name in ("text_encoder", "text_encoder_2")}
        if all(encoder is not None for encoder in clips.values()):  # CLIP-L's and bigG's projections side by side
            pooled = {name: encoder.config.projection_dim for name, encoder in clips.items()}
            self._check_denoiser_width(pooled, self._pooled_width(), "the pooled vector")
        t5_encoder = getattr(self, "text_encoder_3", None)
        if t5_encoder is not None:
            t5 = {"text_encoder_3": t5_encoder.config.d_model}
            self._check_denoiser_width(t5, transformer.config.joint_attention_dim, "T5's states")

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
        _check_max_sequence_length(self.family, max_sequence_length)

        # 1. Validate before any compute
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            prompts_2 = paired_prompt_list(prompt_2, prompts, "prompt_2")
            prompts_3 = paired_prompt_list(prompt_3, prompts, "prompt_3")
            batch_size = len(prompts)
        else:
            pooled_width = self._pooled_width()
            require_pooled(pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds", prompt_embeds, pooled_width)
            prompts, prompts_2, prompts_3 = [], [], []
            batch_size = prompt_embeds.shape[0]
        need_negative = do_classifier_free_guidance and negative_prompt_embeds is None
        if do_classifier_free_guidance and not need_negative:
            require_pooled(
                negative_pooled_prompt_embeds,
                "negative_prompt_embeds",
                "negative_pooled_prompt_embeds",
                negative_prompt_embeds,
                self._pooled_width(),
            )
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
            split_at = batch_size if prompt_embeds is None and need_negative else None
            min_windows = windows_in(_clip_part(given, max_sequence_length), specs[0].num_positions)
            embeds, pooled = encode_sd3_prompts(
                texts,
                specs,
                self.text_encoder_3,
                self.tokenizer_3,
                prompts_2=texts_2 if texts_2 != texts else None,
                prompts_3=prompts_3 + negatives_3,
                max_sequence_length=max_sequence_length,
                t5_width=self.transformer.config.joint_attention_dim if self.text_encoder_3 is None else None,
                options=self._prompt_options(device, split_at, min_windows),
                names_3=input_names("prompt_3" if prompt_3 else "prompt", len(prompts_3))
                + input_names("negative_prompt_3" if negative_prompt_3 else "negative_prompt", len(negatives_3)),
            )
            if prompt_embeds is None:
                prompt_embeds, pooled_prompt_embeds = embeds[:batch_size], pooled[:batch_size]
            if need_negative:
                negative_prompt_embeds, negative_pooled_prompt_embeds = embeds[-batch_size:], pooled[-batch_size:]
        _check_same_length(
            prompt_embeds,
            negative_prompt_embeds if do_classifier_free_guidance else None,
            " and the same max_sequence_length",
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


class FluxPromptEncoding(LongPromptEncoding):
    """`encode_prompt` of Flux.1 pipelines."""

    family = FAMILIES["flux"]

    def _check_text_components(self) -> None:
        super()._check_text_components()
        if self.text_encoder is not None:
            widths = {"text_encoder": self.text_encoder.config.hidden_size}
            self._check_denoiser_width(widths, self._pooled_width(), "CLIP-L's pooled vector")

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
        _check_max_sequence_length(self.family, max_sequence_length)

        # 1. Validate before any compute
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            prompts_2 = paired_prompt_list(prompt_2, prompts, "prompt_2")
            self._check_text_components()
        else:
            pooled_width = self._pooled_width()
            require_pooled(pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds", prompt_embeds, pooled_width)

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
                options=self._prompt_options(device),
                names_2=input_names("prompt_2" if prompt_2 else "prompt", len(prompts_2)),
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


def _check_models_fit(pipeline_class: type, pipeline, given: dict) -> None:
    """Refuse, as diffusers' `from_pipe` would after dropping it with a warning, a model of `pipeline` that
    `pipeline_class` needs but whose type it cannot take (and that `given` does not replace)."""
    expected, _ = pipeline_class._get_signature_keys(pipeline_class)
    parameters = inspect.signature(pipeline_class.__init__).parameters
    types = pipeline_class._get_signature_types()
    optional = set(getattr(pipeline, "_optional_components", None) or [])
    for name, component in pipeline.components.items():
        needed = name in expected and parameters[name].default is inspect.Parameter.empty and name not in optional
        if not needed or name in given or not isinstance(component, ModelMixin) or type(component) in types[name]:
            continue
        source, needs = type(pipeline).__name__, " or ".join(t.__name__ for t in types[name])
        counterpart = source if source.startswith("LongCLIP") else f"LongCLIP{source}"
        route = f"pass {name}=<a {needs}>"
        if family_running(source.removeprefix("LongCLIP")):
            route = f"for long prompts in this {source} use {counterpart} (with_long_prompts(pipe) gives it)"
        raise ValueError(
            f"{pipeline_class.__name__}.from_pipe cannot take {source}'s {name}: it is a {type(component).__name__} "
            f"and {pipeline_class.__name__} needs a {needs} (diffusers converts none back); {route}."
        )


def _check_same_length(
    prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None, also: str = ""
) -> None:
    if negative_prompt_embeds is not None and negative_prompt_embeds.shape[1] != prompt_embeds.shape[1]:
        raise ValueError(
            f"prompt_embeds has {prompt_embeds.shape[1]} tokens but negative_prompt_embeds has "
            f"{negative_prompt_embeds.shape[1]}; encode both with the same number of windows{also}."
        )


def _check_max_sequence_length(family: Family, max_sequence_length: object) -> None:
    if (
        isinstance(max_sequence_length, bool)
        or not isinstance(max_sequence_length, int)
        or not (1 <= max_sequence_length <= family.t5.max_length)
    ):
        raise ValueError(
            f"max_sequence_length={max_sequence_length!r}; {family.name}'s T5 reads a whole number of tokens from 1 to "
            f"{family.t5.max_length} ({family.t5.default_length} by default)."
        )


def _clip_part(embeds: torch.Tensor | None, max_sequence_length: int) -> torch.Tensor | None:
    """The CLIP rows of given SD 3 embeddings (T5's `max_sequence_length` rows follow them)."""
    return None if embeds is None else embeds[:, : max(embeds.shape[1] - max_sequence_length, 0)]
