"""A prompt laid out in windows of a CLIP text encoder's length: tokenized once, split at `BREAK` and at word
boundaries, weighted per token. Token ids only, no tensors (the tokenizer is the one thing it needs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .syntax import BREAK, parse_weighted_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


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
