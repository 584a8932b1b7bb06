"""Long-prompt encoding shared by the pipelines and the ComfyUI nodes: one implementation, one result.

A prompt is parsed for A1111 weighting syntax, tokenized once, and laid out in windows of the text encoder's
length (248 for Long-CLIP): each window is `BOS + up to 246 tokens + EOS + padding`, and `BREAK` starts a new
one. Windows are encoded in one batch and concatenated along the sequence axis, so a prompt that fits one
window is encoded exactly as the stock diffusers pipelines encode it.

SD 3's and Flux's T5 encoder reads the prompt as the stock pipelines give it to T5 (one sequence of
`max_sequence_length` tokens), parsed for the same syntax: the brackets never reach T5, each token's state is
weighted like CLIP's, and `BREAK` only separates words (T5 has no windows). Flux reads CLIP-L's pooled vector only:
the first window's, unweighted (a pooled vector has no per-token states to weight).

SDXL's and SD 3's second encoder (OpenCLIP-bigG) has no fine-tuned long version. When it is shorter than the windows,
it is used in one of two ways:
- `"chunk"` (default): bigG reads the same tokens in 77-position chunks (each with BOS/EOS); row i of its output
  is the state of the same token as row i of CLIP-L's, so the two halves stay aligned token for token. Every
  chunk is a normal 77-token bigG input, the distribution the SDXL UNet was trained on.
- `"stretch"`: bigG with its position table stretched (knowledge-preserved, no training) to the window length;
  one pass, attention across the whole window, and the pooled vector sees the whole window. The stretched
  positions past 20 were never trained.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..stretch import DEFAULT_KEEP, stretch_model
from .syntax import MAX_WEIGHT
from .windows import PromptWindows, pad_windows, tokenize_weighted, tokenize_windows

logger = logging.getLogger(__name__)

SDXLStrategy = Literal["chunk", "stretch"]
SDXL_STRATEGIES: tuple[str, ...] = ("chunk", "stretch")
# How a weight acts on a token's state: "a1111", as A1111 and the pipelines (scale, then restore the mean:
# `apply_weights`); "comfyui", as ComfyUI core's CLIPTextEncode (away from the empty prompt: `weight_from_empty`).
WeightStyle = Literal["a1111", "comfyui"]
WEIGHT_STYLES: tuple[str, ...] = ("a1111", "comfyui")


def check_strategy(strategy: object, name: str = "strategy") -> None:
    """Refuse a bigG strategy other than "chunk" or "stretch" (the one wording of this check)."""
    if strategy not in SDXL_STRATEGIES:
        raise ValueError(f"{name}={strategy!r}; choose one of {', '.join(SDXL_STRATEGIES)}.")


def check_max_windows(max_windows: object, name: str = "max_windows") -> int | None:
    """A window limit as encoding reads it: None or 0 read every window (as ComfyUI's widgets say "no limit"),
    a whole number n >= 1 the first n; anything else is refused in one line."""
    if max_windows is None or (type(max_windows) is int and max_windows >= 0):
        return max_windows or None
    raise ValueError(
        f"{name}={max_windows!r}; give a whole number of windows (1 or more), or None / 0 to read every window."
    )


@dataclass(frozen=True)
class PromptOptions:
    """How one call reads its prompts, the same for every encoder.

    `strategy`: how a bigG shorter than the windows reads them ("chunk" or "stretch"); `weighting`: parse A1111
    syntax; `max_windows`: drop text past this many windows, with a warning (None or 0: no limit); `min_windows`:
    pad every prompt to at least this many windows; `split_at`: encode `prompts[:split_at]` and
    `prompts[split_at:]` in separate forward passes (as diffusers encodes positive and negative prompts);
    `device`: where the encoders run (their own device when None); `weight_style`: how a weight acts on a token's
    state (`WEIGHT_STYLES`).
    """

    strategy: SDXLStrategy = "chunk"
    weighting: bool = True
    max_windows: int | None = None
    min_windows: int = 1
    split_at: int | None = None
    device: torch.device | str | None = None
    weight_style: WeightStyle = "a1111"

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if self.weight_style not in WEIGHT_STYLES:
            raise ValueError(f"weight_style={self.weight_style!r}; choose one of {', '.join(WEIGHT_STYLES)}.")
        object.__setattr__(self, "max_windows", check_max_windows(self.max_windows))


DEFAULT_OPTIONS = PromptOptions()


def window_input_ids(
    token_ids: Sequence[list[int]], length: int, bos_id: int, eos_id: int, pad_id: int
) -> torch.Tensor:
    """[num_windows, length] ids: BOS + content + EOS + padding (content must fit in length - 2)."""
    rows = torch.full((len(token_ids), length), pad_id, dtype=torch.long)
    for row, ids in zip(rows, token_ids, strict=True):
        row[: len(ids) + 2] = torch.tensor([bos_id, *ids, eos_id])
    return rows


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TextEncoderSpec:
    """How one text encoder's conditioning is read.

    `hidden_layer` indexes `hidden_states` (-1: last layer); `final_norm` applies the final layer norm to it
    (SD 1.5 reads normalised states, SDXL the un-normalised penultimate ones).
    """

    text_encoder: nn.Module
    tokenizer: PreTrainedTokenizerBase
    hidden_layer: int = -1
    final_norm: bool = True

    @property
    def num_positions(self) -> int:
        return self.text_encoder.config.max_position_embeddings


def final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    """The final layer norm of a CLIP text encoder (transformers 5 flattened `CLIPTextModel`; 4.x nests it)."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _run_encoder(
    spec: TextEncoderSpec, input_ids: torch.Tensor, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states [N, T, D] as the spec reads them, and `text_embeds` when the encoder has a projection."""
    device = device or next(spec.text_encoder.parameters()).device
    output = spec.text_encoder(input_ids.to(device), output_hidden_states=True)
    hidden = output.hidden_states[spec.hidden_layer]
    if spec.final_norm:
        hidden = output.last_hidden_state if spec.hidden_layer == -1 else final_layer_norm(spec.text_encoder)(hidden)
    return hidden, getattr(output, "text_embeds", None)


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int]:
    return tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


def encode_windows_direct(
    spec: TextEncoderSpec, token_ids: Sequence[list[int]], length: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode windows with an encoder of at least `length` positions: [N, length, D] and pooled [N, E] | None."""
    return _run_encoder(spec, window_input_ids(token_ids, length, *_special_ids(spec.tokenizer)), device)


def encode_windows_chunked(
    spec: TextEncoderSpec, token_ids: Sequence[list[int]], length: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode `length`-position windows with a shorter encoder, in chunks, aligned token for token.

    Row 0 is the first chunk's BOS state, rows 1..n the states of the n content tokens from the chunk that read
    each one, row n+1 the last chunk's EOS state, later rows the last chunk's padding states (its final row
    repeated when the window is longer). Pooled: the first chunk's.
    """
    positions = spec.num_positions
    capacity = positions - 2
    chunks, owners = [], []  # the content of every chunk, and the window it belongs to
    for window, ids in enumerate(token_ids):
        for start in range(0, max(len(ids), 1), capacity):
            chunks.append(ids[start : start + capacity])
            owners.append(window)
    hidden, pooled = _run_encoder(spec, window_input_ids(chunks, positions, *_special_ids(spec.tokenizer)), device)

    rows, first_chunk_pooled = [], []
    chunk = 0
    for window, ids in enumerate(token_ids):
        parts = [hidden[chunk, :1]]
        first_chunk_pooled.append(chunk)
        while chunk < len(owners) and owners[chunk] == window:
            parts.append(hidden[chunk, 1 : 1 + len(chunks[chunk])])
            last = chunk
            chunk += 1
        tail = hidden[last, len(chunks[last]) + 1 :]  # EOS, then padding states
        needed = length - 1 - len(ids)
        if tail.shape[0] < needed:
            tail = torch.cat([tail, tail[-1:].expand(needed - tail.shape[0], -1)])
        parts.append(tail[:needed])
        rows.append(torch.cat(parts))
    pooled = pooled[first_chunk_pooled] if pooled is not None else None
    return torch.stack(rows), pooled


def stretched_view(text_encoder: nn.Module, num_positions: int) -> nn.Module:
    """A copy of `text_encoder` stretched to at least `num_positions`, sharing every weight but the position table.

    The original is left untouched (pipelines built with `from_pipe` may share it). Under diffusers'
    `enable_model_cpu_offload` the copy runs under the encoder's own offload hook (shared, not copied: a copied hook
    would copy the model it offloads, and leave the real one on the accelerator), which puts the shared weights and
    the new table on the execution device and offloads the model before it, as the encoder's own forward would.
    Encoders whose weights live elsewhere (sequential or group offloading) are refused.
    """
    _check_whole_module_offload(text_encoder)
    base = text_encoder.config.max_position_embeddings
    ratio = -(-(num_positions - DEFAULT_KEEP) // (base - DEFAULT_KEEP))  # the smallest ratio long enough
    shared = {id(tensor): tensor for tensor in itertools.chain(text_encoder.parameters(), text_encoder.buffers())}
    hook = getattr(text_encoder, "_hf_hook", None)
    if hook is not None:
        shared[id(hook)] = hook
    view = copy.deepcopy(text_encoder, memo=shared)
    return stretch_model(view, DEFAULT_KEEP, ratio)


def _check_whole_module_offload(text_encoder: nn.Module) -> None:
    """Refuse an encoder with offload hooks other than model CPU offload's (one `CpuOffload` on the whole model)."""
    hook, whole_model_hook = getattr(text_encoder, "_hf_hook", None), True
    if hook is not None:
        from accelerate.hooks import CpuOffload  # a hook there means accelerate is installed

        whole_model_hook = isinstance(hook, CpuOffload)
    inner_hooks = any(hasattr(module, "_hf_hook") for module in itertools.islice(text_encoder.modules(), 1, None))
    group_offload = any(hasattr(module, "_diffusers_hook") for module in text_encoder.modules())
    if not whole_model_hook or inner_hooks or group_offload:
        raise ValueError(
            'strategy="stretch" cannot stretch a text encoder under sequential or group offloading on the fly (its '
            "weights are not in it); use pipe.enable_model_cpu_offload(), or make a long encoder with `longclip "
            "stretch SDXL_REPO OUT --subfolder text_encoder_2 --pad-token '!'` and pass it as text_encoder_2, or use "
            'strategy="chunk".'
        )


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 emphasis: scale each token's state [T, D] by its weight [T], then restore the original mean.

    The restoring factor is kept within [1 / MAX_WEIGHT, MAX_WEIGHT] (ordinary weights need far less): a weighted
    mean near zero would otherwise scale every state up without bound. A weighted mean of the other sign (or
    zero) leaves the states as weighted, where A1111 would flip (or wipe) every one.
    """
    states = hidden.float()
    weighted = states * weights.float().unsqueeze(-1)
    ratio = states.mean() / weighted.mean()
    factor = torch.where(ratio > 0, ratio.clamp(1 / MAX_WEIGHT, MAX_WEIGHT), torch.ones_like(ratio))
    return (weighted * factor).to(hidden.dtype)


def weight_from_empty(hidden: torch.Tensor, empty: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ComfyUI core's emphasis (comfy/sd1_clip.py): each weighted token's state [B, T, D] moved away from the empty
    prompt's state at its position [1, T, D], `(z - z_empty) * weight + z_empty`; weights [B, T]. States of weight 1
    stay as they are."""
    states, empty = hidden.float(), empty.float()
    weights = weights.to(hidden.device, torch.float32).unsqueeze(-1)
    return torch.where(weights != 1.0, (states - empty) * weights + empty, states).to(hidden.dtype)


def _apply_token_weights(hidden: torch.Tensor, weights: torch.Tensor, empty: torch.Tensor | None) -> torch.Tensor:
    """States [B, T, D] with their weights [B, T] applied: ComfyUI core's way when the empty prompt's states `empty`
    [1, T, D] are given (`weight_from_empty`), else A1111's (`apply_weights`)."""
    if empty is not None:
        return weight_from_empty(hidden, empty, weights)
    return torch.stack([apply_weights(h, w.to(h.device)) for h, w in zip(hidden, weights, strict=True)])


def _weights_tensor(windows: PromptWindows, length: int) -> torch.Tensor:
    rows = torch.ones(len(windows.weights), length)
    for row, weights in zip(rows, windows.weights, strict=True):
        row[1 : 1 + len(weights)] = torch.tensor(weights)
    return rows.flatten()


@torch.no_grad()
def encode_prompt_parts(
    prompts: Sequence[str],
    encoders: Sequence[TextEncoderSpec],
    options: PromptOptions = DEFAULT_OPTIONS,
    prompts_2: Sequence[str] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Encode prompts with each encoder: its conditioning [B, windows * T, D] and pooled vector [B, E] (the first
    window's `text_embeds`; None for an encoder without a text projection).

    The first encoder sets the window length T. Every prompt gets as many windows as the longest one (the
    rest are empty-prompt windows; at least `min_windows`), so positive and negative prompts encoded in one call
    line up. An encoder shorter than T is chunked or stretched according to `options.strategy`; either way its
    rows are the states of the same tokens as the first encoder's. `prompts_2` feeds the second encoder (SDXL's
    and SD 3's `prompt_2`); it defaults to `prompts`, tokenized once and read by both encoders. Positive and
    negative prompts split by `options.split_at` run through separate forward passes (batch composition can
    change float results in the last bits).
    """
    strategy, weighting, split_at, device = options.strategy, options.weighting, options.split_at, options.device
    length = encoders[0].num_positions
    texts_per_encoder = [prompts, *([prompts_2] if prompts_2 is not None else [])]
    tokenized = [
        [tokenize_windows(text, spec.tokenizer, length - 2, weighting, options.max_windows) for text in texts]
        for spec, texts in zip(encoders, texts_per_encoder, strict=False)
    ]
    windows_per_encoder = tokenized + [tokenized[0]] * (len(encoders) - len(tokenized))
    count = pad_windows([w for per_encoder in tokenized for w in per_encoder], options.min_windows)

    parts = []
    for spec, windows in zip(encoders, windows_per_encoder, strict=True):
        if spec.num_positions >= length:
            encode = encode_windows_direct
        elif strategy == "stretch":
            spec = TextEncoderSpec(
                stretched_view(spec.text_encoder, length), spec.tokenizer, spec.hidden_layer, spec.final_norm
            )
            encode = encode_windows_direct
        else:
            encode = encode_windows_chunked
        outputs = [
            encode(spec, [ids for w in group for ids in w.token_ids], length, device)
            for group in _split(windows, split_at)
        ]
        hidden = torch.cat([h for h, _ in outputs])
        hidden = hidden.reshape(len(windows), count * length, -1)  # [B, count * T, D]
        if weighting and any(w.is_weighted for w in windows):
            weights = torch.stack([_weights_tensor(w, length) for w in windows])
            empty = None
            if options.weight_style == "comfyui":
                empty = encode(spec, [[]], length, device)[0].repeat(1, count, 1)
            hidden = _apply_token_weights(hidden, weights, empty)
        pooled = None
        if outputs[0][1] is not None:
            pooled = torch.cat([p for _, p in outputs]).reshape(len(windows), count, -1)[:, 0]  # the first window's
        parts.append((hidden, pooled))
    return parts


def _split(items: Sequence, split_at: int | None) -> list[Sequence]:
    return [items[:split_at], items[split_at:]] if split_at else [items]


@torch.no_grad()
def encode_prompts(
    prompts: Sequence[str],
    encoders: Sequence[TextEncoderSpec],
    options: PromptOptions = DEFAULT_OPTIONS,
    prompts_2: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode prompts to conditioning [B, windows * T, sum of D] and the pooled vector of the last encoder that
    has one (SD 1.x/2.x and SDXL conditioning); arguments as in `encode_prompt_parts`."""
    parts = encode_prompt_parts(prompts, encoders, options, prompts_2)
    pooled = next((pooled for _, pooled in reversed(parts) if pooled is not None), None)
    return torch.cat([hidden for hidden, _ in parts], dim=-1), pooled


@torch.no_grad()
def encode_t5_prompts(
    prompts: Sequence[str],
    text_encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    options: PromptOptions = DEFAULT_OPTIONS,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """T5's states [B, max_length, D] as SD 3 and Flux read them: the prompt's tokens, `</s>`, padding.

    Without weighting syntax the input ids are the stock pipelines' (`tokenizer(prompt, padding="max_length",
    max_length=max_length, truncation=True)`). With it, the syntax is parsed away, each token's state is scaled by
    its weight as CLIP's are (`apply_weights`), and `BREAK` only separates words. Tokens past `max_length - 1` are
    dropped, with a warning naming them and the input (`names`, one per prompt; "The prompt" by default). Of
    `options`, `weighting`, `split_at` and `device` apply.
    """
    rows = torch.full((len(prompts), max_length), tokenizer.pad_token_id, dtype=torch.long)
    weights = torch.ones(len(prompts), max_length)
    names = names or ["The prompt"] * len(prompts)
    for row, row_weights, prompt, name in zip(rows, weights, prompts, names, strict=True):
        segments = tokenize_weighted(prompt, tokenizer, options.weighting)
        ids = [token for segment_ids, _ in segments for token in segment_ids]
        token_weights = [weight for _, segment_weights in segments for weight in segment_weights]
        if len(ids) > max_length - 1:
            logger.warning(
                "%s is longer than the %d tokens T5 reads (max_sequence_length); T5 does not see: %r",
                name,
                max_length,
                tokenizer.decode(ids[max_length - 1 :]),
            )
            ids, token_weights = ids[: max_length - 1], token_weights[: max_length - 1]
        row[: len(ids) + 1] = torch.tensor([*ids, tokenizer.eos_token_id])
        row_weights[: len(ids)] = torch.tensor(token_weights)
    device = options.device or next(text_encoder.parameters()).device
    hidden = torch.cat([text_encoder(group.to(device))[0] for group in _split(rows, options.split_at)])
    if (weights != 1.0).any():
        empty = None
        if options.weight_style == "comfyui":
            empty_ids = torch.full((1, max_length), tokenizer.pad_token_id, dtype=torch.long)
            empty_ids[0, 0] = tokenizer.eos_token_id  # the empty prompt: `</s>`, padding
            empty = text_encoder(empty_ids.to(device))[0]
        hidden = _apply_token_weights(hidden, weights, empty)
    return hidden


@torch.no_grad()
def encode_pooled_prompts(
    prompts: Sequence[str],
    text_encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    options: PromptOptions = DEFAULT_OPTIONS,
) -> torch.Tensor:
    """CLIP's `pooler_output` [B, D] (its final state at the end token) for each prompt's first window, as Flux
    reads CLIP-L: a Long-CLIP-L sees up to 246 tokens (to the first `BREAK`). Weighting syntax is parsed away; the
    weights do not apply, as a pooled vector has no per-token states."""
    length = text_encoder.config.max_position_embeddings
    first_windows = [
        tokenize_windows(prompt, tokenizer, length - 2, options.weighting).token_ids[0] for prompt in prompts
    ]
    device = options.device or next(text_encoder.parameters()).device
    input_ids = window_input_ids(first_windows, length, *_special_ids(tokenizer))
    return text_encoder(input_ids.to(device)).pooler_output
