"""Saved Long-CLIP pipelines that plain diffusers loads back, the way it loads any custom pipeline."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longclip_diffusers.atomic import atomic_write


class SavesItsCode:
    """`save_pretrained` also writes the module that defines the pipeline beside `model_index.json` and names it
    in `_class_name` as `[module, class]`, diffusers' form for custom pipelines, so that

        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

    loads the folder back (the module still imports `longclip_diffusers`). Loading through the class itself,
    `LongCLIPStableDiffusionPipeline.from_pretrained(folder)`, uses the installed class and runs no saved code.

    Put it before the diffusers pipeline in the bases; `code_file` is the module's name in the saved folder
    (one per pipeline class: diffusers imports every local custom pipeline under its file name).
    """

    code_file: str

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("push_to_hub"):
            raise ValueError(
                "push_to_hub is not supported here: save_pretrained(folder), then upload the folder "
                "(`hf upload REPO_ID folder`)."
            )
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        atomic_write(folder / f"{self.code_file}.py", Path(inspect.getfile(type(self))).read_bytes())
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text(encoding="utf-8"))
        index["_class_name"] = [self.code_file, type(self).__name__]
        atomic_write(index_file, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        # a Long-CLIP class is at hand (this one; the family is checked apart): diffusers need not import the saved
        # copy of the folder's, as a stock class loads the folder of another class of its family
        return name_saved_class(super().load_config(*args, **kwargs), lambda name: name.startswith("LongCLIP"))


def name_saved_class(loaded: Any, is_at_hand: Callable[[str], bool]) -> Any:
    """`load_config`'s result, with the `[module, class]` that `SavesItsCode` wrote as `_class_name` given as the
    class's name alone when `is_at_hand(name)`: the class is installed, so no saved code need be imported."""
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    class_name = config.get("_class_name")
    if isinstance(class_name, list) and is_at_hand(class_name[-1]):
        config["_class_name"] = class_name[-1]
    return loaded
