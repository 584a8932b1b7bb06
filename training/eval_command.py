"""`longclip eval`: its arguments, the models and benchmarks they name, and the line it prints."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from longclip_diffusers.convert import DTYPES
from longclip_diffusers.families import FAMILIES
from longclip_diffusers.stretch import CLIP_POSITIONS

from .eval_models import EvalModel
from .eval_sets import (
    RetrievalSet,
    ZeroShotSet,
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
from .evaluate import evaluate

__all__ = ["add_eval_arguments", "parse_models", "run_eval", "tasks_from_args"]

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
        drift = families["sd15"]["real_tokens_rel_l2"]
        headline.append(f"{name} {FAMILIES['sd15'].name} drift (real tokens, rel L2) {drift:.4f}")
    return f"wrote results.json, results.md, results.png to {args.out}: " + "; ".join(headline)
