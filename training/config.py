"""The settings of a training run (`TrainConfig`) and the `longclip train` arguments that set them.

Every default is the published recipe: AdamW lr 1e-6, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every
parameter, 200 warm-up steps then cosine to 0, label smoothing 0.1, 32 primary components, 1:1 loss weights, the
first 20 position rows frozen.
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass, field

from longclip_diffusers.arguments import integer, real
from longclip_diffusers.stretch import DEFAULT_KEEP, DEFAULT_RATIO


@dataclass
class TrainConfig:
    """Everything a run depends on; saved beside its checkpoints. Defaults: the published recipe."""

    train_data: str = ""
    output: str = "longclip-run"
    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    images_root: str | None = None
    keep: int = DEFAULT_KEEP
    ratio: int = DEFAULT_RATIO
    pca_components: int = 32
    pca_scope: str = "local"
    fine_weight: float = 1.0
    coarse_weight: float = 1.0
    label_smoothing: float = 0.1
    short_captions: str = "first-sentence"
    batch_size: int = 128  # per device; the published run: 128 x 16 GPUs
    epochs: int = 6
    max_steps: int | None = None
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_accum: int = 1
    mixed_precision: str = "no"
    grad_checkpointing: bool = False
    freeze: list[str] = field(default_factory=list)  # "vision" and/or "text"
    preserve_conditioning: float = 0.0  # W of the conditioning-preservation term (preserve.py); 0: off
    preserve_layers: list[str] | None = None  # None: the layers SD reads for the tower's role
    image_features: str | None = None  # a `cache-features` folder: the text tower trains alone (feature_cache.py)
    workers: int = 4
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str | None = None
    overwrite: bool = False  # replace an earlier run in `output` (its files only)
    report_to: str = field(default_factory=lambda: "tensorboard" if importlib.util.find_spec("tensorboard") else "none")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--train-data", required=True, help="JSONL / CSV / ShareGPT4V JSON, or tar shards {000..099}")
    parser.add_argument("--images-root", help="folder relative image paths start from (default: the file's)")
    parser.add_argument("--output", default=defaults.output)
    parser.add_argument("--model", default=defaults.model, help="open_clip model name or model-config JSON")
    parser.add_argument(
        "--pretrained",
        default=defaults.pretrained,
        help="open_clip pretrained tag, a published-layout .pt/.safetensors, or a Hugging Face CLIP folder; "
        "'none' for random weights",
    )
    whole_numbers = {
        "keep": 0, "ratio": 1, "pca_components": 1, "batch_size": 1, "epochs": 1, "warmup_steps": 0,
        "grad_accum": 1, "workers": 0, "save_every": 1, "keep_checkpoints": 1, "log_every": 1,
    }  # fmt: skip
    for name, minimum in whole_numbers.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=integer(minimum), default=getattr(defaults, name))
    parser.add_argument("--max-steps", type=integer(1), help="stop after this many steps (default: --epochs)")
    parser.add_argument("--seed", type=integer(0, 2**32 - 1), default=defaults.seed)
    for name in ("fine_weight", "coarse_weight", "weight_decay"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=real(0), default=getattr(defaults, name))
    for name in ("lr", "eps"):
        parser.add_argument(f"--{name}", type=real(0, above=True), default=getattr(defaults, name))
    parser.add_argument("--label-smoothing", type=real(0, 1, below=True), default=defaults.label_smoothing)
    parser.add_argument("--betas", type=real(0, 1, below=True), nargs=2, default=defaults.betas)
    parser.add_argument("--pca-scope", choices=("local", "global"), default=defaults.pca_scope)
    parser.add_argument("--short-captions", choices=("first-sentence", "debias"), default=defaults.short_captions)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=defaults.mixed_precision)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--freeze", nargs="*", choices=("vision", "text"), default=[])
    parser.add_argument(
        "--image-features",
        metavar="CACHE",
        help="a `longclip cache-features` folder: train the text tower alone on these image features (no image "
        "tower in memory); final/ is then a text encoder + tokenizer",
    )
    parser.add_argument(
        "--preserve-conditioning",
        type=real(0),
        default=defaults.preserve_conditioning,
        metavar="W",
        help="weight of a term keeping the text tower's per-token states, where Stable Diffusion reads them, close "
        "to the starting tower's (on short captions and the first 77 tokens of long ones); 0: off (default)",
    )
    parser.add_argument(
        "--preserve-layers",
        nargs="+",
        metavar="LAYER",
        help="layers the term keeps: 'final' (last layer through the final norm: SD 1.5) and/or -N from the end "
        "(-2: SD 2.x, SDXL, SD 3) (default: -2 for OpenCLIP-H/bigG-wide towers, final and -2 otherwise)",
    )
    run = parser.add_mutually_exclusive_group()
    run.add_argument("--resume", help="a checkpoints/step_N folder, or 'auto' for the newest intact one in --output")
    run.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in --output (only the files training writes)"
    )
    parser.add_argument(
        "--report-to",
        choices=("none", "tensorboard", "wandb", "all"),
        default=defaults.report_to,
        help="accelerate trackers (default: TensorBoard when installed)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run `longclip train` was asked for (`--pretrained none`: random weights)."""
    values = {key: getattr(args, key) for key in TrainConfig.__dataclass_fields__ if hasattr(args, key)}
    if values.get("pretrained") == "none":
        values["pretrained"] = None
    values["betas"] = tuple(values["betas"])
    return TrainConfig(**values)
