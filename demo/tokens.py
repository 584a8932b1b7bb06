"""What each pipeline reads of a prompt: its own token count, and the text past each encoder's limit.

Each side is counted with its own tokenizer, from what its CLIP text encoder receives:
- the stock pipeline gives the raw prompt to its plain Hugging Face `CLIPTokenizer` (no HTML unescaping; weighting
  brackets and `BREAK` are ordinary text) and keeps the first `model_max_length - 2` content tokens;
- the Long-CLIP pipeline parses A1111 weighting and `BREAK` first (they are not tokens), tokenizes with
  `LongCLIPTokenizer` (CLIP's cleaning) and lays the tokens out in windows (`tokenize_windows`); Flux reads
  CLIP-L's pooled vector of the first window only.
SD 3 and Flux also give the prompt to T5, which reads up to `max_sequence_length - 1` tokens (and `</s>`): the same
in both pipelines, told apart from CLIP's windows in the summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from longclip_diffusers.pipelines.generate import T5Reading
from longclip_diffusers.prompts import tokenize_windows
from longclip_diffusers.token_counts import windows_read

__all__ = ["DROPPED", "LONG_ONLY", "VANILLA_ONLY", "PromptCoverage", "T5Reading", "prompt_coverage"]

BOTH = None  # text both encoders read (no highlight)
LONG_ONLY = "only Long-CLIP reads this"
VANILLA_ONLY = "only vanilla CLIP reads this"
DROPPED = "neither CLIP reads this"
_WORD = re.compile(r"\S+")


@dataclass
class PromptCoverage:
    """Each encoder's token count (without start/end tokens, by its own tokenizer), how many it reads, and the
    prompt split into highlighted spans."""

    vanilla_tokens: int
    vanilla_reads: int
    long_tokens: int
    long_reads: int
    long_windows: int  # the windows Long-CLIP encodes
    empty_windows: int  # of those, the ones holding no token (`BREAK` with no words before it)
    window_capacity: int  # content tokens per Long-CLIP window
    spans: list[tuple[str, str | None]]
    pooled_only: bool = False  # Flux: Long-CLIP-L's pooled vector, of the first window
    t5_tokens: int | None = None  # SD 3 and Flux: the prompt's T5 tokens, as the Long-CLIP pipeline gives them
    t5_reads: int | None = None

    @property
    def summary(self) -> str:
        return self._clip_summary() + self._t5_summary()

    def _clip_summary(self) -> str:
        counts = f"**{self.vanilla_tokens} tokens for vanilla CLIP, {self.long_tokens} for Long-CLIP**"
        windows = ""
        if self.long_windows > 1:
            empty = f", {self.empty_windows} of them empty: no words before a BREAK"
            windows = f" in {self.long_windows} windows of {self.window_capacity}{empty if self.empty_windows else ''}"
        if self.pooled_only:
            windows = " (Flux reads CLIP-L's pooled vector, of one window)"
        if self.vanilla_reads == self.vanilla_tokens and self.long_reads == self.long_tokens:
            long_windows = f" (Long-CLIP{windows})" if windows and not self.pooled_only else ""
            return f"{counts} (each by its own tokenizer): both encoders read the whole prompt{long_windows}."
        if self.vanilla_reads == self.vanilla_tokens:
            vanilla = "vanilla CLIP reads them all"
        else:
            vanilla = f"vanilla CLIP reads the first {self.vanilla_reads} and never sees the highlighted rest"
        long = "all" if self.long_reads == self.long_tokens else "the first"
        return f"{counts} (each by its own tokenizer): {vanilla}; Long-CLIP reads {long} {self.long_reads}{windows}."

    def _t5_summary(self) -> str:
        if self.t5_tokens is None:
            return ""
        if self.t5_reads == self.t5_tokens:
            return f" T5 (in both pipelines) reads all {self.t5_tokens} of its tokens."
        return f" T5 (in both pipelines) reads the first {self.t5_reads} of its {self.t5_tokens} tokens."


def prompt_coverage(
    prompt: str,
    vanilla_tokenizer: PreTrainedTokenizerBase,
    long_tokenizer: PreTrainedTokenizerBase,
    *,
    weighting: bool = True,
    max_windows: int | None = None,
    pooled_only: bool = False,
    t5: T5Reading | None = None,
) -> PromptCoverage:
    """What the stock pipeline (`vanilla_tokenizer`) and the Long-CLIP pipeline (`long_tokenizer`, with its
    `prompt_weighting` and `max_prompt_windows` settings; `max_windows=1, pooled_only=True` for Flux) read of
    `prompt` with CLIP, and with `t5` (SD 3, Flux), what T5 reads of it.

    Spans change label only where a word starts: a word an encoder reads only part of counts as unread.
    """
    vanilla_limit = vanilla_tokenizer.model_max_length - 2
    vanilla = vanilla_tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    vanilla_reads = min(len(vanilla.input_ids), vanilla_limit)
    vanilla_cut = len(prompt)
    if vanilla_reads < len(vanilla.input_ids):
        vanilla_cut = _vanilla_cut(vanilla_tokenizer, vanilla.input_ids, vanilla.offset_mapping, vanilla_limit)

    capacity = long_tokenizer.model_max_length - 2
    long = windows_read(long_tokenizer, prompt, weighting, max_windows)
    long_cut = len(prompt)
    if long.read < long.tokens:
        long_cut = _long_cut(prompt, long_tokenizer, capacity, weighting, long.read)
    t5_tokens = t5_reads = None
    if t5 is not None:  # as `encode_t5_prompts` reads it: the parsed prompt, then `</s>`
        t5_tokens, t5_reads = t5.read(prompt, weighting)
    return PromptCoverage(
        vanilla_tokens=len(vanilla.input_ids),
        vanilla_reads=vanilla_reads,
        long_tokens=long.tokens,
        long_reads=long.read,
        long_windows=long.windows,
        empty_windows=long.empty,
        window_capacity=capacity,
        spans=_spans(prompt, vanilla_cut, long_cut),
        pooled_only=pooled_only,
        t5_tokens=t5_tokens,
        t5_reads=t5_reads,
    )


def _vanilla_cut(tokenizer: PreTrainedTokenizerBase, ids: list[int], offsets: list[tuple[int, int]], limit: int) -> int:
    """Character offset of the first word the stock pipeline does not read whole (it reads `limit` tokens)."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    first_unread = limit
    while first_unread > 0 and not tokens[first_unread - 1].endswith("</w>"):  # back to the start of the word
        first_unread -= 1
    return offsets[first_unread][0]


def _long_cut(prompt: str, tokenizer: PreTrainedTokenizerBase, capacity: int, weighting: bool, reads: int) -> int:
    """Character offset of the first word Long-CLIP does not read whole, when it reads only `reads` tokens.

    `LongCLIPTokenizer` cleans the text before BPE, so its offsets do not point into the prompt: instead, find
    the first word whose prefix of the prompt holds more than `reads` tokens (binary search over the words).
    """
    words = list(_WORD.finditer(prompt))

    def tokens_up_to(word: int) -> int:
        windows = tokenize_windows(prompt[: words[word].end()], tokenizer, capacity, weighting).token_ids
        return sum(len(window) for window in windows)

    low, high = 0, len(words) - 1  # the whole prompt holds more than `reads` tokens
    while low < high:
        middle = (low + high) // 2
        if tokens_up_to(middle) > reads:
            high = middle
        else:
            low = middle + 1
    return words[low].start()


def _spans(prompt: str, vanilla_cut: int, long_cut: int) -> list[tuple[str, str | None]]:
    """The prompt as (text, label) spans: read by both, by one of the encoders, by neither."""
    first, last = sorted((vanilla_cut, long_cut))
    one_side = LONG_ONLY if vanilla_cut < long_cut else VANILLA_ONLY
    spans = [(prompt[:first], BOTH), (prompt[first:last], one_side), (prompt[last:], DROPPED)]
    return [span for span in spans if span[0]]
