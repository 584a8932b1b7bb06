"""CLIP's constants, the precisions this package writes, and the pad-token rule of the Stable Diffusion tokenizers:
each said once, here."""

from __future__ import annotations

import torch

CLIP_VOCAB_SIZE = 49408  # CLIP's BPE: 256 bytes x 2 + 48,894 merges + the two special tokens below
CLIP_BOS_TOKEN, CLIP_BOS_TOKEN_ID = "<|startoftext|>", 49406
CLIP_EOS_TOKEN, CLIP_EOS_TOKEN_ID = "<|endoftext|>", 49407
CLIP_POSITIONS = 77  # CLIP's text positions
LONG_CLIP_POSITIONS = 248  # Long-CLIP's: 20 kept + 57 x 4 stretched

# Pad tokens of the Stable Diffusion tokenizers: CLIP's end token for OpenAI's CLIP-L (SD 1.x, SDXL's and SD 3's
# first tokenizer); "!" (id 0, what open_clip pads with) for OpenCLIP's towers (SD 2.x's H, SDXL's and SD 3's bigG).
CLIP_PAD_TOKEN = CLIP_EOS_TOKEN
OPEN_CLIP_PAD_TOKEN = "!"

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # `--dtype` names
SAFETENSORS_DTYPES = {  # torch dtype -> its name in a safetensors header
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def stable_diffusion_pad_token(model_cfg: dict) -> str:
    """The pad token of the Stable Diffusion tokenizers for a text tower of this open_clip config: CLIP's end token
    for OpenAI's QuickGELU towers (SD 1.x, SDXL's first), "!" for OpenCLIP's GELU ones (SD 2.x, SDXL's second)."""
    return CLIP_PAD_TOKEN if model_cfg.get("quick_gelu") else OPEN_CLIP_PAD_TOKEN


def config_dtype_name(dtype: torch.dtype) -> str:
    """How a Hugging Face config records a dtype (`torch.float16` -> "float16")."""
    return str(dtype).removeprefix("torch.")
