"""Training's commands, `longclip train`, `cache-features` and `eval` (registered in pyproject.toml's
`longclip.commands` entry points)."""

from __future__ import annotations

from longclip_diffusers.commands import Command

from .cache_features import add_cache_arguments, run_cache_features
from .config import add_train_arguments
from .eval_command import add_eval_arguments, run_eval
from .train import run_train

TRAIN = Command(
    "train", "fine-tune a Long-CLIP (stretching + primary component matching)", add_train_arguments, run_train
)
CACHE_FEATURES = Command(
    "cache-features",
    "compute a dataset's image features once, for `train --image-features`",
    add_cache_arguments,
    run_cache_features,
)
EVAL = Command(
    "eval", "retrieval R@1/5/10 and zero-shot accuracy on long-caption benchmarks", add_eval_arguments, run_eval
)
