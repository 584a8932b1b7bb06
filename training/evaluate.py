"""Retrieval and zero-shot evaluation of (Long-)CLIP models: every model on every benchmark, what `longclip eval` runs.

The evaluation sets are read by `eval_sets.py`, each model loaded and its images and captions encoded by
`eval_models.py`, scored by `metrics.py` and reported by `report.py`; the command line is `eval_command.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from longclip_diffusers.drift import drift_summary, load_drift_encoder

from .eval_models import EvalModel, encode_images, encode_texts, load_model, zero_shot_accuracy
from .eval_sets import RetrievalSet, ZeroShotSet, describe
from .metrics import retrieval_metrics
from .report import RESULT_FILES, write_results

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)


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
