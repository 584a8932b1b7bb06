"""`LongCLIPTextEncoder.from_pretrained`: any Long-CLIP checkpoint as a stock transformers text encoder."""

from __future__ import annotations

import os

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
)

from .checkpoint import Checkpoint, CheckpointError
from .checkpoint_checks import refuse_non_finite
from .constants import CLIP_POSITIONS, config_dtype_name
from .formats import load_checkpoint
from .layouts import hf_to_canonical
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
    """The text tower of `checkpoint` as a transformers model holding the checkpoint's own tensors."""
    if with_projection is None:
        with_projection = checkpoint.is_projection_model
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    tensors = _own_tensors(text_state_dict(checkpoint, with_projection), dtype)
    config = CLIPTextConfig.from_dict(text_config_dict(checkpoint, with_projection, _stored_dtype(tensors)))
    return _assign_tensors(model_class, config, tensors)


def build_clip_model(checkpoint: Checkpoint, dtype: torch.dtype | None = None) -> CLIPModel:
    """A full `CLIPModel` (text and vision towers) holding the checkpoint's own tensors."""
    config = clip_config(checkpoint).to_dict()
    state_dict = dict(checkpoint.state_dict)
    state_dict.setdefault("logit_scale", torch.tensor(config["logit_scale_init_value"]))
    tensors = _own_tensors(state_dict, dtype)
    dtype_name = config_dtype_name(_stored_dtype(tensors))
    for part in (config, config["text_config"], config["vision_config"]):  # as `from_pretrained` records it
        part["dtype"] = part["torch_dtype"] = dtype_name
    config = CLIPConfig.from_dict(config)
    return _assign_tensors(CLIPModel, config, tensors)


def _assign_tensors(
    model_class: type[PreTrainedModel], config: PretrainedConfig, tensors: dict[str, torch.Tensor]
) -> PreTrainedModel:
    """`model_class(config)` built on the meta device (no memory, no initialisation), its parameters then
    assigned the given canonical-named tensors as they are: memory-mapped or already read, never copied, nothing
    written. What `from_pretrained` does, without its per-load key-conversion tables (most of its time)."""
    with torch.device("meta"):
        model = model_class(config)
    own_names = hf_to_canonical({name: name for name in model.state_dict()})  # canonical -> this version's name
    model.load_state_dict({own_names[key]: tensors[key] for key in own_names}, strict=True, assign=True)
    for module in model.modules():  # the one buffer a checkpoint does not hold: positions 0..n-1
        if isinstance(getattr(module, "position_ids", None), torch.Tensor) and module.position_ids.is_meta:
            module.position_ids = torch.arange(module.position_embedding.num_embeddings).expand((1, -1))
    still_empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if still_empty:
        raise RuntimeError(f"{model_class.__name__}: no value for {', '.join(still_empty)} (a newer transformers?)")
    return model.eval()


def _own_tensors(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Each tensor on the CPU in `dtype` (floating-point ones), holding its own contiguous memory: tensors that
    are views into a larger one (the q, k and v of an OpenAI-layout attention) get their own, as from a file."""

    def own(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.cpu()
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            return tensor.to(dtype).contiguous()
        if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes:
            return tensor
        return tensor.clone(memory_format=torch.contiguous_format)

    return {key: own(value) for key, value in state_dict.items()}


def _stored_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype a model of these tensors records in its config, as `from_pretrained` does: its weights'."""
    return next(tensor.dtype for tensor in tensors.values() if tensor.is_floating_point())


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
            pretrained_model_name_or_path,
            subfolder=subfolder,
            revision=revision,
            open_clip_model=open_clip_model,
            check_values=False,
        )
        if not allow_short:
            require_long(checkpoint)
        text_encoder = build_text_model(checkpoint, with_projection, dtype)
        refuse_non_finite_at_first_use(text_encoder, checkpoint.source)
        return text_encoder


def refuse_non_finite_at_first_use(model: torch.nn.Module, source: str) -> None:
    """Scan `model`'s weights for NaN or infinite values at its first forward pass instead of at load.

    The scan reads every weight, which a plain `from_pretrained` leaves on disk until it is used: done at load it
    would take longer than the load itself. A model with such weights refuses every forward pass (a
    `CheckpointError` naming the tensor); once its weights pass, the check is removed.
    """
    model.register_forward_pre_hook(_ScanAtFirstForward(source))


class _ScanAtFirstForward:
    """A forward pre-hook refusing NaN / infinite weights, which removes itself once they pass. An object rather
    than a closure, so that a model holding it still pickles and deep-copies (each copy scanning its own weights)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        refuse_non_finite(hf_to_canonical(module.state_dict()), self.source)
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is self:
                del module._forward_pre_hooks[key]
