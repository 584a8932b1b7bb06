"""Long prompts for CLIP text encoders, shared by the pipelines and the ComfyUI nodes: one implementation, one result.

- `syntax`: A1111 weighting syntax, parsed to (text, weight) pieces (no torch);
- `windows`: a prompt tokenized once and laid out in windows of the encoder's length (no torch);
- `encoding`: windows through the text encoders (chunked or stretched bigG, weights, T5, pooled vectors), read as
  a `PromptOptions` says;
- `compositions`: each family's conditioning, as `longclip_diffusers.families` describes the family.
"""

from .compositions import check_projection, encode_flux_prompts, encode_sd3_prompts, text_encoder_specs
from .encoding import (
    DEFAULT_OPTIONS,
    SDXL_STRATEGIES,
    WEIGHT_STYLES,
    PromptOptions,
    SDXLStrategy,
    TextEncoderSpec,
    WeightStyle,
    apply_weights,
    check_max_windows,
    check_strategy,
    encode_pooled_prompts,
    encode_prompt_parts,
    encode_prompts,
    encode_t5_prompts,
    encode_windows_chunked,
    encode_windows_direct,
    final_layer_norm,
    stretched_view,
    weight_from_empty,
    window_input_ids,
)
from .syntax import BREAK, EMPHASIS, MAX_WEIGHT, parse_weighted_prompt
from .windows import PromptWindows, pad_windows, tokenize_weighted, tokenize_windows

__all__ = [
    "BREAK",
    "DEFAULT_OPTIONS",
    "EMPHASIS",
    "MAX_WEIGHT",
    "SDXL_STRATEGIES",
    "PromptOptions",
    "PromptWindows",
    "SDXLStrategy",
    "TextEncoderSpec",
    "WEIGHT_STYLES",
    "WeightStyle",
    "apply_weights",
    "check_max_windows",
    "check_projection",
    "check_strategy",
    "encode_flux_prompts",
    "encode_pooled_prompts",
    "encode_prompt_parts",
    "encode_prompts",
    "encode_sd3_prompts",
    "encode_t5_prompts",
    "encode_windows_chunked",
    "encode_windows_direct",
    "final_layer_norm",
    "pad_windows",
    "parse_weighted_prompt",
    "stretched_view",
    "text_encoder_specs",
    "tokenize_weighted",
    "tokenize_windows",
    "weight_from_empty",
    "window_input_ids",
]
