"""Retrieval and zero-shot evaluation of (Long-)CLIP models: what `longclip eval` runs.

The evaluation sets are read by `eval_sets.py`, scored by `metrics.py` and reported by `report.py`; this module loads
the models, encodes the images and captions, and runs every model on every benchmark.

Models load through the library's `load_checkpoint` + `build_clip_model`, so every layout `longclip convert`
reads works. Captions are tokenized with CLIP's exact ids (`LongCLIPTokenizer`) at all of the model's positions
(248 for Long-CLIP), or truncated at 77 tokens for a CLIP baseline; images are read by training's image loader
and preprocessed as CLIP does (bicubic resize of the short side, centre crop to the model's image size, OpenAI
mean and std).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPModel, PreTrainedTokenizerBase

from longclip_diffusers.convert import DTYPES
from longclip_diffusers.drift import drift_summary, load_drift_encoder
from longclip_diffusers.formats import CheckpointError, load_checkpoint
from longclip_diffusers.hub import resolve
from longclip_diffusers.stretch import CLIP_POSITIONS
from longclip_diffusers.text_encoder import build_clip_model
from longclip_diffusers.tokenizer import LongCLIPTokenizer
from longclip_diffusers.writing import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD

from .eval_sets import (
    SIMPLE_TEMPLATES,
    RetrievalSet,
    ZeroShotSet,
    describe,
    load_coco,
    load_docci,
    load_flickr30k,
    load_jsonl,
    load_sharegpt4v,
    load_urban1k,
    load_zero_shot,
    read_class_names,
    read_templates,
)
from .images import UnusableSample, load_image
from .metrics import ZERO_SHOT_KS, retrieval_metrics, top_k_accuracy
from .report import RESULT_FILES, write_results
from .text_files import read_json_file

__all__ = [
    "EvalModel",
    "add_eval_arguments",
    "encode_images",
    "encode_texts",
    "evaluate",
    "image_transform",
    "load_model",
    "parse_models",
    "run_eval",
    "tasks_from_args",
    "zero_shot_accuracy",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Models and encoding
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalModel:
    """A model to evaluate and the text length it reads captions at.

    `source`: anything `longclip convert` reads. `max_length`: None for all of the model's positions (248 for
    Long-CLIP); 77 for a CLIP baseline (captions truncated as CLIP truncates them). `open_clip_model`: the
    open_clip architecture of an OpenAI-layout file that does not follow OpenAI conventions.
    """

    source: str | os.PathLike
    max_length: int | None = None
    open_clip_model: str | None = None


def image_transform(
    image_size: int, mean: Sequence[float] = CLIP_IMAGE_MEAN, std: Sequence[float] = CLIP_IMAGE_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP's evaluation preprocessing: bicubic resize of the short side, centre crop, normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _image_statistics(path: Path) -> tuple[Sequence[float], Sequence[float]]:
    """Mean and std saved with a model folder (Hugging Face or open_clip), else OpenAI's."""
    mean = std = None
    if (path / "preprocessor_config.json").is_file():  # transformers 4.x
        config = _json_object(path / "preprocessor_config.json")
        mean, std = config.get("image_mean"), config.get("image_std")
    elif (path / "processor_config.json").is_file():  # transformers 5.x: the image processor nested
        config = _json_object(path / "processor_config.json").get("image_processor", {})
        mean, std = config.get("image_mean"), config.get("image_std")
    elif (path / "open_clip_config.json").is_file():
        config = _json_object(path / "open_clip_config.json").get("preprocess_cfg", {})
        mean, std = config.get("mean"), config.get("std")
    return (mean, std) if mean and std else (CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)


def _json_object(path: Path) -> dict:
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: holds a JSON {type(config).__name__}, not the object of a config.")
    return config


def load_model(
    spec: EvalModel | str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[CLIPModel, LongCLIPTokenizer, Callable[[Image.Image], torch.Tensor]]:
    """(CLIPModel, tokenizer at the text length to evaluate at, image transform) for a checkpoint."""
    spec = spec if isinstance(spec, EvalModel) else EvalModel(spec)
    path = resolve(spec.source)
    checkpoint = load_checkpoint(path, open_clip_model=spec.open_clip_model)
    if not checkpoint.has_vision:
        raise CheckpointError(
            f"{spec.source}: is a text encoder only; evaluation needs the full CLIP model (text and vision towers)."
        )
    positions = checkpoint.num_positions
    max_length = spec.max_length or positions
    if not 3 <= max_length <= positions:
        raise ValueError(f"{spec.source}: cannot read captions at {max_length} tokens; it has {positions} positions.")
    tokenizer = LongCLIPTokenizer.from_pretrained(path, model_max_length=max_length)
    if len(tokenizer) > checkpoint.text_config.vocab_size:
        raise CheckpointError(
            f"{spec.source}: its tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{checkpoint.text_config.vocab_size}."
        )
    model = build_clip_model(checkpoint, dtype=dtype).to(device)
    transform = image_transform(model.config.vision_config.image_size, *_image_statistics(path))
    return model, tokenizer, transform


def _pooled(output: Any) -> torch.Tensor:
    """Projected features from `get_*_features`: a tensor in transformers 4.x, a model output in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _ProcessorTransform:
    """A Hugging Face image processor as a one-image transform."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            image = load_image(self.paths[index])  # training's image loader: a benchmark skips nothing, though
        except UnusableSample as problem:
            raise ValueError(f"{self.paths[index]}: cannot read this image ({problem.reason}).") from None
        return self.transform(image)


@torch.no_grad()
def encode_images(
    model: CLIPModel,
    transform: Callable[[Image.Image], torch.Tensor] | Any,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 64,
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalised image features [len(paths), d] (float32, on the CPU).

    `transform` maps a PIL image to a [3, H, W] tensor (`image_transform`), or is a Hugging Face image processor.
    """
    if not paths:
        raise ValueError("No images to encode.")
    if hasattr(transform, "preprocess"):  # a Hugging Face image processor
        transform = _ProcessorTransform(transform)
    parameter = next(model.parameters())
    loader = torch.utils.data.DataLoader(
        _ImageFiles([Path(p) for p in paths], transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=parameter.device.type == "cuda",
    )
    features = []
    with tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
        for pixels in loader:
            output = model.get_image_features(pixel_values=pixels.to(parameter.device, parameter.dtype))
            features.append(_pooled(output).float().cpu())
            bar.update(len(pixels))
    return F.normalize(torch.cat(features), dim=-1)


@torch.no_grad()
def encode_texts(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    max_length: int | None = None,
    batch_size: int = 256,
    *,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalised text features [len(captions), d] (float32, on the CPU).

    Captions are truncated at `max_length` tokens (default: all the model's positions, 248 for Long-CLIP; 77 for
    a CLIP baseline). Batches are padded to their longest caption only: the text attention is causal and the
    features are read at the end-of-text token, so later padding cannot change them.
    """
    if not captions:
        raise ValueError("No captions to encode.")
    positions = model.config.text_config.max_position_embeddings
    max_length = max_length or positions
    if max_length > positions:
        raise ValueError(f"max_length={max_length} exceeds the model's {positions} text positions.")
    device = next(model.parameters()).device
    features = []
    with tqdm(total=len(captions), desc="texts", unit="text", disable=not progress) as bar:
        for start in range(0, len(captions), batch_size):
            batch = list(captions[start : start + batch_size])
            ids = tokenizer(batch, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
            output = model.get_text_features(input_ids=ids["input_ids"].to(device))
            features.append(_pooled(output).float().cpu())
            bar.update(len(batch))
    return F.normalize(torch.cat(features), dim=-1)


def zero_shot_accuracy(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerBase,
    image_folder: str | os.PathLike | ZeroShotSet,
    templates: Sequence[str] | None = None,
    *,
    transform: Callable[[Image.Image], torch.Tensor] | Any = None,
    max_length: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    ks: Sequence[int] = ZERO_SHOT_KS,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot top-k accuracy in percent (`top1`, `top5`); k is capped at the number of classes.

    Each class embedding is the normalised mean of its normalised template embeddings (as in CLIP).
    `templates` overrides those of a ZeroShotSet; the default transform is CLIP's at the model's image size.
    """
    if isinstance(image_folder, ZeroShotSet):
        dataset = image_folder
        if templates is not None:
            dataset = ZeroShotSet(dataset.images, dataset.labels, dataset.class_names, tuple(templates))
    else:
        dataset = load_zero_shot(image_folder, templates or SIMPLE_TEMPLATES)
    if transform is None:
        transform = image_transform(model.config.vision_config.image_size)
    prompts = [template.format(name) for name in dataset.class_names for template in dataset.templates]
    prompt_features = encode_texts(model, tokenizer, prompts, max_length, batch_size * 4, progress=progress)
    classes = F.normalize(prompt_features.view(len(dataset.class_names), len(dataset.templates), -1).mean(1), dim=-1)
    images = encode_images(model, transform, dataset.images, batch_size, num_workers=num_workers, progress=progress)
    return top_k_accuracy(images @ classes.T, dataset.labels, ks)


# ----------------------------------------------------------------------------------------------------------
# Running everything and writing the results
# ----------------------------------------------------------------------------------------------------------


def evaluate(
    models: Mapping[str, EvalModel | str | os.PathLike],
    tasks: Mapping[str, RetrievalSet | ZeroShotSet] | Sequence[tuple[str, RetrievalSet | ZeroShotSet]],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    drift_reference: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate every model on every task; write `out_dir/results.{json,md,png}`; return the results.

    With `drift_reference` (the 77-token CLIP the models were stretched from), each model read at all its positions
    also gets its conditioning drift against it, per Stable Diffusion family (`longclip_diffusers.drift`).

    `models` maps a display name to a source (or an `EvalModel`, e.g. with max_length=77 for a CLIP baseline);
    `tasks` maps a benchmark name to a `RetrievalSet` or `ZeroShotSet`. Models are loaded one at a time, and the
    results are rewritten after each, so an interrupted run keeps those already finished. The results of an
    earlier evaluation in `out_dir` are refused, before any model loads, unless `overwrite`.
    """
    specs = {name: spec if isinstance(spec, EvalModel) else EvalModel(spec) for name, spec in models.items()}
    tasks = dict(tasks)
    if not specs:
        raise ValueError("Give at least one model to evaluate.")
    if not tasks:
        raise ValueError("Give at least one benchmark to evaluate on.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but torch sees no CUDA GPU here.")
    out_dir = Path(out_dir)
    earlier = [name for name in RESULT_FILES if (out_dir / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{out_dir}: holds the results of an earlier evaluation ({', '.join(earlier)}); choose another --out or "
            "pass --overwrite to replace them."
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "models": {},
        "benchmarks": {name: describe(task) for name, task in tasks.items()},
        "results": {},
    }
    options = dict(num_workers=num_workers, progress=progress)
    reference = None
    if drift_reference is not None:
        reference = load_drift_encoder(drift_reference)
        reference.text_encoder.to(device)
        report["drift"] = {"reference": str(drift_reference), "models": {}}
    for name, spec in specs.items():
        logger.info("evaluating %s (%s)", name, spec.source)
        if reference is not None and spec.max_length is None:
            drifted = load_drift_encoder(spec.source, open_clip_model=spec.open_clip_model)
            drifted.text_encoder.to(device)
            report["drift"]["models"][name] = drift_summary(reference, drifted, device=device, progress=progress)
            del drifted
        model, tokenizer, transform = load_model(spec, device, dtype)
        max_length = tokenizer.model_max_length
        report["models"][name] = {
            "source": str(spec.source),
            "max_length": max_length,
            "image_size": model.config.vision_config.image_size,
        }
        scores: dict[str, dict[str, float]] = {}
        for task_name, task in tasks.items():
            logger.info("%s: %s", name, task_name)
            if isinstance(task, RetrievalSet):
                images = encode_images(model, transform, task.images, batch_size, **options)
                texts = encode_texts(model, tokenizer, task.captions, max_length, batch_size * 4, progress=progress)
                scores[task_name] = retrieval_metrics(images, texts, task.image_of_caption)
            else:
                scores[task_name] = zero_shot_accuracy(
                    model, tokenizer, task, transform=transform, max_length=max_length, batch_size=batch_size, **options
                )
        report["results"][name] = scores
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_results(report, out_dir)
    return report


# ----------------------------------------------------------------------------------------------------------
# Command line (`longclip eval`)
# ----------------------------------------------------------------------------------------------------------

_IMAGE_ROOT_BENCHMARKS = ("sharegpt4v", "coco", "flickr30k", "docci", "jsonl")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `longclip eval`."""
    models = parser.add_argument_group("models (at least one)")
    models.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]SRC",
        help="model to evaluate at all its text positions (248 tokens for Long-CLIP); repeat for more",
    )
    models.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="[NAME=]SRC",
        help=f"model evaluated with captions truncated at {CLIP_POSITIONS} tokens, as CLIP reads them "
        "(e.g. openai/clip-vit-large-patch14); repeat for more",
    )
    models.add_argument(
        "--open-clip-model",
        metavar="NAME",
        help="open_clip architecture name or config JSON for OpenAI-layout files that do not follow OpenAI "
        "conventions (default: OpenAI conventions)",
    )
    benchmarks = parser.add_argument_group("benchmarks (at least one; only those given are run)")
    benchmarks.add_argument("--urban1k", metavar="DIR", help="Urban-1k folder: image/NNN.jpg + caption/NNN.txt")
    benchmarks.add_argument(
        "--sharegpt4v", metavar="JSON", help="ShareGPT4V JSON; its first 1,000 entries are ShareGPT4V-1k"
    )
    benchmarks.add_argument(
        "--coco",
        metavar="JSON",
        help="COCO captions JSON (captions_val2017.json: COCO 5k), or the Karpathy dataset_coco.json (test split)",
    )
    benchmarks.add_argument(
        "--coco-karpathy", metavar="JSON", help="keep only the Karpathy 5k test split of this dataset_coco.json"
    )
    benchmarks.add_argument(
        "--flickr30k",
        metavar="JSON_OR_TOKEN_FILE",
        help="Karpathy dataset_flickr30k.json (its 1k-image test split) or results_20130124.token (all images)",
    )
    benchmarks.add_argument(
        "--flickr30k-karpathy", metavar="JSON", help="keep only the Karpathy test split of a --flickr30k token file"
    )
    benchmarks.add_argument("--docci", metavar="JSONL", help="DOCCI docci_descriptions.jsonlines (test split)")
    benchmarks.add_argument("--jsonl", metavar="FILE", help='any set: one {"image": path, "caption": text} per line')
    benchmarks.add_argument(
        "--zero-shot", metavar="DIR", help="image folder with one sub-folder per class (ImageNet's val layout)"
    )
    benchmarks.add_argument(
        "--templates",
        default="openai",
        metavar="openai|simple|FILE",
        help='zero-shot prompts: CLIP\'s 80 ImageNet templates (default), "a photo of a {}.", or a file with one '
        "template per line",
    )
    benchmarks.add_argument(
        "--class-names",
        metavar="FILE",
        help="zero-shot class names: one per line in sorted folder order, or a JSON {folder: name} (default: "
        "folder names with underscores as spaces; ImageNet's WordNet-id folders get CLIP's class names)",
    )
    roots = parser.add_argument_group("image folders")
    roots.add_argument(
        "--images",
        metavar="ROOT",
        help="folder the image paths of the JSON/JSONL benchmarks are relative to (default: the file's folder; "
        "for DOCCI and Flickr30k its images/ or flickr30k-images/ sub-folder)",
    )
    for name in _IMAGE_ROOT_BENCHMARKS:
        roots.add_argument(f"--{name}-images", metavar="ROOT", help=f"--images for --{name} only")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="folder for results.json, results.md, results.png")
    run.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in --out")
    run.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (texts: 4x as many; default 64)"
    )
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model precision (default fp32)")
    run.add_argument(
        "--drift-reference",
        metavar="REF",
        help="also report each --model's conditioning drift against REF, the 77-token CLIP it was stretched from, "
        "as each Stable Diffusion family reads it (as `longclip drift`)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="image-loading processes (default: up to 8)",
    )


def _default_model_name(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_file():
        return path.stem
    return path.resolve().name if path.exists() else source


def parse_models(
    values: Sequence[str], baselines: Sequence[str] = (), open_clip_model: str | None = None
) -> dict[str, EvalModel]:
    """`[NAME=]SRC` arguments as {name: EvalModel}; baselines read captions at 77 tokens."""
    models: dict[str, EvalModel] = {}
    for value, max_length in [(v, None) for v in values] + [(v, CLIP_POSITIONS) for v in baselines]:
        name, equals, source = value.partition("=")
        if not (equals and name and source) or Path(value).expanduser().exists():
            name, source = _default_model_name(value), value
            if max_length is not None:
                name += f" ({max_length} tokens)"
        if name in models:
            raise ValueError(f"Two models are named {name!r}; name them apart with NAME=SRC.")
        models[name] = EvalModel(source, max_length, open_clip_model)
    return models


def tasks_from_args(args: argparse.Namespace) -> dict[str, RetrievalSet | ZeroShotSet]:
    """Load the benchmarks named on the command line (only those given)."""

    def root(name: str) -> str | None:
        return getattr(args, f"{name}_images", None) or args.images

    if args.coco_karpathy and not args.coco:
        raise ValueError("--coco-karpathy restricts --coco; give the captions JSON with --coco.")
    if args.flickr30k_karpathy and not args.flickr30k:
        raise ValueError("--flickr30k-karpathy restricts --flickr30k; give the token file with --flickr30k.")
    tasks: dict[str, RetrievalSet | ZeroShotSet] = {}
    if args.urban1k:
        tasks["urban1k"] = load_urban1k(args.urban1k)
    if args.sharegpt4v:
        tasks["sharegpt4v-1k"] = load_sharegpt4v(args.sharegpt4v, root("sharegpt4v"))
    if args.coco:
        tasks["coco"] = load_coco(args.coco, root("coco"), karpathy=args.coco_karpathy)
    if args.flickr30k:
        tasks["flickr30k"] = load_flickr30k(args.flickr30k, root("flickr30k"), karpathy=args.flickr30k_karpathy)
    if args.docci:
        tasks["docci"] = load_docci(args.docci, root("docci"))
    if args.jsonl:
        name = Path(args.jsonl).stem
        tasks[name if name not in tasks else f"{name} (jsonl)"] = load_jsonl(args.jsonl, root("jsonl"))
    if args.zero_shot:
        class_names = read_class_names(args.class_names) if args.class_names else None
        tasks["zero-shot"] = load_zero_shot(args.zero_shot, read_templates(args.templates), class_names)
    return tasks


def run_eval(args: argparse.Namespace) -> str:
    """Carry out `longclip eval`; return the line to print."""
    models = parse_models(args.model, args.baseline, args.open_clip_model)
    if not models:
        raise ValueError("Give a model to evaluate: --model [NAME=]SRC (or --baseline [NAME=]SRC).")
    benchmark_flags = "--urban1k, --sharegpt4v, --coco, --flickr30k, --docci, --jsonl or --zero-shot"
    if not any(
        getattr(args, flag) for flag in ("urban1k", "sharegpt4v", "coco", "flickr30k", "docci", "jsonl", "zero_shot")
    ):
        raise ValueError(f"Give at least one benchmark: {benchmark_flags}.")
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers}: give 0 or more.")
    tasks = tasks_from_args(args)
    report = evaluate(
        models,
        tasks,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        dtype=DTYPES[args.dtype],
        num_workers=args.workers,
        overwrite=args.overwrite,
        drift_reference=args.drift_reference,
    )
    headline = []
    for name, scores in report["results"].items():
        for benchmark, values in scores.items():
            if "i2t_R@1" in values:
                headline.append(f"{name} {benchmark} I2T/T2I R@1 {values['i2t_R@1']:.1f}/{values['t2i_R@1']:.1f}")
            else:
                headline.append(f"{name} {benchmark} top-1 {values['top1']:.1f}")
    for name, families in report.get("drift", {}).get("models", {}).items():
        headline.append(f"{name} SD 1.5 drift (real tokens, rel L2) {families['sd15']['real_tokens_rel_l2']:.4f}")
    return f"wrote results.json, results.md, results.png to {args.out}: " + "; ".join(headline)
