"""What the nodes take from ComfyUI when they run inside it: model folders, devices and dtypes.

ComfyUI's modules (`folder_paths`, `comfy.model_management`) are imported inside these functions, never at
import time, so the nodes import and run without ComfyUI (tests, scripts): model names are then local paths
and the encoders run on the CPU in float32.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

# ComfyUI's text encoder folders: `models/text_encoders`, and `models/clip`, its older name.
MODEL_FOLDERS = ("text_encoders", "clip")
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def comfy_module(name: str) -> ModuleType | None:
    """ComfyUI's module `name` (e.g. `"folder_paths"`) when running inside ComfyUI, else `None`."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def require_comfy_module(name: str) -> ModuleType:
    """ComfyUI's module `name`, for what runs only inside ComfyUI; outside it a one-line error."""
    module = comfy_module(name)
    if module is None:
        raise RuntimeError(f"This node runs only inside ComfyUI ({name} is not importable).")
    return module


def checkpoint_names() -> list[str]:
    """Files in ComfyUI's checkpoints folder; `[]` outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    try:
        return folder_paths.get_filename_list("checkpoints") if folder_paths is not None else []
    except KeyError:  # a stand-in of ComfyUI without that folder
        return []


def checkpoint_path(name: str) -> Path:
    """The file a checkpoint loader's `ckpt_name` names (only names listed in ComfyUI's checkpoints folder)."""
    if name not in checkpoint_names():
        raise FileNotFoundError(f"{name}: not in ComfyUI's models/checkpoints folder; put it there and refresh.")
    return Path(require_comfy_module("folder_paths").get_full_path("checkpoints", name))


def text_encoder_names() -> list[str]:
    """Files in ComfyUI's text encoder folders (relative names, as its loaders list them); `[]` outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    names: list[str] = []
    for folder in MODEL_FOLDERS:
        try:
            names += folder_paths.get_filename_list(folder)
        except KeyError:  # a folder name this ComfyUI version does not register
            continue
    return list(dict.fromkeys(names))


def model_path(name: str) -> Path:
    """The file a loader's `text_encoder` input names.

    Inside ComfyUI only names listed in its text encoder folders are accepted (never an arbitrary path);
    outside ComfyUI `name` is a local file or folder.
    """
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name}: no such file or folder.")
        return path
    if name in text_encoder_names():
        for folder in MODEL_FOLDERS:
            try:
                full_path = folder_paths.get_full_path(folder, name)
            except KeyError:
                continue
            if full_path:
                return Path(full_path)
    raise FileNotFoundError(
        f"{name}: not in ComfyUI's models/text_encoders (or models/clip) folder. Put the text encoder there "
        "(`longclip comfy-export COMFYUI_DIR --encoder SRC` writes one) and refresh the node list."
    )


def load_device() -> torch.device:
    """Where text encoders run: ComfyUI's text encoder device, else the CPU."""
    model_management = comfy_module("comfy.model_management")
    return torch.device(model_management.text_encoder_device()) if model_management else torch.device("cpu")


def offload_device() -> torch.device:
    """Where text encoders wait between prompts: ComfyUI's text encoder offload device, else the CPU."""
    model_management = comfy_module("comfy.model_management")
    return torch.device(model_management.text_encoder_offload_device()) if model_management else torch.device("cpu")


def model_dtype() -> torch.dtype:
    """The weight dtype for text encoders: ComfyUI's text encoder dtype on an accelerator, float32 on the CPU.

    These are plain transformers models, without ComfyUI's cast-on-the-fly layers: they compute in their
    weights' dtype, so the CPU gets float32 and storage-only dtypes (fp8) fall back to float16.
    """
    model_management = comfy_module("comfy.model_management")
    device = load_device()
    if model_management is None or device.type == "cpu":
        return torch.float32
    dtype = model_management.text_encoder_dtype(device)
    return dtype if dtype in _COMPUTE_DTYPES else torch.float16


def output_device() -> torch.device:
    """Where conditioning tensors go: ComfyUI's intermediate device, else the CPU."""
    model_management = comfy_module("comfy.model_management")
    return torch.device(model_management.intermediate_device()) if model_management else torch.device("cpu")


def _size_in_bytes(model: nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])


@contextmanager
def on_load_device(*models: nn.Module) -> Iterator[torch.device]:
    """Move `models` to the load device for the block (making room through ComfyUI first), then back."""
    device = load_device()
    model_management = comfy_module("comfy.model_management")
    moved = [model for model in models if next(model.parameters()).device != device]
    if moved and model_management is not None and hasattr(model_management, "free_memory"):
        model_management.free_memory(sum(_size_in_bytes(model) for model in moved), device)
    try:
        for model in moved:
            model.to(device)
        yield device
    finally:
        for model in moved:
            model.to(offload_device())
        if moved and model_management is not None and hasattr(model_management, "soft_empty_cache"):
            model_management.soft_empty_cache()
