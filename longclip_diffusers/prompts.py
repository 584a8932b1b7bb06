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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .stretch import DEFAULT_KEEP, stretch_model

logger = logging.getLogger(__name__)

BREAK = "BREAK"
EMPHASIS = 1.1  # what `(word)` multiplies and `[word]` divides by, as in A1111
# A token's weight (an explicit `(word:w)`, or the product of nested groups) must lie in [0, MAX_WEIGHT]. A1111
# prompts use about 0..2; past 10 a weight is a typo (`(cat:13)` for 1.3, `(cat:1000000000)`) that would swamp
# the conditioning. Negative weights are refused: they invert a token's states, which never means "not this".
MAX_WEIGHT = 10.0
SDXLStrategy = Literal["chunk", "stretch"]
SDXL_STRATEGIES: tuple[str, ...] = ("chunk", "stretch")

# ----------------------------------------------------------------------------------------------------------
# Weighting syntax
# ----------------------------------------------------------------------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]            # an escaped bracket or backslash: literal text
    | \\                    # a lone backslash: literal
    | \( | \[               # open an emphasis group
    | :\s*([+-]?[\d.]+)\s*\)  # close a group with an explicit weight, `(words:1.3)`
    | \) | \]               # close a group
    | [^\\()\[\]:]+         # plain text
    | :                     # a colon that is not part of a weight
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt written in A1111 syntax into (text, weight) pieces.

    `(text)` x1.1, `((text))` x1.21, `(text:1.3)` x1.3, `[text]` /1.1, `\\(` a literal bracket, `BREAK` (upper
    case, a word of its own) a window break, returned as `("BREAK", -1.0)`. Unclosed groups apply to the rest.
    A `BREAK` inside a group still breaks (A1111 scales its marker, which turns it into the word "break" with a
    negative weight). Every weight must lie in [0, MAX_WEIGHT], nested products included; others raise ValueError.
    """
    pieces: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[0] != BREAK or piece[1] >= 0:
                piece[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\"):
            pieces.append([text[-1], 1.0])
        elif text == "(":
            open_round.append(len(pieces))
        elif text == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            start = open_round.pop()
            group = "".join(piece[0] for piece in pieces[start:] if piece[1] >= 0)
            scale(start, _parse_weight(weight, group))
        elif text == ")" and open_round:
            scale(open_round.pop(), EMPHASIS)
        elif text == "]" and open_square:
            scale(open_square.pop(), 1 / EMPHASIS)
        else:
            for i, part in enumerate(_BREAK_WORD.split(text)):
                if i:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    for start in open_round:
        scale(start, EMPHASIS)
    for start in open_square:
        scale(start, 1 / EMPHASIS)

    merged: list[tuple[str, float]] = []
    for text, weight in pieces:
        if text == "" and weight >= 0:
            continue
        if merged and weight >= 0 and merged[-1][1] == weight and merged[-1][0] != BREAK:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    for text, weight in merged:
        if weight > MAX_WEIGHT:
            raise ValueError(
                f"{text.strip()!r} gets weight {weight:.4g} from nested groups; the product of nested weights must "
                f"lie between 0 and {MAX_WEIGHT:g}: remove a bracket level or lower a weight."
            )
    return merged or [("", 1.0)]


def _parse_weight(weight: str, group: str) -> float:
    written = f"({group.strip()}:{weight})"
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"{written}: {weight!r} is not a valid weight; write it like (words:1.3).") from None
    if not 0 <= value <= MAX_WEIGHT:  # also refuses inf (a weight of 400 digits)
        raise ValueError(
            f"{written}: weight {weight} is outside the range 0 to {MAX_WEIGHT:g} that prompt weighting accepts "
            "(A1111 prompts use about 0.5 to 1.5; for what you do not want, use the negative prompt, not a weight "
            "below 0)."
        )
    return value


def as_prompt_list(prompt: str | Sequence[str], name: str = "prompt") -> list[str]:
    """A prompt or a list of prompts as a list, refusing anything that is not text."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"`{name}` must be a string or a list of strings, got {_describe(prompt)}.")
    if not prompts:
        raise ValueError(f"`{name}` is an empty list; pass at least one prompt.")
    return list(prompts)


def negative_prompt_list(negative_prompt: str | Sequence[str] | None, batch_size: int, name: str = "negative_prompt"):
    """The negative prompts for a batch: one string is repeated, a list must match the batch size."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * batch_size
    negatives = as_prompt_list(negative_prompt, name)
    if len(negatives) != batch_size:
        raise ValueError(
            f"`{name}` has {len(negatives)} prompts but `prompt` has {batch_size}; pass one negative prompt "
            "(a string) for all, or a list with one per prompt."
        )
    return negatives


def paired_prompt_list(prompt: str | Sequence[str] | None, prompts: list[str], name: str) -> list[str]:
    """`prompt_2` / `prompt_3` for a batch: one per prompt, or `prompts` themselves when not given (or empty, as
    diffusers reads it)."""
    if not prompt:
        return prompts
    paired = as_prompt_list(prompt, name)
    if len(paired) != len(prompts):
        raise ValueError(
            f"`{name}` has {len(paired)} prompts but `prompt` has {len(prompts)}; pass one for each prompt, or leave "
            f"`{name}` out to use `prompt`."
        )
    return paired


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a {type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------------------
# Tokens -> windows
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PromptWindows:
    """A tokenized prompt: the content tokens of each window (no BOS/EOS) and their weights."""

    token_ids: list[list[int]] = field(default_factory=lambda: [[]])
    weights: list[list[float]] = field(default_factory=lambda: [[]])

    @property
    def is_weighted(self) -> bool:
        return any(weight != 1.0 for window in self.weights for weight in window)


def tokenize_windows(
    prompt: str,
    tokenizer: PreTrainedTokenizerBase,
    capacity: int,
    weighting: bool = True,
    max_windows: int | None = None,
) -> PromptWindows:
    """Tokenize `prompt` into windows of `capacity` content tokens (a window's length minus BOS and EOS).

    A window never splits a word when a word boundary lies in its last quarter. `BREAK` counts as A1111 counts
    it: each one closes the current window (an empty one too), and a trailing `BREAK` adds nothing. With
    `max_windows`, the tokens past the last window are dropped with a warning naming them.
    """
    windows = PromptWindows([], [])
    for ids, weights in tokenize_weighted(prompt, tokenizer, weighting):
        start = 0
        while True:
            end = _window_end(ids, start, capacity, tokenizer)
            windows.token_ids.append(ids[start:end])
            windows.weights.append(weights[start:end])
            start = end
            if start >= len(ids):
                break
    if max_windows is not None and len(windows.token_ids) > max_windows:
        dropped = [token for window in windows.token_ids[max_windows:] for token in window]
        logger.warning(
            "The prompt is longer than %d windows of %d tokens; these words are dropped: %r",
            max_windows,
            capacity,
            tokenizer.decode(dropped),
        )
        windows.token_ids, windows.weights = windows.token_ids[:max_windows], windows.weights[:max_windows]
    return windows


def tokenize_weighted(
    prompt: str, tokenizer: PreTrainedTokenizerBase, weighting: bool = True
) -> list[tuple[list[int], list[float]]]:
    """The prompt's token ids (no special tokens) and their weights, in one segment per `BREAK`-separated part.

    As A1111 counts `BREAK`: each one closes a segment (an empty one too), and a trailing `BREAK` opens none.
    """
    pieces = parse_weighted_prompt(prompt) if weighting else [(prompt, 1.0)]
    segments: list[tuple[list[int], list[float]]] = [([], [])]
    for text, weight in pieces:
        if text == BREAK and weight < 0:
            segments.append(([], []))
            continue
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        segments[-1][0].extend(ids)
        segments[-1][1].extend([weight] * len(ids))
    if len(segments) > 1 and not segments[-1][0]:
        segments.pop()
    return segments


def _window_end(ids: list[int], start: int, capacity: int, tokenizer: PreTrainedTokenizerBase) -> int:
    end = min(start + capacity, len(ids))
    if end == len(ids):
        return end
    tokens = tokenizer.convert_ids_to_tokens(ids[start:end])
    for cut in range(len(tokens), len(tokens) - capacity // 4, -1):  # after a token that ends a word
        if tokens[cut - 1].endswith("</w>"):
            return start + cut
    return end


def pad_windows(windows: Sequence[PromptWindows], min_windows: int = 1) -> int:
    """Give every prompt as many windows as the longest one (at least `min_windows`), adding empty-prompt
    windows; return that count."""
    count = max(min_windows, *(len(w.token_ids) for w in windows))
    for w in windows:
        w.token_ids += [[] for _ in range(count - len(w.token_ids))]
        w.weights += [[] for _ in range(count - len(w.weights))]
    return count


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


def sd_text_spec(text_encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, clip_skip: int | None) -> TextEncoderSpec:
    """SD 1.x/2.x conditioning: the last layer after the final layer norm, `clip_skip` layers earlier."""
    return TextEncoderSpec(text_encoder, tokenizer, hidden_layer=-1 - (clip_skip or 0), final_norm=True)


def sdxl_text_spec(
    text_encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, clip_skip: int | None
) -> TextEncoderSpec:
    """SDXL and SD 3 conditioning: the penultimate layer without the final layer norm, `clip_skip` layers earlier."""
    return TextEncoderSpec(text_encoder, tokenizer, hidden_layer=-2 - (clip_skip or 0), final_norm=False)


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

    The original is left untouched (pipelines built with `from_pipe` may share it). Offloaded encoders carry
    hooks tied to other modules and are refused: give the pipeline a stretched encoder instead.
    """
    if hasattr(text_encoder, "_hf_hook"):
        raise ValueError(
            'strategy="stretch" cannot stretch an offloaded text encoder on the fly; make a long one with '
            "`longclip stretch SDXL_REPO OUT --subfolder text_encoder_2 --pad-token '!'` and pass it as "
            'text_encoder_2, or use strategy="chunk".'
        )
    base = text_encoder.config.max_position_embeddings
    ratio = -(-(num_positions - DEFAULT_KEEP) // (base - DEFAULT_KEEP))  # the smallest ratio long enough
    shared = {id(tensor): tensor for tensor in itertools.chain(text_encoder.parameters(), text_encoder.buffers())}
    view = copy.deepcopy(text_encoder, memo=shared)
    return stretch_model(view, DEFAULT_KEEP, ratio)


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


def _weights_tensor(windows: PromptWindows, length: int) -> torch.Tensor:
    rows = torch.ones(len(windows.weights), length)
    for row, weights in zip(rows, windows.weights, strict=True):
        row[1 : 1 + len(weights)] = torch.tensor(weights)
    return rows.flatten()


@torch.no_grad()
def encode_prompt_parts(
    prompts: Sequence[str],
    encoders: Sequence[TextEncoderSpec],
    *,
    strategy: SDXLStrategy = "chunk",
    weighting: bool = True,
    max_windows: int | None = None,
    prompts_2: Sequence[str] | None = None,
    min_windows: int = 1,
    split_at: int | None = None,
    device: torch.device | str | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Encode prompts with each encoder: its conditioning [B, windows * T, D] and pooled vector [B, E] (the first
    window's `text_embeds`; None for an encoder without a text projection).

    The first encoder sets the window length T. Every prompt gets as many windows as the longest one (the
    rest are empty-prompt windows; at least `min_windows`), so positive and negative prompts encoded in one call
    line up. An encoder shorter than T is chunked or stretched according to `strategy`; either way its rows are
    the states of the same tokens as the first encoder's. `prompts_2` feeds the second encoder (SDXL's and SD 3's
    `prompt_2`); it defaults to `prompts`, tokenized once and read by both encoders. `split_at` runs
    `prompts[:split_at]` and `prompts[split_at:]` through separate forward passes, as diffusers encodes positive
    and negative prompts (batch composition can change float results in the last bits).
    """
    if strategy not in SDXL_STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {', '.join(SDXL_STRATEGIES)}.")
    length = encoders[0].num_positions
    texts_per_encoder = [prompts, *([prompts_2] if prompts_2 is not None else [])]
    tokenized = [
        [tokenize_windows(text, spec.tokenizer, length - 2, weighting, max_windows) for text in texts]
        for spec, texts in zip(encoders, texts_per_encoder, strict=False)
    ]
    windows_per_encoder = tokenized + [tokenized[0]] * (len(encoders) - len(tokenized))
    count = pad_windows([w for per_encoder in tokenized for w in per_encoder], min_windows)

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
            weights = [_weights_tensor(w, length).to(hidden.device) for w in windows]
            hidden = torch.stack([apply_weights(h, w) for h, w in zip(hidden, weights, strict=True)])
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
    *,
    strategy: SDXLStrategy = "chunk",
    weighting: bool = True,
    max_windows: int | None = None,
    prompts_2: Sequence[str] | None = None,
    min_windows: int = 1,
    split_at: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode prompts to conditioning [B, windows * T, sum of D] and the pooled vector of the last encoder that
    has one (SD 1.x/2.x and SDXL conditioning); arguments as in `encode_prompt_parts`."""
    parts = encode_prompt_parts(
        prompts,
        encoders,
        strategy=strategy,
        weighting=weighting,
        max_windows=max_windows,
        prompts_2=prompts_2,
        min_windows=min_windows,
        split_at=split_at,
        device=device,
    )
    pooled = next((pooled for _, pooled in reversed(parts) if pooled is not None), None)
    return torch.cat([hidden for hidden, _ in parts], dim=-1), pooled


@torch.no_grad()
def encode_t5_prompts(
    prompts: Sequence[str],
    text_encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    *,
    weighting: bool = True,
    split_at: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """T5's states [B, max_length, D] as SD 3 and Flux read them: the prompt's tokens, `</s>`, padding.

    Without weighting syntax the input ids are the stock pipelines' (`tokenizer(prompt, padding="max_length",
    max_length=max_length, truncation=True)`). With it, the syntax is parsed away, each token's state is scaled by
    its weight as CLIP's are (`apply_weights`), and `BREAK` only separates words. Tokens past `max_length - 1` are
    dropped, with a warning naming them.
    """
    rows = torch.full((len(prompts), max_length), tokenizer.pad_token_id, dtype=torch.long)
    weights = torch.ones(len(prompts), max_length)
    for row, row_weights, prompt in zip(rows, weights, prompts, strict=True):
        segments = tokenize_weighted(prompt, tokenizer, weighting)
        ids = [token for segment_ids, _ in segments for token in segment_ids]
        token_weights = [weight for _, segment_weights in segments for weight in segment_weights]
        if len(ids) > max_length - 1:
            logger.warning(
                "The prompt is longer than the %d tokens T5 reads (max_sequence_length); T5 does not see: %r",
                max_length,
                tokenizer.decode(ids[max_length - 1 :]),
            )
            ids, token_weights = ids[: max_length - 1], token_weights[: max_length - 1]
        row[: len(ids) + 1] = torch.tensor([*ids, tokenizer.eos_token_id])
        row_weights[: len(ids)] = torch.tensor(token_weights)
    device = device or next(text_encoder.parameters()).device
    hidden = torch.cat([text_encoder(group.to(device))[0] for group in _split(rows, split_at)])
    if (weights != 1.0).any():
        hidden = torch.stack([apply_weights(h, w.to(h.device)) for h, w in zip(hidden, weights, strict=True)])
    return hidden


@torch.no_grad()
def encode_pooled_prompts(
    prompts: Sequence[str],
    text_encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    weighting: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """CLIP's `pooler_output` [B, D] (its final state at the end token) for each prompt's first window, as Flux
    reads CLIP-L: a Long-CLIP-L sees up to 246 tokens (to the first `BREAK`). Weighting syntax is parsed away; the
    weights do not apply, as a pooled vector has no per-token states."""
    length = text_encoder.config.max_position_embeddings
    first_windows = [tokenize_windows(prompt, tokenizer, length - 2, weighting).token_ids[0] for prompt in prompts]
    device = device or next(text_encoder.parameters()).device
    input_ids = window_input_ids(first_windows, length, *_special_ids(tokenizer))
    return text_encoder(input_ids.to(device)).pooler_output


def require_text_projection(text_encoder: nn.Module, name: str) -> None:
    """Refuse a CLIP text encoder without a text projection where SD 3 reads its projected pooled vector."""
    if not hasattr(text_encoder, "text_projection"):
        raise ValueError(
            f"{name} is a {type(text_encoder).__name__} without a text projection, but SD 3 reads the projected "
            "pooled vector of both CLIP encoders; load it as a CLIPTextModelWithProjection "
            "(LongCLIPTextEncoder.from_pretrained(..., with_projection=True))."
        )


def require_pooler_output(text_encoder: nn.Module, name: str) -> None:
    """Refuse a CLIP text encoder with a text projection where Flux reads the unprojected pooled output."""
    if hasattr(text_encoder, "text_projection"):
        raise ValueError(
            f"{name} is a {type(text_encoder).__name__}, but Flux reads CLIP-L's pooled output without the "
            "projection; load it as a CLIPTextModel (LongCLIPTextEncoder.from_pretrained(..., with_projection=False))."
        )


def encode_sd3_prompts(
    prompts: Sequence[str],
    clip_encoders: Sequence[TextEncoderSpec],
    t5_encoder: nn.Module | None,
    t5_tokenizer: PreTrainedTokenizerBase | None,
    *,
    prompts_2: Sequence[str] | None = None,
    prompts_3: Sequence[str] | None = None,
    max_sequence_length: int = 256,
    t5_width: int | None = None,
    strategy: SDXLStrategy = "chunk",
    weighting: bool = True,
    max_windows: int | None = None,
    min_windows: int = 1,
    split_at: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD 3 conditioning [B, windows * T + max_sequence_length, T5 width] and pooled vector [B, sum of E].

    As `StableDiffusion3Pipeline` lays it out: CLIP-L's and bigG's states (`encode_prompt_parts` of `prompts` and
    `prompts_2`: windows, bigG aligned token for token) concatenated on the feature axis and zero-padded to T5's
    width, then T5's states of `prompts_3` (`encode_t5_prompts`) on the sequence axis; pooled: both encoders' text
    projections of the first window, concatenated. Without T5 (`t5_encoder=None`), its part is zeros of width
    `t5_width`, as the stock pipeline gives.
    """
    for spec, name in zip(clip_encoders, ("text_encoder", "text_encoder_2"), strict=False):
        require_text_projection(spec.text_encoder, name)
    parts = encode_prompt_parts(
        prompts,
        clip_encoders,
        strategy=strategy,
        weighting=weighting,
        max_windows=max_windows,
        prompts_2=prompts_2,
        min_windows=min_windows,
        split_at=split_at,
        device=device,
    )
    clip_hidden = torch.cat([hidden for hidden, _ in parts], dim=-1)
    pooled = torch.cat([pooled for _, pooled in parts], dim=-1)
    if t5_encoder is None:
        t5_hidden = clip_hidden.new_zeros(len(prompts), max_sequence_length, t5_width)
    else:
        t5_hidden = encode_t5_prompts(
            prompts_3 if prompts_3 is not None else prompts,
            t5_encoder,
            t5_tokenizer,
            max_sequence_length,
            weighting=weighting,
            split_at=split_at,
            device=device,
        )
    padding = t5_hidden.shape[-1] - clip_hidden.shape[-1]
    if padding < 0:
        raise ValueError(
            f"The CLIP encoders give {clip_hidden.shape[-1]} features together, more than T5's {t5_hidden.shape[-1]} "
            "that SD 3 pads them to; these text encoders do not belong to one SD 3 model."
        )
    clip_hidden = nn.functional.pad(clip_hidden.to(t5_hidden), (0, padding))
    return torch.cat([clip_hidden, t5_hidden], dim=-2), pooled


def encode_flux_prompts(
    prompts: Sequence[str],
    clip_encoder: nn.Module,
    clip_tokenizer: PreTrainedTokenizerBase,
    t5_encoder: nn.Module,
    t5_tokenizer: PreTrainedTokenizerBase,
    *,
    prompts_2: Sequence[str] | None = None,
    max_sequence_length: int = 512,
    weighting: bool = True,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux conditioning: T5's states of `prompts_2` (default `prompts`) [B, max_sequence_length, D]
    (`encode_t5_prompts`) and CLIP-L's pooled vector of `prompts` [B, E] (`encode_pooled_prompts`)."""
    require_pooler_output(clip_encoder, "text_encoder")
    t5_hidden = encode_t5_prompts(
        prompts_2 if prompts_2 is not None else prompts,
        t5_encoder,
        t5_tokenizer,
        max_sequence_length,
        weighting=weighting,
        device=device,
    )
    pooled = encode_pooled_prompts(prompts, clip_encoder, clip_tokenizer, weighting=weighting, device=device)
    return t5_hidden, pooled


def has_added_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether tokens were added to CLIP's vocabulary (textual inversion); only then do prompts need converting."""
    return len(tokenizer) > tokenizer.vocab_size


def windows_in(embeds: torch.Tensor | None, window: int) -> int:
    """How many windows given embeddings [B, T, D] span, so the other side is encoded to match."""
    if embeds is None:
        return 1
    if embeds.shape[1] % window:
        raise ValueError(
            f"Given embeddings have {embeds.shape[1]} tokens, not a multiple of the text encoder's {window}-token "
            "window; encode them with this pipeline's encode_prompt."
        )
    return embeds.shape[1] // window


def require_pooled(pooled: torch.Tensor | None, name: str, pooled_name: str) -> None:
    """Refuse given embeddings `name` that come without their pooled vector `pooled_name`."""
    if pooled is None:
        raise ValueError(
            f"`{name}` is given without `{pooled_name}`; pass both, as this pipeline's encode_prompt returns them."
        )


def repeat_per_image(embeds: torch.Tensor, times: int) -> torch.Tensor:
    """[B, ...] -> [B * times, ...], each prompt's copies next to each other (as diffusers orders them)."""
    return embeds.repeat_interleave(times, dim=0)
