"""Token counting: what a stock pipeline and a Long-CLIP pipeline read of a prompt, each by its own tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .prompts import tokenize_windows


def count_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str) -> int:
    """Tokens of `prompt` without the start and end tokens, as a stock pipeline reads it."""
    return len(tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids)


@dataclass
class LongRead:
    """What a Long-CLIP pipeline's CLIP-L reads of a prompt: of its `tokens` (weighting syntax and `BREAK` are not
    tokens), the first `read`, in `windows` windows."""

    tokens: int
    read: int
    windows: int
    empty: int = 0  # windows read that hold no token (`BREAK` with no words before it)

    def __str__(self) -> str:
        """ "1 token", "12 tokens", "400 tokens in 2 windows", "2 tokens in 3 windows, 1 empty", or "the first
        246 of 400 tokens"."""
        tokens = f"{self.tokens} token{'' if self.tokens == 1 else 's'}"
        if self.read < self.tokens:
            return f"the first {self.read} of {tokens}"
        empty = f", {self.empty} empty" if self.empty else ""
        return tokens if self.windows == 1 else f"{tokens} in {self.windows} windows{empty}"


def windows_read(
    tokenizer: PreTrainedTokenizerBase, prompt: str, weighting: bool = True, max_windows: int | None = None
) -> LongRead:
    """What a Long-CLIP pipeline with `tokenizer` reads of `prompt`: its tokens laid out in windows, of which it
    reads the first `max_windows` (all if None)."""
    capacity = tokenizer.model_max_length - 2
    windows = tokenize_windows(prompt, tokenizer, capacity, weighting).token_ids
    read_windows = windows[:max_windows] if max_windows is not None else windows
    tokens, read = sum(map(len, windows)), sum(map(len, read_windows))
    return LongRead(tokens, read, len(read_windows), sum(not window for window in read_windows))
