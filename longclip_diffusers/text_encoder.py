"""`LongCLIPTextEncoder.from_pretrained`: any Long-CLIP checkpoint as a stock transformers text encoder."""

from __future__ import annotations

import os

import torch
from transformers import (
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
)

from .constants import CLIP_POSITIONS
from .formats import Checkpoint, CheckpointError, load_checkpoint
from .writing import clip_config, text_config_dict, text_state_dict


def require_long(checkpoint: Checkpoint) -> None:
    """Refuse a 77-position encoder where a Long-CLIP one is needed, saying how to make one."""
    if checkpoint.num_positions <= CLIP_POSITIONS:
        raise CheckpointError(
            f"{checkpoint.source}: has {checkpoint.num_positions} text positions, so it is a plain CLIP encoder, "
            "not Long-CLIP. Use a Long-CLIP checkpoint, or make a training-free long version of this one: "
            "`longclip stretch SRC OUT` on the command line (then use OUT), `convert(SRC, OUT, stretch=(20, 4))` in "
            "Python, where `LongCLIPTextEncoder.from_pretrained(SRC, allow_short=True)` also loads it as it is."
        )


def build_text_model(
    checkpoint: Checkpoint, with_projection: bool | None = None, dtype: torch.dtype | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """Instantiate the text tower of `checkpoint` through transformers' own `from_pretrained`, from its tensors."""
    if with_projection is None:
        with_projection = checkpoint.is_projection_model
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    config = CLIPTextConfig.from_dict(text_config_dict(checkpoint, with_projection, dtype))
    return _load_tensors(model_class, config, text_state_dict(checkpoint, with_projection), dtype)


def build_clip_model(checkpoint: Checkpoint, dtype: torch.dtype | None = None) -> CLIPModel:
    """Instantiate a full `CLIPModel` (text and vision towers) through transformers' own `from_pretrained`."""
    config = clip_config(checkpoint)
    state_dict = dict(checkpoint.state_dict)
    state_dict.setdefault("logit_scale", torch.tensor(config.logit_scale_init_value))
    return _load_tensors(CLIPModel, config, state_dict, dtype)


def _load_tensors(
    model_class: type[PreTrainedModel], config: PretrainedConfig, state_dict: dict[str, torch.Tensor], dtype
) -> PreTrainedModel:
    """`model_class.from_pretrained` of `state_dict`: built on the meta device, the tensors assigned as they are
    (memory-mapped or already read: no temporary files, no second copy). Tensors that are views into a larger
    one (the q, k and v of an OpenAI-layout attention) get their own memory, as they would from a file."""
    tensors = {key: _own_tensor(value, dtype) for key, value in state_dict.items()}
    model = model_class.from_pretrained(None, config=config, state_dict=tensors)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _own_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`tensor` on the CPU in `dtype` (floating-point ones), holding its own contiguous memory."""
    tensor = tensor.cpu()
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(dtype).contiguous()
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


class LongCLIPTextEncoder:
    """Loads Long-CLIP text encoders as stock `CLIPTextModel` / `CLIPTextModelWithProjection` instances.

    Like transformers' Auto classes this is a factory: what it returns is a plain transformers model, so a
    diffusers pipeline built with it saves and loads anywhere, without this package.

    ```python
    text_encoder = LongCLIPTextEncoder.from_pretrained("BeichenZhang/LongCLIP-L")
    pipe = StableDiffusionPipeline.from_pretrained(sd15_id, text_encoder=text_encoder, tokenizer=tokenizer)
    ```
    """

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        with_projection: bool | None = None,
        dtype: torch.dtype | None = None,
        allow_short: bool = False,
        open_clip_model: str | None = None,
    ) -> CLIPTextModel | CLIPTextModelWithProjection:
        """Load a text encoder from a Hub repo id, a folder, or a single `.pt` / `.safetensors` file.

        Reads every layout `longclip convert` reads (published OpenAI-layout Long-CLIP files, open_clip and
        Hugging Face checkpoints). `with_projection=True` gives a `CLIPTextModelWithProjection` (default: only
        for sources saved as one, e.g. SDXL's `text_encoder_2`). 77-position encoders are refused unless
        `allow_short=True`.
        """
        checkpoint = load_checkpoint(
            pretrained_model_name_or_path, subfolder=subfolder, revision=revision, open_clip_model=open_clip_model
        )
        if not allow_short:
            require_long(checkpoint)
        return build_text_model(checkpoint, with_projection, dtype)
