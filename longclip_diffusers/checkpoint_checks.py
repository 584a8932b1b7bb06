"""Checking a checkpoint against the model its configs describe, before anything is built or written from it:
every tensor present, none extra, each of the right shape, no NaN or infinite value."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .checkpoint import Checkpoint, CheckpointError
from .layouts import hf_to_canonical
from .weights_files import DOWNLOAD_AGAIN, one_line


def _is_optional(key: str) -> bool:
    """Tensors a checkpoint may have or lack: buffers older transformers saved, and CLIP's logit scale (only
    a full CLIPModel uses it, and gets a default without it)."""
    return key == "logit_scale" or key.endswith(".position_ids")


def _describe(checkpoint: Checkpoint) -> str:
    config = checkpoint.text_config
    return (
        f"a CLIP with text width {config.hidden_size}, {config.num_hidden_layers} layers and "
        f"{config.max_position_embeddings} positions"
    )


def _names(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more tensors" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(map(str, shape)) if len(shape) else "a scalar"


def expected_shapes(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the transformers model `checkpoint`'s configs describe, in canonical names.

    The model is built on the meta device: no memory, no initialisation, milliseconds for a CLIP-L.
    """
    text_config = CLIPTextConfig.from_dict(checkpoint.text_config.to_dict())
    if checkpoint.projection_dim is not None:
        text_config.projection_dim = checkpoint.projection_dim
    try:
        with torch.device("meta"):
            if checkpoint.has_vision:
                config = CLIPConfig(
                    text_config=text_config.to_dict(),
                    vision_config=checkpoint.vision_config.to_dict(),
                    projection_dim=checkpoint.projection_dim,
                )
                model = CLIPModel(config)
            elif checkpoint.has_text_projection:
                model = CLIPTextModelWithProjection(text_config)
            else:
                model = CLIPTextModel(text_config)
    except Exception as error:  # transformers validates configs as it builds models, raising its own error types
        raise CheckpointError(
            f"{checkpoint.source}: its config describes no valid CLIP model: {one_line(error)}"
        ) from None
    return {key: tuple(value.shape) for key, value in hf_to_canonical(model.state_dict()).items()}


def _is_finite(tensor: torch.Tensor) -> bool:
    """Whether no value is NaN or infinite. A sum is finite only if every value is, and takes one read-only pass
    (`isfinite` writes a mask as large as the tensor: 7-20 times slower on a CPU); only a sum that overflows needs
    the exact check."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def refuse_non_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinite values (which every output would carry), naming the first tensor.

    Reads every value: meta tensors (shapes without values) are left out.
    """
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not tensor.is_meta and not _is_finite(tensor):
            raise CheckpointError(
                f"{where}: tensor {key} holds NaN or infinite values; the checkpoint is damaged (or its training "
                "diverged). Use an intact copy."
            )


def check_checkpoint(checkpoint: Checkpoint, check_values: bool = True) -> Checkpoint:
    """Refuse a checkpoint that would not load as the model its configs describe (a missing, unexpected or
    misshapen tensor) or, unless `check_values=False`, that holds NaN or infinite weights; return it unchanged
    otherwise. Meta tensors (shapes without values) are checked for shapes only.
    """
    where, state_dict = checkpoint.source, checkpoint.state_dict
    expected = expected_shapes(checkpoint)
    missing = [key for key in expected if key not in state_dict and not _is_optional(key)]
    if missing:
        raise CheckpointError(
            f"{where}: {_describe(checkpoint)} also needs {_names(missing)}, which the checkpoint lacks; it is "
            f"incomplete or its config does not fit its weights. {DOWNLOAD_AGAIN}"
        )
    unexpected = [key for key in state_dict if key not in expected and not _is_optional(key)]
    if unexpected:
        raise CheckpointError(
            f"{where}: holds {_names(unexpected)}, which {_describe(checkpoint)} does not have; its config does not "
            "fit its weights."
        )
    for key, shape in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {key} has shape {_shape(state_dict[key].shape)}, but {_describe(checkpoint)} "
                f"needs {_shape(shape)}; the checkpoint is damaged or mixes two models. Use an intact copy."
            )
    if check_values:
        refuse_non_finite(state_dict, where)
    return checkpoint
