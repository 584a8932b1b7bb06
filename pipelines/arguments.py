"""Checks of the prompt arguments a pipeline's `encode_prompt` receives, before any compute: the pipelines' own
rules (a string or a list of strings, one negative per prompt, given embeddings whole), in one line each."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


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


def input_names(name: str, count: int) -> list[str]:
    """How a warning names each of `count` prompts of the argument `name`: "`prompt_3`", or "`prompt_3[1]`" in a
    batch."""
    return [f"`{name}`"] if count == 1 else [f"`{name}[{index}]`" for index in range(count)]


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a {type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__


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


def require_pooled(
    pooled: torch.Tensor | None, name: str, pooled_name: str, embeds: torch.Tensor, width: int | None
) -> None:
    """Refuse given embeddings `name` that come without their pooled vector `pooled_name`, or with one that is not
    [batch of `embeds`, `width`] (its own width where None)."""
    if pooled is None:
        raise ValueError(
            f"`{name}` is given without `{pooled_name}`; pass both, as this pipeline's encode_prompt returns them."
        )
    expected = [embeds.shape[0], width or pooled.shape[-1]]
    if list(pooled.shape) != expected:
        raise ValueError(
            f"{pooled_name} has shape {list(pooled.shape)}; give it as {expected} (one pooled vector per prompt of "
            f"`{name}`), as this pipeline's encode_prompt returns it."
        )


def repeat_per_image(embeds: torch.Tensor, times: int) -> torch.Tensor:
    """[B, ...] -> [B * times, ...], each prompt's copies next to each other (as diffusers orders them)."""
    return embeds.repeat_interleave(times, dim=0)
