"""Long-CLIP fine-tuning with accelerate: stretched positions + primary component matching (`longclip train`).

One process or many (`accelerate launch`, DDP, multi-node); every default is the published recipe: AdamW
lr 1e-6, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter, 200 warm-up steps then cosine to
0, label smoothing 0.1, `logit_scale` re-initialised to ln(100), 32 primary components, 1:1 loss weights, the
first 20 position rows frozen. Checkpoints are written atomically and checked before resuming (`checkpoints.py`);
`--resume` continues exactly. An earlier run in `--output` is never replaced unless `--overwrite` asks for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from longclip_diffusers.arguments import integer, real
from longclip_diffusers.atomic import atomic_output, atomic_write, replace_when_done
from longclip_diffusers.formats import (
    CLIP_EOS_TOKEN_ID,
    canonical_to_openai,
    checkpoint_from_state_dict,
    load_checkpoint,
)
from longclip_diffusers.stretch import DEFAULT_KEEP, DEFAULT_RATIO, stretch_model
from longclip_diffusers.tokenizer import LongCLIPTokenizer
from longclip_diffusers.writing import save_clip, save_diffusers

from .checkpoints import newest_intact_checkpoint, resume_checkpoint, save_checkpoint
from .data import (
    SKIPPED_FILE,
    CaptionDataset,
    SampleBuilder,
    StreamPosition,
    TarShardDataset,
    check_images_exist,
    collate,
    expand_shards,
    is_shard_pattern,
    read_records,
    write_skipped,
)
from .features import (
    CachedCaptionDataset,
    FeatureCache,
    TextCLIP,
    cached_features,
    check_cache_for_run,
    check_image_tower,
    pretrained_file,
)
from .loss import LongCLIPLoss

logger = logging.getLogger(__name__)
TRACKER_RUN = "longclip"  # accelerate's trackers log under OUT/longclip
RUN_FILES = ("config.json", "metrics.jsonl", SKIPPED_FILE, "loss.png", "final", "checkpoints", TRACKER_RUN)
# Settings a resumed run may change: none of them changes what the run computes.
RESUMABLE_CHANGES = (
    "output", "resume", "overwrite", "workers", "save_every", "keep_checkpoints", "log_every", "report_to",
    "grad_checkpointing",
)  # fmt: skip


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
    image_features: str | None = None  # a `cache-features` folder: the text tower trains alone (features.py)
    workers: int = 4
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str | None = None
    overwrite: bool = False  # replace an earlier run in `output` (its files only)
    report_to: str = field(default_factory=lambda: "tensorboard" if importlib.util.find_spec("tensorboard") else "none")


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


def open_clip_config(model: str) -> tuple[str, dict]:
    """The open_clip name and config of --model: a model name, or a model-config JSON (registered under its name)."""
    import open_clip

    name = model
    if Path(name).is_file():
        open_clip.add_model_config(Path(name))
        name = Path(name).stem
        _check_model_config_keys(model, open_clip.get_model_config(name) or {})
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"--model {model!r}: not an open_clip model name or model-config JSON file.")
    return name, model_cfg


def _check_model_config_keys(model: str, model_cfg: dict) -> None:
    """Refuse a key of a model-config JSON that open_clip would reject deep inside `create_model` (a typo), naming
    it and the keys allowed where it stands."""
    import dataclasses
    import inspect

    from open_clip.coca_model import CoCa, MultimodalCfg
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    top = {name for kind in (CLIP, CoCa) for name in inspect.signature(kind.__init__).parameters}
    allowed = {"": (top - {"self", "cast_dtype"}) | {"custom_text"}}
    for section, kind in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg), ("multimodal_cfg", MultimodalCfg)):
        allowed[section] = {field.name for field in dataclasses.fields(kind)}
    for section, keys in allowed.items():
        given = model_cfg.get(section) if section else model_cfg
        unknown = sorted(set(given) - keys) if isinstance(given, dict) else []
        if unknown:
            where = f"{section}." if section else ""
            raise ValueError(
                f"--model {model}: unknown key {where}{unknown[0]}; open_clip takes {', '.join(sorted(keys))} there."
            )


def build_model(config: TrainConfig) -> tuple[nn.Module, object, dict]:
    """The open_clip model (text tower stretched), its image transform, and its open_clip config. With
    --image-features, the text tower alone (`TextCLIP`): no image-tower weights are built or kept."""
    import open_clip

    name, model_cfg = open_clip_config(config.model)
    is_tag = config.pretrained and not Path(config.pretrained).exists() and "/" not in config.pretrained
    if is_tag and config.pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"--pretrained {config.pretrained}: neither a file nor a pretrained tag open_clip has for {name} "
            f"(its tags: {tags}); check the spelling, or pass 'none' for random weights."
        )
    if config.image_features:
        model, preprocess = TextCLIP(model_cfg), cached_features
        source = pretrained_file(name, config.pretrained) if is_tag else config.pretrained
        image_tower = _load_weights(model, source, config.model, config.keep, config.ratio) if source else {}
        check_image_tower(config, image_tower)
        del image_tower  # read only to check that it is the cache's
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=config.pretrained if is_tag else None
        )
        if config.pretrained and not is_tag:
            _load_weights(model, config.pretrained, config.model, config.keep, config.ratio)
    if model.positional_embedding.shape[0] == model_cfg["text_cfg"].get("context_length", 77):
        stretch_model(model, config.keep, config.ratio)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    for parameter_name, parameter in model.named_parameters():
        tower = "vision" if parameter_name.startswith("visual.") else "text"
        if tower in config.freeze and parameter_name != "logit_scale":
            parameter.requires_grad_(False)
    return model, preprocess, model_cfg


def _load_weights(model: nn.Module, source: str, architecture: str, keep: int, ratio: int) -> dict[str, torch.Tensor]:
    """Load any checkpoint `longclip convert` reads into the open_clip model of `architecture` (--model; stretching
    the model first if the checkpoint is long); return the checkpoint's image-tower tensors, not loaded, for a model
    without an image tower."""
    checkpoint = load_checkpoint(source, open_clip_model=architecture)
    sd = canonical_to_openai(checkpoint.state_dict)
    not_loaded = {} if hasattr(model, "visual") else {k: sd.pop(k) for k in [k for k in sd if k.startswith("visual.")]}
    if sd["positional_embedding"].shape[0] != model.positional_embedding.shape[0]:
        stretch_model(model, keep, ratio)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [key for key in missing if key != "attn_mask"]
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit --model (missing {missing[:5]}, unexpected {unexpected[:5]}); pass the "
            "open_clip architecture the checkpoint was trained with."
        )
    return not_loaded


def encode_text_cut(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text(normalize=True)` on the batch cut after its last end-of-text token.

    Exact: the text attention is causal and features are read at the end-of-text token, so padding after it
    never changes them. Short captions (about 30 tokens) then cost an eighth of a 248-token pass.
    """
    length = int((text == CLIP_EOS_TOKEN_ID).int().argmax(dim=-1).max()) + 1
    text = text[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # the end-of-text token
    projected = (
        model.text_projection(pooled)
        if isinstance(model.text_projection, nn.Linear)
        else pooled @ model.text_projection
    )
    return F.normalize(projected, dim=-1)


class TrainingModel(nn.Module):
    """The open_clip model as one training forward (one DDP forward per step): image features, long and short
    caption features, each text batch cut to its longest caption, and the logit scale."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        if not hasattr(clip, "token_embedding"):
            raise ValueError(f"{type(clip).__name__}: training needs an open_clip CLIP with its own text tower.")
        self.clip = clip

    def forward(self, images: torch.Tensor, long_text: torch.Tensor, short_text: torch.Tensor):
        image_features = self.clip.encode_image(images, normalize=True)
        long_features = encode_text_cut(self.clip, long_text)
        short_features = encode_text_cut(self.clip, short_text)
        return image_features, long_features, short_features, self.clip.logit_scale.exp()


class FrozenRows:
    """Keeps rows 0..keep-1 of the text position table bit-identical: no gradient, and restored after each
    optimizer step (AdamW's decoupled weight decay would otherwise shrink them)."""

    def __init__(self, model: nn.Module, keep: int):
        self.table = model.positional_embedding
        self.keep = keep
        self.rows = self.table.detach()[:keep].clone()
        self.table.register_hook(self._zero_grad)

    def _zero_grad(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[: self.keep] = 0
        return grad

    @torch.no_grad()
    def restore(self) -> None:
        self.table[: self.keep] = self.rows.to(self.table.device, self.table.dtype)


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


def build_loader(config: TrainConfig, preprocess, context_length: int, rank: int, world_size: int) -> DataLoader:
    """The training batches; refuses, before any training, data that cannot fill one batch in every process."""
    tokenizer = LongCLIPTokenizer.from_clip_bpe(model_max_length=context_length, pad_token="!")

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
        dataset = CachedCaptionDataset(records, builder, FeatureCache(config.image_features))
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
# The run folder
# ----------------------------------------------------------------------------------------------------------


def earlier_run(output: Path) -> list[str]:
    """The files of a training run already in `output` (other files there are not the trainer's)."""
    return [name for name in RUN_FILES if (output / name).exists()]


def check_output(config: TrainConfig) -> None:
    """Refuse to write into a folder holding an earlier run unless asked to resume or replace it (changes nothing)."""
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output}: is a file; training writes a folder.")
    found = earlier_run(output)
    if not found or config.overwrite:
        return
    if not config.resume:
        raise FileExistsError(
            f"{output}: holds an earlier training run ({', '.join(found)}); pass --resume auto to continue it, "
            "--overwrite to replace it, or choose another --output."
        )
    if config.resume != "auto" and Path(config.resume).resolve().parent.parent != output.resolve():
        raise FileExistsError(
            f"{output}: holds another training run ({', '.join(found)}) than {config.resume}; resume into the "
            "checkpoint's own run folder or a new --output."
        )


def plan_run(config: TrainConfig, warn: Callable[[str], None]) -> tuple[Path, dict] | None:
    """Check --output and --resume before anything is built or written; the checkpoint to resume from and its
    state (None: start at step 0)."""
    resume = None
    if config.resume == "auto":
        resume = newest_intact_checkpoint(Path(config.output), warn)
        if resume is None:
            warn(f"--resume auto: {config.output} has no checkpoint yet; starting at step 0.")
    elif config.resume:
        resume = resume_checkpoint(config.resume)
    check_output(config)
    if config.image_features:
        check_cache_for_run(config)
    if resume:
        check_resumed_settings(resume[0].parent.parent, config)
    return resume


def check_resumed_settings(run: Path, config: TrainConfig) -> None:
    """Refuse to resume a run with settings that change what it computes; the message names each one."""
    saved_file = run / "config.json"
    if not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{saved_file}: unreadable ({error}); remove it to resume without comparing settings."
        ) from None
    current = json.loads(json.dumps(asdict(config)))  # tuples as the lists JSON gives back
    free = set(RESUMABLE_CHANGES) - ({"workers"} if is_shard_pattern(config.train_data) else set())
    changed = [
        f"--{key.replace('_', '-')} {json.dumps(saved[key])} (now {json.dumps(value)})"
        for key, value in current.items()
        if key not in free and key in saved and not _same_setting(saved[key], value)
    ]
    if changed:
        raise ValueError(
            f"{saved_file}: the run was started with other settings: {', '.join(changed)}. Resume it with its own "
            "settings, or start a new run in another --output."
        )


def _same_setting(saved: object, current: object) -> bool:
    if saved == current:
        return True
    # the same file written another way (`./data/x.jsonl`, an absolute path)
    return (
        isinstance(saved, str)
        and isinstance(current, str)
        and Path(current).exists()
        and (Path(saved).resolve() == Path(current).resolve())
    )


def export_final(model: nn.Module, model_cfg: dict, out: Path) -> None:
    """`out/` as a full Hugging Face CLIPModel + processor (the `longclip convert --to clip` layout); a text-only
    model's as a text encoder (`out/text_encoder/`, a CLIPTextModelWithProjection) and `out/tokenizer/` (the
    `longclip convert --to diffusers` layout), ready to be a Stable Diffusion pipeline's encoder."""
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items() if key != "attn_mask"}
    checkpoint = checkpoint_from_state_dict(state_dict, model_cfg, "<trained model>")
    with atomic_output(out, overwrite=True) as tmp:
        if checkpoint.has_vision:
            save_clip(checkpoint, tmp)
        else:
            pad_token = stable_diffusion_pad_token(model_cfg)
            save_diffusers(checkpoint, tmp, with_projection=checkpoint.has_text_projection, pad_token=pad_token)


def stable_diffusion_pad_token(model_cfg: dict) -> str:
    """The pad token of the Stable Diffusion tokenizers for a text tower of this family: "!" for OpenCLIP's GELU
    towers (SD 2.x's encoder, SDXL's second), CLIP's end token for OpenAI's QuickGELU ones (SD 1.x, SDXL's first)."""
    return "<|endoftext|>" if model_cfg.get("quick_gelu") else "!"


def plot_losses(metrics_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _metrics_rows(metrics_file)
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "total"), ("fine_loss", "fine-grained (long)"), ("coarse_loss", "coarse (short)")):
        axis.plot([r["step"] for r in rows], [r[key] for r in rows], label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("Long-CLIP fine-tuning")
    axis.legend()
    figure.tight_layout()
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=120))
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> Path:
    """Run (or resume) a training; return the output folder."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, send_to_device, set_seed

    output = Path(config.output)
    notes = []  # warnings found before the accelerator knows the main process
    resume = plan_run(config, notes.append)
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
    model, preprocess, model_cfg = build_model(config)
    frozen = FrozenRows(model, config.keep)
    context_length = model.positional_embedding.shape[0]
    loader = build_loader(config, preprocess, context_length, accelerator.process_index, accelerator.num_processes)
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
        if resume:
            accelerator.load_state(str(resume[0]))
            state = {**state, **resume[1]}
            frozen.restore()
        if accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            atomic_write(output / "config.json", json.dumps(asdict(config), indent=2) + "\n")
            _truncate_metrics(output / "metrics.jsonl", state["step"])
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
                        features = model(batch["image"], batch["long_text"], batch["short_text"])
                        losses = criterion(*features)
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


def _metrics_rows(metrics_file: Path) -> list[dict]:
    """The logged rows; a line cut short by a killed run is left out."""
    rows = []
    for line in metrics_file.read_text().splitlines() if metrics_file.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _truncate_metrics(metrics_file: Path, step: int) -> None:
    """Keep the logged rows up to `step`: a resumed run logs the steps after its checkpoint again."""
    kept = [row for row in _metrics_rows(metrics_file) if row["step"] <= step]
    atomic_write(metrics_file, "".join(json.dumps(row) + "\n" for row in kept))


def _log(accelerator, output: Path, state: dict, losses: dict, scheduler) -> None:
    values = {key: accelerator.reduce(value.detach(), reduction="mean").item() for key, value in losses.items()}
    row = {"step": state["step"], "epoch": state["epoch"], "lr": scheduler.get_last_lr()[0], **values}
    accelerator.log(row, step=state["step"])
    if accelerator.is_main_process:
        with (output / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


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


def run_train(args: argparse.Namespace) -> str:
    values = {key: getattr(args, key) for key in TrainConfig.__dataclass_fields__ if hasattr(args, key)}
    if values.get("pretrained") == "none":
        values["pretrained"] = None
    values["betas"] = tuple(values["betas"])
    output = train(TrainConfig(**values))
    final = "text encoder + tokenizer" if values.get("image_features") else "CLIPModel"
    return f"trained: {output / 'final'} ({final}), {output / 'metrics.jsonl'}, {output / 'loss.png'}"
