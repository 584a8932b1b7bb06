"""The LONGCLIP_T5 object the SD 3 and Flux nodes read T5 from: the T5 of a ComfyUI CLIP, held once.

ComfyUI users already load T5 into a CLIP (CLIPLoader with type sd3, DualCLIPLoader, TripleCLIPLoader, or a
checkpoint that bundles it). The nodes run that CLIP's own T5 module in place (`ComfyT5`): no second copy of its
weights, in ComfyUI's dtypes (fp8 included) and under its memory management, fed the token ids of the pipelines'
own code (`prompts.encode_t5_prompts`) with the CLIP's own T5 tokenizer. A CLIP that only gives its weights
(`get_sd()`, no ComfyUI modules) is read into a transformers `T5EncoderModel` instead (`t5_from_state_dict`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel

from .encoders import comfy_clip_encoder

# ComfyUI's scaled fp8 files (t5xxl_fp8_e4m3fn_scaled): each linear weight times its `scale_weight`.
_SCALE_KEYS = (".scale_weight", ".scale_input")
_QUERY = re.compile(r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.q\.weight")
# Where ComfyUI's CLIPs keep a T5: SD 3's, Flux's, HiDream's (t5xxl) and Stable Audio's (t5base).
COMFY_T5_NAMES = ("t5xxl", "t5base")


class ComfyT5(nn.Module):
    """The T5 module of a ComfyUI CLIP (comfy/text_encoders/t5.py), called as a transformers T5 encoder:
    `input_ids [B, T] -> (states [B, T, D],)` in float32, as ComfyUI's own T5 encoders compute.

    Its parameters are the CLIP's own tensors. Each call first has ComfyUI load the CLIP (`clip.load_model()`:
    its device, dtype, memory management and patches such as LoRAs), as ComfyUI's CLIPTextEncode does.
    """

    def __init__(self, clip: object, name: str) -> None:
        super().__init__()
        self.t5 = getattr(clip.cond_stage_model, name).transformer
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        patcher = self.clip.load_model()
        hidden, _ = self.t5(input_ids.to(patcher.load_device), None, dtype=torch.float32)
        return (hidden,)


@dataclass
class T5:
    """What a LONGCLIP_T5 socket carries: SD 3's / Flux's T5 encoder and its tokenizer. `in_place`: the encoder is a
    ComfyUI CLIP's own (`ComfyT5`), whose device ComfyUI manages."""

    text_encoder: T5EncoderModel | ComfyT5 = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    source: str = ""

    @property
    def in_place(self) -> bool:
        return isinstance(self.text_encoder, ComfyT5)


def t5_config(tensors: dict[str, torch.Tensor]) -> T5Config:
    """The config of T5 weights in Hugging Face's layout: every size from a shape (heads from the relative
    attention table), the rest as in T5 v1.1, the encoder SD 3 and Flux use (gated GELU without it: T5 1.0)."""
    required = ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    missing = [key for key in required if key not in tensors]
    if missing:
        raise ValueError(f"These weights are not a T5 encoder: {', '.join(missing)} missing.")
    vocab_size, d_model = tensors["shared.weight"].shape
    num_buckets, num_heads = tensors[required[1]].shape
    layers = {int(match[1]) for key in tensors if (match := _QUERY.fullmatch(key))}
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in tensors
    d_ff = tensors[f"encoder.block.0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight"].shape[0]
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=tensors["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // num_heads,
        d_ff=d_ff,
        num_layers=len(layers),
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=False,
    )


def dequantized(
    tensors: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Copies of the weights in `dtype` on `device`, scaled fp8 ones (`X.weight` with `X.scale_weight`) multiplied
    out."""
    weights = {}
    for key, value in tensors.items():
        if key.endswith(_SCALE_KEYS) or key == "scaled_fp8":
            continue
        target = device or value.device
        scale = tensors.get(key.removesuffix(".weight") + ".scale_weight") if key.endswith(".weight") else None
        if scale is None:
            weights[key] = value.to(target, dtype, copy=True)  # one copy, never ComfyUI's own tensor
        else:
            weights[key] = (value.to(target, torch.float32) * scale.to(target, torch.float32)).to(dtype)
    return weights


def t5_from_state_dict(
    tensors: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> T5:
    """A `T5EncoderModel` holding `tensors` (Hugging Face's layout), built without a random initialisation."""
    config = t5_config(tensors)
    weights = dequantized(tensors, dtype or torch.float32, device)
    weights["encoder.embed_tokens.weight"] = weights["shared.weight"]
    with torch.device("meta"):
        text_encoder = T5EncoderModel(config)
    missing, unexpected = text_encoder.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        names = ", ".join([*missing, *unexpected][:4])
        raise ValueError(
            f"{source}: holds a T5 these nodes cannot read ({len(missing)} weights missing, {len(unexpected)} "
            f"unexpected: {names}). Load T5 from a fp32, fp16, bf16 or fp8 t5xxl file."
        )
    return T5(text_encoder.eval(), tokenizer, source)


def t5_from_comfy_clip(
    clip: object, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> T5:
    """The T5 encoder and tokenizer of a ComfyUI CLIP (from CLIPLoader, DualCLIPLoader, TripleCLIPLoader or a
    checkpoint that bundles T5): the CLIP's own T5 module, in place (`ComfyT5`), with its `T5TokenizerFast`.
    `dtype` and `device` apply only to a CLIP that gives its weights alone, read into a copy."""
    model = getattr(clip, "cond_stage_model", None)
    for name in COMFY_T5_NAMES if model is not None else ():
        if hasattr(model, name):
            # ComfyUI's tokenizer for it: under the same name, or "clip_" + name (Stable Audio's)
            holder = getattr(clip.tokenizer, name, None) or getattr(clip.tokenizer, f"clip_{name}", None)
            tokenizer = getattr(holder, "tokenizer", None)
            if tokenizer is None:
                raise ValueError(f"This CLIP holds a T5 ({name}) but no T5 tokenizer; load it as an SD 3 or Flux CLIP.")
            return T5(ComfyT5(clip, name), tokenizer, f"the CLIP's {name}")
    where = "Load one with CLIPLoader (type sd3) from a t5xxl file, or with DualCLIPLoader / TripleCLIPLoader."
    tensors = comfy_clip_encoder(clip, "t5xxl", where)  # ComfyUI's T5 has Hugging Face's key names
    tokenizer = getattr(getattr(clip.tokenizer, "t5xxl", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError("This CLIP holds T5 weights but no T5 tokenizer; load it as an SD 3 or Flux CLIP.")
    return t5_from_state_dict(tensors, tokenizer, "the CLIP's t5xxl", dtype=dtype, device=device)
