"""What each pipeline reads of a prompt: token counts and the text past vanilla CLIP's 77-token limit."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from longclip_diffusers.pipelines.generate import count_tokens

BOTH = None  # text both encoders read (no highlight)
LONG_ONLY = "only Long-CLIP reads this"
DROPPED = "dropped by both"


@dataclass
class PromptCoverage:
    """Token counts (without start/end tokens) and the prompt split into highlighted spans."""

    tokens: int  # by Long-CLIP's tokenizer (CLIP's exact ids)
    vanilla_reads: int
    long_reads: int
    spans: list[tuple[str, str | None]]

    @property
    def summary(self) -> str:
        if self.tokens <= self.vanilla_reads:
            return f"**{self.tokens} tokens**: both encoders read the whole prompt."
        dropped = self.tokens - self.long_reads
        long_part = f"Long-CLIP reads all {self.tokens}" if not dropped else f"Long-CLIP reads {self.long_reads}"
        return (
            f"**{self.tokens} tokens**: vanilla CLIP reads the first {self.vanilla_reads} and never sees the "
            f"highlighted rest; {long_part}."
        )


def _cut_offset(tokenizer: PreTrainedTokenizerBase, prompt: str, limit: int) -> int | None:
    """Character offset in `prompt` where `tokenizer` stops reading after `limit` content tokens (None: never)."""
    offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True, verbose=False).offset_mapping
    if len(offsets) <= limit:
        return None
    return offsets[limit][0]


def prompt_coverage(
    prompt: str,
    vanilla_tokenizer: PreTrainedTokenizerBase,
    long_tokenizer: PreTrainedTokenizerBase,
    long_limit: int | None = None,
) -> PromptCoverage:
    """Where each encoder stops reading `prompt`.

    The vanilla pipeline truncates with its own tokenizer at `model_max_length - 2` content tokens, so its
    offsets give the exact cut. Long-CLIP reads everything unless `long_limit` (content tokens) is set.
    """
    tokens = count_tokens(long_tokenizer, prompt)
    vanilla_limit = vanilla_tokenizer.model_max_length - 2
    vanilla_cut = _cut_offset(vanilla_tokenizer, prompt, vanilla_limit)
    long_cut = _cut_offset(long_tokenizer, prompt, long_limit) if long_limit is not None else None
    spans: list[tuple[str, str | None]] = []
    end_both = vanilla_cut if vanilla_cut is not None else len(prompt)
    spans.append((prompt[:end_both], BOTH))
    if vanilla_cut is not None:
        end_long = long_cut if long_cut is not None else len(prompt)
        spans.append((prompt[vanilla_cut:end_long], LONG_ONLY))
        if long_cut is not None:
            spans.append((prompt[long_cut:], DROPPED))
    vanilla_reads = min(tokens, vanilla_limit)
    long_reads = tokens if long_limit is None else min(tokens, long_limit)
    return PromptCoverage(tokens, vanilla_reads, long_reads, [s for s in spans if s[0]])
