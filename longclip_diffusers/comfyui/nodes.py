"""ComfyUI nodes (category "Long-CLIP"): load Long-CLIP encoders, encode SD 1.5 / SDXL / SD 3 / Flux prompts.

The classes follow ComfyUI's node contract (`INPUT_TYPES`, `RETURN_TYPES`, `FUNCTION`, `CATEGORY`) and import
nothing from ComfyUI at import time; see `host` for what they take from it when they run inside it.
"""

from __future__ import annotations

from typing import Any

from ..prompts import SDXL_STRATEGIES, WEIGHT_STYLES
from ..stretch import CLIP_POSITIONS, DEFAULT_KEEP, DEFAULT_RATIO, max_ratio
from . import host
from .checkpoint import load_long_clip_checkpoint
from .conditioning import encode_flux, encode_sd, encode_sd3, encode_sdxl
from .encoders import CLIP_TYPES, LongCLIP, load_long_clip, long_clip_from_comfy_clip
from .t5 import T5, t5_from_comfy_clip

CATEGORY = "Long-CLIP"
LONGCLIP = "LONGCLIP"  # the socket type of a LongCLIP object
LONGCLIP_T5 = "LONGCLIP_T5"  # the socket type of a T5 object
MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
MAX_T5_TOKENS = 512  # what the SD 3 and Flux pipelines accept as max_sequence_length

_TEXT = ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt; A1111 weighting, BREAK."})
_WEIGHT_STYLE = (
    list(WEIGHT_STYLES),
    {
        "default": "a1111",
        "tooltip": "How (word:1.3) acts. a1111: as A1111 and the diffusers pipelines (scale, keep the mean). comfyui: "
        "as ComfyUI's CLIPTextEncode (away from the empty prompt), the same conditioning as core gives.",
    },
)
_OPTIONS = {
    "clip_skip": ("INT", {"default": 0, "min": 0, "max": 12, "tooltip": "Read this many layers earlier."}),
    "weighting": (
        "BOOLEAN",
        {"default": True, "tooltip": "Parse (word), (word:1.3), [word], \\( and BREAK, as A1111 and the pipelines."},
    ),
    "max_windows": (
        "INT",
        {"default": 0, "min": 0, "max": 64, "tooltip": "Drop prompt text past this many 248-token windows (0: all)."},
    ),
    "weight_style": _WEIGHT_STYLE,
}

_STRATEGY = (
    list(SDXL_STRATEGIES),
    {
        "default": "chunk",
        "tooltip": "How a 77-position bigG reads 248-token windows. chunk: in 77-token chunks, aligned token for "
        "token with CLIP-L. stretch: stretched without training, one pass.",
    },
)
_TEXT_G = ("STRING", {"multiline": True, "default": "", "tooltip": "bigG's prompt (empty: text)."})
_TEXT_T5 = ("STRING", {"multiline": True, "default": "", "tooltip": "T5's prompt (empty: text)."})


def _size(default: int) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": 0, "max": MAX_RESOLUTION})


def _t5_tokens(default: int) -> tuple[str, dict[str, Any]]:
    tooltip = "T5 reads this many tokens (padding included), as the pipelines' max_sequence_length."
    return ("INT", {"default": default, "min": 1, "max": MAX_T5_TOKENS, "tooltip": tooltip})


class LongCLIPLoader:
    """Load a Long-CLIP-L (clip_l) or SDXL's / SD 3's OpenCLIP-bigG (clip_g) from ComfyUI's text encoder folders."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads a text encoder from models/text_encoders (or models/clip): a single file (ComfyUI layout, or a "
        "published Long-CLIP .pt) or any file of a Hugging Face / diffusers / open_clip folder."
    )
    RETURN_TYPES = (LONGCLIP,)
    RETURN_NAMES = ("long_clip",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "text_encoder": (host.text_encoder_names(), {"tooltip": "A file in models/text_encoders."}),
                "clip_type": (
                    list(CLIP_TYPES),
                    {
                        "default": "clip_l",
                        "tooltip": "clip_l: a Long-CLIP-L (SD 1.5; SDXL's and SD 3's first encoder; Flux's CLIP). "
                        "clip_g: SDXL's or SD 3's OpenCLIP-bigG (77 positions are fine), for the SDXL and SD3 nodes' "
                        "clip_g input.",
                    },
                ),
            }
        }

    def load(self, text_encoder: str, clip_type: str) -> tuple[LongCLIP]:
        path = host.model_path(text_encoder)
        return (load_long_clip(path, clip_type, dtype=host.model_dtype(), device=host.offload_device()),)


class LongCLIPTextEncode:
    """SD 1.x conditioning from a prompt of any length: 248-token windows, A1111 weighting."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes a prompt for SD 1.x with a Long-CLIP-L: 248 tokens per window, longer prompts in more windows, "
        "the same conditioning as LongCLIPStableDiffusionPipeline."
    )
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {"long_clip": (LONGCLIP, {}), "text": _TEXT},
            "optional": _OPTIONS,
        }

    def encode(
        self,
        long_clip: LongCLIP,
        text: str,
        clip_skip: int = 0,
        weighting: bool = True,
        max_windows: int = 0,
        weight_style: str = "a1111",
    ) -> tuple[list]:
        cond, pooled = encode_sd(
            long_clip,
            text,
            clip_skip=clip_skip,
            weighting=weighting,
            max_windows=max_windows,
            weight_style=weight_style,
        )
        return ([[cond, {"pooled_output": pooled}]],)


class LongCLIPTextEncodeSDXL:
    """SDXL conditioning from a prompt of any length: Long-CLIP-L plus OpenCLIP-bigG, chunked or stretched."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes a prompt for SDXL: Long-CLIP-L and bigG read the same 248-token windows; bigG, trained on 77, "
        "reads them in 77-token chunks (chunk) or stretched without training (stretch). The same conditioning "
        "as LongCLIPStableDiffusionXLPipeline."
    )
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "long_clip": (LONGCLIP, {"tooltip": "A Long-CLIP-L, loaded as clip_l."}),
                "clip_g": (LONGCLIP, {"tooltip": "SDXL's OpenCLIP-bigG, loaded as clip_g."}),
                "width": _size(1024),
                "height": _size(1024),
                "crop_w": _size(0),
                "crop_h": _size(0),
                "target_width": _size(1024),
                "target_height": _size(1024),
                "text": _TEXT,
                "strategy": _STRATEGY,
            },
            "optional": {"text_g": _TEXT_G, **_OPTIONS},
        }

    def encode(
        self,
        long_clip: LongCLIP,
        clip_g: LongCLIP,
        width: int,
        height: int,
        crop_w: int,
        crop_h: int,
        target_width: int,
        target_height: int,
        text: str,
        strategy: str = "chunk",
        text_g: str = "",
        clip_skip: int = 0,
        weighting: bool = True,
        max_windows: int = 0,
        weight_style: str = "a1111",
    ) -> tuple[list]:
        cond, pooled = encode_sdxl(
            long_clip,
            clip_g,
            text,
            text_g or None,
            strategy=strategy,
            clip_skip=clip_skip,
            weighting=weighting,
            max_windows=max_windows,
            weight_style=weight_style,
        )
        sizes = dict(
            width=width,
            height=height,
            crop_w=crop_w,
            crop_h=crop_h,
            target_width=target_width,
            target_height=target_height,
        )
        return ([[cond, {"pooled_output": pooled, **sizes}]],)


class LongCLIPTextEncodeSD3:
    """SD 3 / 3.5 conditioning from a prompt of any length: Long-CLIP-L and bigG windows, then T5."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes a prompt for SD 3 / 3.5: Long-CLIP-L and bigG read the same 248-token windows (bigG in 77-token "
        "chunks or stretched), T5 reads the prompt as the pipeline gives it. The same conditioning as "
        "LongCLIPStableDiffusion3Pipeline."
    )
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "long_clip": (LONGCLIP, {"tooltip": "A Long-CLIP-L with its text projection, loaded as clip_l."}),
                "clip_g": (LONGCLIP, {"tooltip": "SD 3's OpenCLIP-bigG, loaded as clip_g."}),
                "t5": (LONGCLIP_T5, {"tooltip": 'T5, from the "T5 from CLIP" node.'}),
                "text": _TEXT,
                "strategy": _STRATEGY,
            },
            "optional": {
                "text_g": _TEXT_G,
                "text_t5": _TEXT_T5,
                **_OPTIONS,
                "max_sequence_length": _t5_tokens(256),
            },
        }

    def encode(
        self,
        long_clip: LongCLIP,
        clip_g: LongCLIP,
        t5: T5,
        text: str,
        strategy: str = "chunk",
        text_g: str = "",
        text_t5: str = "",
        clip_skip: int = 0,
        weighting: bool = True,
        max_windows: int = 0,
        max_sequence_length: int = 256,
        weight_style: str = "a1111",
    ) -> tuple[list]:
        cond, pooled = encode_sd3(
            long_clip,
            clip_g,
            t5,
            text,
            text_g or None,
            text_t5 or None,
            strategy=strategy,
            clip_skip=clip_skip,
            weighting=weighting,
            max_windows=max_windows,
            max_sequence_length=max_sequence_length,
            weight_style=weight_style,
        )
        return ([[cond, {"pooled_output": pooled}]],)


class LongCLIPTextEncodeFlux:
    """Flux.1 conditioning: Long-CLIP-L's pooled vector of the first 248 tokens, T5's states, and the guidance."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes a prompt for Flux.1: Long-CLIP-L's pooled vector reads up to 246 tokens (CLIP-L: 75), T5 reads the "
        "prompt as the pipeline gives it, weights scale T5's states. The same conditioning as LongCLIPFluxPipeline, "
        "with the guidance of ComfyUI's CLIPTextEncodeFlux."
    )
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "long_clip": (LONGCLIP, {"tooltip": "A Long-CLIP-L, loaded as clip_l."}),
                "t5": (LONGCLIP_T5, {"tooltip": 'T5, from the "T5 from CLIP" node.'}),
                "text": _TEXT,
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}),
            },
            "optional": {
                "text_t5": _TEXT_T5,
                "weighting": _OPTIONS["weighting"],
                "max_sequence_length": _t5_tokens(MAX_T5_TOKENS),
                "weight_style": _WEIGHT_STYLE,
            },
        }

    def encode(
        self,
        long_clip: LongCLIP,
        t5: T5,
        text: str,
        guidance: float,
        text_t5: str = "",
        weighting: bool = True,
        max_sequence_length: int = MAX_T5_TOKENS,
        weight_style: str = "a1111",
    ) -> tuple[list]:
        cond, pooled = encode_flux(
            long_clip,
            t5,
            text,
            text_t5 or None,
            weighting=weighting,
            max_sequence_length=max_sequence_length,
            weight_style=weight_style,
        )
        return ([[cond, {"pooled_output": pooled, "guidance": guidance}]],)


class LongCLIPT5FromCLIP:
    """SD 3's / Flux's T5 from a ComfyUI CLIP, for the Long-CLIP SD 3 and Flux nodes."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Reads T5 (and its tokenizer) through a CLIP that holds one: CLIPLoader (type sd3) with a t5xxl file, "
        "DualCLIPLoader, TripleCLIPLoader, or a checkpoint that bundles T5. In place: the Long-CLIP nodes run the "
        "CLIP's own T5 (its dtype, fp8 included, and ComfyUI's memory management) on the token ids the diffusers "
        "pipelines give it; no second copy."
    )
    RETURN_TYPES = (LONGCLIP_T5,)
    RETURN_NAMES = ("t5",)
    FUNCTION = "take"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": {"clip": ("CLIP", {"tooltip": "A ComfyUI CLIP holding T5 (t5xxl)."})}}

    def take(self, clip: Any) -> tuple[T5]:
        return (t5_from_comfy_clip(clip, dtype=host.model_dtype(), device=host.offload_device()),)


class LongCLIPStretch:
    """A long encoder from a ComfyUI CLIP (e.g. a checkpoint's clip_g or clip_l), stretched without training."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Takes clip_l or clip_g out of a CLIP (e.g. from Load Checkpoint) and stretches its position table "
        "(knowledge-preserved: the first `keep` positions as they are, the rest interpolated, `ratio` times as "
        "many). keep 20, ratio 4: 77 -> 248 positions. ratio 1: as it is, e.g. SDXL's bigG for the SDXL node."
    )
    RETURN_TYPES = (LONGCLIP,)
    RETURN_NAMES = ("long_clip",)
    FUNCTION = "stretch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "A ComfyUI CLIP, e.g. from Load Checkpoint."}),
                "clip_type": (list(CLIP_TYPES), {"default": "clip_g"}),
                "keep": ("INT", {"default": DEFAULT_KEEP, "min": 0, "max": CLIP_POSITIONS - 2}),
                "ratio": ("INT", {"default": DEFAULT_RATIO, "min": 1, "max": max_ratio(CLIP_POSITIONS)}),
            }
        }

    def stretch(self, clip: Any, clip_type: str, keep: int, ratio: int) -> tuple[LongCLIP]:
        _patch_weights(clip)
        dtype, device = host.model_dtype(), host.offload_device()
        return (long_clip_from_comfy_clip(clip, clip_type, keep, ratio, dtype=dtype, device=device),)


class LongCLIPCheckpointLoader:
    """A single-file checkpoint whose CLIP is a Long-CLIP (248 positions), which ComfyUI's Load Checkpoint refuses."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads a checkpoint from models/checkpoints as Load Checkpoint does (MODEL, CLIP, VAE), with the text "
        "encoders at the position count baked into the file: a Long-CLIP-L (248 positions) merged or fine-tuned "
        "into an SD checkpoint, which Load Checkpoint fails on (248 vs 77). Use the CLIP with CLIPTextEncode."
    )
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": {"ckpt_name": (host.checkpoint_names(), {"tooltip": "A file in models/checkpoints."})}}

    def load(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        return load_long_clip_checkpoint(host.checkpoint_path(ckpt_name))


def _patch_weights(clip: Any) -> None:
    """Inside ComfyUI, apply the CLIP's patches (LoRAs) to its weights before reading them, as CLIPSave does."""
    model_management = host.comfy_module("comfy.model_management")
    if model_management is not None and hasattr(clip, "load_model") and hasattr(model_management, "load_models_gpu"):
        model_management.load_models_gpu([clip.load_model()], force_patch_weights=True)


NODE_CLASS_MAPPINGS = {
    "LongCLIPLoader": LongCLIPLoader,
    "LongCLIPTextEncode": LongCLIPTextEncode,
    "LongCLIPTextEncodeSDXL": LongCLIPTextEncodeSDXL,
    "LongCLIPTextEncodeSD3": LongCLIPTextEncodeSD3,
    "LongCLIPTextEncodeFlux": LongCLIPTextEncodeFlux,
    "LongCLIPT5FromCLIP": LongCLIPT5FromCLIP,
    "LongCLIPStretch": LongCLIPStretch,
    "LongCLIPCheckpointLoader": LongCLIPCheckpointLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LongCLIPLoader": "Load Long-CLIP",
    "LongCLIPTextEncode": "Long-CLIP Text Encode (SD 1.5)",
    "LongCLIPTextEncodeSDXL": "Long-CLIP Text Encode (SDXL)",
    "LongCLIPTextEncodeSD3": "Long-CLIP Text Encode (SD3)",
    "LongCLIPTextEncodeFlux": "Long-CLIP Text Encode (Flux)",
    "LongCLIPT5FromCLIP": "T5 from CLIP (Long-CLIP)",
    "LongCLIPStretch": "Long-CLIP from CLIP (stretch)",
    "LongCLIPCheckpointLoader": "Load Checkpoint (Long-CLIP)",
}
