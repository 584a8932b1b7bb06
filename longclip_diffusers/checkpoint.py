"""The canonical form every CLIP checkpoint is read into, and the error that names a bad one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import CLIPTextConfig, CLIPVisionConfig


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and the fix."""


@dataclass
class Checkpoint:
    """A CLIP model in the canonical layout.

    `state_dict` uses Hugging Face `CLIPModel` key names; tensors may be memory-mapped from the source file.
    `vision_config` and `projection_dim` are `None` for text-only sources.
    """

    state_dict: dict[str, torch.Tensor]
    text_config: CLIPTextConfig
    vision_config: CLIPVisionConfig | None = None
    projection_dim: int | None = None
    source: str = ""
    text_architecture: str = "CLIPTextModel"
    extras: dict = field(default_factory=dict)

    @property
    def num_positions(self) -> int:
        return self.state_dict["text_model.embeddings.position_embedding.weight"].shape[0]

    @property
    def has_vision(self) -> bool:
        return self.vision_config is not None

    @property
    def is_projection_model(self) -> bool:
        """Whether the source was saved as a `CLIPTextModelWithProjection` (the default output class then)."""
        return self.text_architecture == "CLIPTextModelWithProjection"

    @property
    def has_text_projection(self) -> bool:
        return "text_projection.weight" in self.state_dict
