"""Long-CLIP fine-tuning with accelerate: stretched positions + primary component matching (`longclip train`).

One process or many (`accelerate launch`, DDP, multi-node). A run is planned (`plan_run`: its folder, the
checkpoint it resumes, the feature cache it reads, all checked before anything is built), then trained: the
model (`model.py`), its batches (`build_loader`), the loss (`loss.py`), AdamW with warm-up and cosine decay, and
checkpoints written atomically (`checkpoints.py`); `--resume` continues exactly. Its outputs go to the run folder
(`run_folder.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from longclip_diffusers.atomic import atomic_write, replace_when_done
from longclip_diffusers.constants import OPEN_CLIP_PAD_TOKEN
from longclip_diffusers.tokenizer import LongCLIPTokenizer

from .checkpoints import newest_intact_checkpoint, resume_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_args
from .disk import DiskFull, from_full_disk
from .feature_cache import CachedCaptionDataset, FeatureCache, check_cache_for_run
from .images import check_images_exist, write_skipped
from .loss import LongCLIPLoss
from .model import FrozenRows, TrainingModel, build_model, open_clip_config
from .preserve import ConditioningKeeper
from .records import read_records
from .run_folder import (
    TRACKER_RUN,
    append_metrics,
    check_output,
    check_resumed_settings,
    earlier_run,
    export_final,
    plot_losses,
    truncate_metrics,
)
from .samples import CaptionDataset, SampleBuilder, collate
from .tar_shards import StreamPosition, TarShardDataset, expand_shards, is_shard_pattern

logger = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """What a run starts from, found before anything is built: the checkpoint it resumes (folder and trainer
    state; None: step 0) and the description of the image-feature cache it trains on (None: the images)."""

    resume: tuple[Path, dict] | None
    cache: dict | None


def plan_run(config: TrainConfig, warn: Callable[[str], None]) -> RunPlan:
    """Check --output, --resume and --image-features before anything is built or written."""
    resume = None
    if config.resume == "auto":
        resume = newest_intact_checkpoint(Path(config.output), warn)
        if resume is None:
            warn(f"--resume auto: {config.output} has no checkpoint yet; starting at step 0.")
    elif config.resume:
        resume = resume_checkpoint(config.resume)
    check_output(config)
    cache = check_cache_for_run(config, open_clip_config(config.model)[1]) if config.image_features else None
    if resume:
        check_resumed_settings(resume[0].parent.parent, config)
    return RunPlan(resume, cache)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def build_loader(
    config: TrainConfig, preprocess, context_length: int, rank: int, world_size: int, cache: dict | None = None
) -> DataLoader:
    """The training batches; refuses, before any training, data that cannot fill one batch in every process.
    `cache`: the description of the --image-features cache, when already read."""
    tokenizer = LongCLIPTokenizer.from_clip_bpe(model_max_length=context_length, pad_token=OPEN_CLIP_PAD_TOKEN)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids

    builder = SampleBuilder(preprocess, tokenize, config.short_captions, config.seed)
    if is_shard_pattern(config.train_data):
        dataset = TarShardDataset(_check_shards(config.train_data, world_size), builder, rank, world_size)
        # short batches (the end of each worker's stream) are not trained on, but bring their skipped samples
        return DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers, collate_fn=collate)
    records = read_records(config.train_data, config.images_root)
    if not config.image_features:  # a text-only run reads no image: `cache-features` read them once
        check_images_exist(records, config.train_data)
    if len(records) // config.batch_size < world_size:
        raise ValueError(
            f"{config.train_data}: {len(records)} rows do not fill one batch of {config.batch_size} (--batch-size, "
            f"per process) in each of {world_size} process(es); lower --batch-size to at most "
            f"{max(1, len(records) // world_size)}, or add rows."
        )
    if config.image_features:
        dataset = CachedCaptionDataset(records, builder, FeatureCache(config.image_features, cache))
    else:
        dataset = CaptionDataset(records, builder)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,  # equal batches in every process; the rows left over come first in another epoch
        num_workers=config.workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )


def _check_shards(pattern: str, processes: int) -> list[str]:
    shards = expand_shards(pattern)
    missing = [shard for shard in shards if not Path(shard).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such tar shard ({len(missing)} of the {len(shards)} missing).")
    if len(shards) < processes:
        raise ValueError(
            f"--train-data {pattern}: {len(shards)} shard(s) for {processes} processes; each process streams shards "
            "of its own, so split the data into at least as many shards as processes."
        )
    return shards


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> Path:
    """Run (or resume) a training; return the output folder."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, send_to_device, set_seed

    output = Path(config.output)
    notes = []  # warnings found before the accelerator knows the main process
    plan = plan_run(config, notes.append)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(output),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        step_scheduler_with_optimizer=False,  # else it steps once per process: the schedule counts optimizer steps
        cpu=not torch.cuda.is_available(),
    )
    for note in notes if accelerator.is_main_process else []:
        logger.warning(note)

    set_seed(config.seed)
    model, preprocess, model_cfg = build_model(config, plan.cache)
    frozen = FrozenRows(model, config.keep)
    clip = model
    keeper = None
    if config.preserve_conditioning or config.preserve_layers:
        if not config.preserve_conditioning:
            raise ValueError("--preserve-layers chooses the layers of --preserve-conditioning W; give W > 0 too.")
        keeper = ConditioningKeeper(clip, config.preserve_layers).to(accelerator.device)
    context_length = model.positional_embedding.shape[0]
    loader = build_loader(
        config, preprocess, context_length, accelerator.process_index, accelerator.num_processes, plan.cache
    )
    criterion = LongCLIPLoss(
        config.pca_components, config.pca_scope, config.fine_weight, config.coarse_weight, config.label_smoothing
    )
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    steps_per_epoch = _steps_per_epoch(loader, config, accelerator.num_processes)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    scheduler = cosine_with_warmup(optimizer, config.warmup_steps, total_steps)
    model, optimizer, scheduler = accelerator.prepare(TrainingModel(model), optimizer, scheduler)
    streamed = isinstance(loader.dataset, TarShardDataset)
    if not streamed:  # streamed shards are split by the dataset itself
        loader = accelerator.prepare(loader)

    # Every check has passed: only now does --overwrite set the earlier run aside (removed once this one finishes,
    # put back if it fails).
    with replace_when_done(output, earlier_run, enabled=config.overwrite and accelerator.is_main_process):
        accelerator.wait_for_everyone()
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped": {}}
        if plan.resume:
            accelerator.load_state(str(plan.resume[0]))
            state = {**state, **plan.resume[1]}
            frozen.restore()
        if accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            atomic_write(output / "config.json", json.dumps(asdict(config), indent=2) + "\n")
            truncate_metrics(output / "metrics.jsonl", state["step"])
        accelerator.init_trackers(TRACKER_RUN, config={k: str(v) for k, v in asdict(config).items()})

        with tqdm(total=total_steps, initial=state["step"], disable=not accelerator.is_local_main_process) as progress:
            while state["step"] < total_steps:
                _set_epoch(loader, state["epoch"])
                resumed_within_epoch, full_batches = state["batch_in_epoch"] > 0, 0
                batches, stream = loader, StreamPosition()
                if resumed_within_epoch:
                    batches, stream = _resume_epoch(accelerator, loader, state)
                for batch in batches:
                    batch = send_to_device(batch, accelerator.device)
                    state["batch_in_epoch"] += 1
                    state["skipped"].update(batch["skipped"])
                    if "position" in batch:
                        stream.advance(batch["position"])
                    if len(batch.get("image", ())) < config.batch_size:  # a stream's end: processes need equal batches
                        continue
                    full_batches += 1
                    with accelerator.accumulate(model):
                        with keeper.capture(clip) if keeper else nullcontext():
                            features = model(batch["image"], batch["long_text"], batch["short_text"])
                        losses = criterion(*features)
                        if keeper:
                            with accelerator.autocast():
                                preserve, drift = keeper.loss(batch["long_text"], batch["short_text"])
                            losses["loss"] = losses["loss"] + config.preserve_conditioning * preserve
                            losses["preserve_loss"], losses["drift_rel_l2"] = preserve.detach(), drift
                        accelerator.backward(losses["loss"])
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad()
                        frozen.restore()
                    if not accelerator.sync_gradients:
                        continue
                    state["step"] += 1
                    progress.update(1)
                    if state["step"] % config.log_every == 0 or state["step"] == total_steps:
                        _log(accelerator, output, state, losses, scheduler)
                    if state["step"] % config.save_every == 0 or state["step"] == total_steps:
                        state["skipped"] = _gather_skipped(state["skipped"])
                        if streamed:
                            state["streams"] = _gather_streams(stream)
                        save_checkpoint(accelerator, output, state, config.keep_checkpoints)
                    if state["step"] >= total_steps:
                        break
                else:
                    if not (full_batches or resumed_within_epoch):
                        raise ValueError(_empty_epoch_message(config, state, accelerator.process_index))
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0

        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            export_final(accelerator.unwrap_model(model).clip, model_cfg, output / "final")
            plot_losses(output / "metrics.jsonl", output / "loss.png")
            summary = write_skipped(state["skipped"], output)
            if summary:
                print(summary)
        accelerator.end_training()
        return output


def _steps_per_epoch(loader: DataLoader, config: TrainConfig, processes: int) -> int:
    try:
        batches = len(loader) // processes
    except TypeError:  # a stream of shards has no length: --max-steps says when to stop
        if config.max_steps is None:
            raise ValueError("Training on tar shards streams without a known length: pass --max-steps.") from None
        return config.max_steps
    return math.ceil(batches / config.grad_accum)  # accelerate steps on an epoch's last batch too


def _set_epoch(loader, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):  # accelerate's loaders: the sampler's shuffle
        loader.set_epoch(epoch)
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _resume_epoch(accelerator, loader: DataLoader, state: dict) -> tuple[object, StreamPosition]:
    """The batches of the checkpoint's epoch after its last, and where its shard streams stand. Streamed shards
    continue from each data-loader worker's position, reading no sample before it; a dataset with a sampler
    skips the indices of the batches consumed (checkpoints from before stream positions were kept skip batches)."""
    streams = state.get("streams")
    if not isinstance(loader.dataset, TarShardDataset) or streams is None:
        return accelerator.skip_first_batches(loader, state["batch_in_epoch"]), StreamPosition()
    processes = len(streams)
    if processes != accelerator.num_processes:
        raise ValueError(
            f"--resume: the checkpoint's shards were streamed by {processes} process(es), now "
            f"{accelerator.num_processes}; resume with {processes} (accelerate launch --num_processes {processes})."
        )
    loader.dataset.resume(StreamPosition.from_state(streams[accelerator.process_index]))
    return loader, StreamPosition.from_state(streams[accelerator.process_index])


def _gather_streams(stream: StreamPosition) -> list[dict]:
    """Every process's stream position, in process order."""
    from accelerate.utils import gather_object

    return gather_object([stream.state()])


def _empty_epoch_message(config: TrainConfig, state: dict, rank: int) -> str:
    skipped = list(state["skipped"].items())
    unusable = f" ({len(skipped)} unusable, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return (
        f"{config.train_data}: epoch {state['epoch']} gave process {rank} no full batch of {config.batch_size} "
        f"samples: its shards hold fewer usable samples{unusable} than one batch per data-loader worker; use a "
        "smaller --batch-size, fewer --workers or more data."
    )


def _gather_skipped(skipped: dict[str, str]) -> dict[str, str]:
    """Every process's skipped images (data-loader workers' arrive in the batches), merged."""
    from accelerate.utils import gather_object

    merged = {}
    for part in gather_object([skipped]):
        merged.update(part)
    return merged


def _log(accelerator, output: Path, state: dict, losses: dict, scheduler) -> None:
    values = {key: accelerator.reduce(value.detach(), reduction="mean").item() for key, value in losses.items()}
    row = {"step": state["step"], "epoch": state["epoch"], "lr": scheduler.get_last_lr()[0], **values}
    accelerator.log(row, step=state["step"])
    if accelerator.is_main_process:
        append_metrics(output, row)


def run_train(args: argparse.Namespace) -> str:
    """`longclip train`: the run's outputs, in one line."""
    config = config_from_args(args)
    try:
        output = train(config)
    except (OSError, SafetensorError) as error:  # e.g. the final model, written by safetensors
        if not from_full_disk(error):
            raise
        then = "run the same command again" if config.overwrite else "resume with the same command and --resume auto"
        raise DiskFull(getattr(error, "path", Path(config.output)), then) from None
    final = "text encoder + tokenizer" if config.image_features else "CLIPModel"
    return f"trained: {output / 'final'} ({final}), {output / 'metrics.jsonl'}, {output / 'loss.png'}"
