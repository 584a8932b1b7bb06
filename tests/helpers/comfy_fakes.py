"""Stand-ins for the ComfyUI parts that cannot be installed here, and the prompts the tests encode.

ComfyUI is not a pip package, so `folder_paths`, `comfy.model_management` and a ComfyUI `CLIP` object are
faked, with only what the nodes read from them; everything else runs for real.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from longclip_diffusers.hub import WEIGHT_SUFFIXES
from longclip_diffusers.layouts import hf_to_canonical
from longclip_diffusers.tiny import tiny_text_config

SHORT = "a lighthouse at dusk, oil painting"
WEIGHTED = "a (red:1.4) boat [in the fog] near a ((lighthouse)), \\(detailed\\) BREAK seagulls, (sunset)"
LONG = (
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds. "
    + "Far away, a village of white houses with (blue:1.2) doors, " * 22
    + "and a red fishing boat with patched sails."
)
PROMPTS = {"short": SHORT, "weighted": WEIGHTED, "long": LONG}
WINDOWS = {"short": 1, "weighted": 2, "long": 2}  # BREAK starts a window; LONG is past 248 tokens


def install_comfy_stubs(monkeypatch: pytest.MonkeyPatch, models_dir: Path, dtype: torch.dtype = torch.float16):
    """Insert stand-ins for ComfyUI's `folder_paths` and `comfy.model_management` into `sys.modules`.

    `folder_paths` lists the weights files under `models_dir` as ComfyUI lists a model folder (relative names,
    traversal-proof lookups); `model_management` puts text encoders on the CPU.
    """
    folder_paths = types.ModuleType("folder_paths")

    def get_filename_list(folder_name: str) -> list[str]:
        if folder_name not in ("text_encoders", "clip"):
            raise KeyError(folder_name)
        files = (path for path in models_dir.rglob("*") if path.is_file() and path.suffix in WEIGHT_SUFFIXES)
        return sorted(path.relative_to(models_dir).as_posix() for path in files)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        filename = os.path.relpath(os.path.join("/", filename), "/")  # as ComfyUI: no way out of the folder
        path = models_dir / filename
        return str(path) if folder_name == "text_encoders" and path.is_file() else None

    folder_paths.get_filename_list = get_filename_list
    folder_paths.get_full_path = get_full_path

    model_management = types.ModuleType("comfy.model_management")
    model_management.text_encoder_device = lambda: torch.device("cpu")
    model_management.text_encoder_offload_device = lambda: torch.device("cpu")
    model_management.text_encoder_dtype = lambda device=None: dtype
    model_management.intermediate_device = lambda: torch.device("cpu")
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    comfy.model_management = model_management

    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", model_management)
    return folder_paths, model_management


class FakeComfyCLIP:
    """A ComfyUI `CLIP` as the nodes read it: `get_sd()` with each encoder under `<name>.transformer.`, and the
    tokenizers ComfyUI's SD 3 / Flux CLIPs hold (`tokenizer.t5xxl.tokenizer`, a Hugging Face T5 tokenizer).

    CLIP towers get ComfyUI's `text_model.` key names; T5 (`t5xxl`) keeps Hugging Face's, which ComfyUI's own T5
    module uses (comfy/text_encoders/t5.py), without `encoder.embed_tokens` (it embeds through `shared`).
    """

    def __init__(self, t5_tokenizer=None, **encoders: torch.nn.Module) -> None:
        self.encoders = encoders
        self.tokenizer = types.SimpleNamespace()
        if t5_tokenizer is not None:
            self.tokenizer.t5xxl = types.SimpleNamespace(tokenizer=t5_tokenizer)

    def get_sd(self) -> dict[str, torch.Tensor]:
        state_dict = {}
        for name, encoder in self.encoders.items():
            if name == "t5xxl":
                for key, value in encoder.state_dict().items():
                    if key != "encoder.embed_tokens.weight":
                        state_dict[f"t5xxl.transformer.{key}"] = value
                continue
            for key, value in hf_to_canonical(encoder.state_dict()).items():
                if not key.endswith("position_ids"):  # ComfyUI's CLIP has no such buffer
                    state_dict[f"{name}.transformer.{key}"] = value
            state_dict[f"{name}.logit_scale"] = torch.tensor(4.6055)
        return state_dict


def openai_like_config(hidden_size: int, projection_dim: int = 32):
    """A tiny CLIP text config with OpenAI's 64-wide heads, so a weights-only copy is read back the same."""
    config = tiny_text_config(hidden_size, projection_dim)
    config.num_attention_heads = hidden_size // 64
    config.num_hidden_layers = 3
    return config
