"""`--preserve-conditioning W`: keep the text tower's per-token states where Stable Diffusion reads them.

Long-CLIP's loss supervises only the projected embedding; nothing holds the per-token states that SD's UNet reads
(`longclip drift` measures how far they move). This term is a distillation loss against a frozen copy of the
starting tower: at each preserved layer, the squared distance of a caption's live states from the frozen ones, summed
over its tokens (the UNet reads them all) and taken relative to the frozen states' mean square per token; averaged
over each batch's short captions and the first 77 tokens of its long ones (SD reads a 77-token CLIP there), then over
the layers. Summing over tokens puts the term on the scale of the contrastive loss, whose gradients carry CLIP's
logit scale of 100: W = 1 holds the states firmly, W = 0.1 lets them move more.

Layers are named as `hidden_states` indexes them, counted from the end: `-2` the penultimate layer (SD 2.x, SDXL,
SD 3), `final` the last layer through the final layer norm (SD 1.5; Flux's pooled vector is its end-token state).

The live states are read from the training forward itself (forward hooks on the text blocks, so no second live
pass): attention is causal, so the first 77 states of a caption cut to its batch's longest one are those of its
first 77 tokens. The frozen tower runs without gradients, only up to the deepest preserved layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from longclip_diffusers.stretch import CLIP_POSITIONS

FINAL = "final"
# Text widths of the towers SD 2.x (OpenCLIP-H) and SDXL / SD 3 (OpenCLIP-bigG) read at the penultimate layer only.
PENULTIMATE_ONLY_WIDTHS = (1024, 1280)


def default_preserve_layers(clip: nn.Module) -> list[str]:
    """The layers SD reads for the tower's role: OpenCLIP-H and -bigG the penultimate one; CLIP-L (and any other)
    also the final one, which SD 1.5 reads (and Flux's pooled vector comes from)."""
    return ["-2"] if clip.transformer.width in PENULTIMATE_ONLY_WIDTHS else [FINAL, "-2"]


def block_index(layer: str, blocks: int) -> int:
    """The 0-based text block whose output is `layer` (`final`, or a hidden-state index -1..-blocks)."""
    if layer == FINAL:
        return blocks - 1
    try:
        index = int(layer)
    except ValueError:
        index = 0
    if not -blocks <= index <= -1:
        raise ValueError(
            f"--preserve-layers {layer}: give 'final' (the last layer through the final norm) or a layer counted from "
            f"the end, -1 to -{blocks} (-2: the penultimate layer SD 2.x, SDXL and SD 3 read)."
        )
    return blocks + index


class FrozenTextTower(nn.Module):
    """A copy of an open_clip text tower's first blocks, without gradients: the states training started from."""

    def __init__(self, clip: nn.Module, blocks: int):
        super().__init__()
        self.token_embedding = copy.deepcopy(clip.token_embedding)
        self.register_buffer("positional_embedding", clip.positional_embedding.detach()[:CLIP_POSITIONS].clone())
        self.resblocks = copy.deepcopy(clip.transformer.resblocks[:blocks])
        self.ln_final = copy.deepcopy(clip.ln_final)
        self.register_buffer("attn_mask", clip.attn_mask[:CLIP_POSITIONS, :CLIP_POSITIONS].clone(), persistent=False)
        self.batch_first = getattr(clip.transformer, "batch_first", True)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, text: torch.Tensor, wanted: Sequence[int]) -> dict[int, torch.Tensor]:
        """The outputs [B, T, D] of blocks `wanted` on `text` [B, T <= 77]."""
        length = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:length]
        x = x if self.batch_first else x.transpose(0, 1)
        states = {}
        for index, block in enumerate(self.resblocks):
            x = block(x, attn_mask=self.attn_mask[:length, :length])
            if index in wanted:
                states[index] = x if self.batch_first else x.transpose(0, 1)
        return states


class ConditioningKeeper:
    """The preservation term of one run: `with keeper.capture(clip): features = model(...)`, then
    `keeper.loss(long_text, short_text)` -> (loss, drift: the mean relative L2 distance, for the log)."""

    def __init__(self, clip: nn.Module, layers: Sequence[str] | None = None):
        self.layers = list(layers) if layers else default_preserve_layers(clip)
        blocks = len(clip.transformer.resblocks)
        self.blocks = {layer: block_index(layer, blocks) for layer in self.layers}
        self.frozen = FrozenTextTower(clip, max(self.blocks.values()) + 1)
        self.batch_first = self.frozen.batch_first
        self._captured: dict[int, list[torch.Tensor]] = {}
        self._ln_final = clip.ln_final

    def to(self, device: torch.device | str) -> ConditioningKeeper:
        self.frozen.to(device)
        return self

    @contextmanager
    def capture(self, clip: nn.Module) -> Iterator[None]:
        """Record the preserved blocks' outputs during one training forward (long captions, then short ones)."""
        self._captured = {index: [] for index in set(self.blocks.values())}
        hooks = [clip.transformer.resblocks[index].register_forward_hook(self._hook(index)) for index in self._captured]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def _hook(self, index: int):
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self._captured[index].append(output if self.batch_first else output.transpose(0, 1))

        return record

    def loss(self, long_text: torch.Tensor, short_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The term and the drift it measures, from the states the last captured forward read."""
        terms, drifts = [], []
        for position, text in enumerate((long_text, short_text)):
            live_states = {index: outputs[position] for index, outputs in self._captured.items()}
            length = min(CLIP_POSITIONS, next(iter(live_states.values())).shape[1])
            frozen_states = self.frozen(text[:, :length], set(self.blocks.values()))
            for layer, index in self.blocks.items():
                live, frozen = live_states[index][:, :length], frozen_states[index]
                if layer == FINAL:
                    live, frozen = self._ln_final(live), self.frozen.ln_final(frozen)
                live, frozen = live.float(), frozen.float()
                distance = (live - frozen).pow(2).sum(-1)
                per_caption = distance.sum(-1).mean()  # the UNet reads every token: a caption's states together
                terms.append(per_caption / frozen.pow(2).sum(-1).mean().clamp_min(1e-12))
                drifts.append((distance.detach().sqrt() / frozen.norm(dim=-1).clamp_min(1e-12)).mean())
        return torch.stack(terms).mean(), torch.stack(drifts).mean()
