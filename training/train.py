"""Long-CLIP fine-tuning with accelerate: stretched positions + primary component matching (`longclip train`).

One process or many (`accelerate launch`, DDP, multi-node); every default is the published recipe: AdamW
lr 1e-6, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter, 200 warm-up steps then cosine to
0, label smoothing 0.1, `logit_scale` re-initialised to ln(100), 32 primary components, 1:1 loss weights, the
first 20 position rows frozen. Checkpoints are written atomically; `--resume` continues exactly.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from longclip_diffusers.convert import save_clip
from longclip_diffusers.formats import (
    CLIP_EOS_TOKEN_ID,
    atomic_output,
    canonical_to_openai,
    checkpoint_from_state_dict,
    load_checkpoint,
)
from longclip_diffusers.stretch import DEFAULT_KEEP, DEFAULT_RATIO, stretch_model
from longclip_diffusers.tokenizer import LongCLIPTokenizer

from .data import CaptionDataset, SampleBuilder, TarShardDataset, collate, expand_shards, read_records
from .loss import LongCLIPLoss

STATE_FILE = "trainer_state.json"


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
    workers: int = 4
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str | None = None
    report_to: str = field(default_factory=lambda: "tensorboard" if importlib.util.find_spec("tensorboard") else "none")


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


def build_model(config: TrainConfig) -> tuple[nn.Module, object, dict]:
    """The open_clip model (text tower stretched), its image transform, and its open_clip config."""
    import open_clip

    name = config.model
    if Path(name).is_file():  # a model-config JSON: register it under its file name
        open_clip.add_model_config(Path(name))
        name = Path(name).stem
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"--model {config.model!r}: not an open_clip model name or model-config JSON file.")
    is_tag = config.pretrained and not Path(config.pretrained).exists() and "/" not in config.pretrained
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=config.pretrained if is_tag else None)
    if config.pretrained and not is_tag:
        _load_weights(model, config.pretrained, model_cfg, config.keep, config.ratio)
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


def _load_weights(model: nn.Module, source: str, model_cfg: dict, keep: int, ratio: int) -> None:
    """Load any checkpoint `longclip convert` reads into the open_clip model (stretching it first if long)."""
    checkpoint = load_checkpoint(source, open_clip_model=None)
    sd = canonical_to_openai(checkpoint.state_dict)
    if sd["positional_embedding"].shape[0] != model.positional_embedding.shape[0]:
        stretch_model(model, keep, ratio)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [key for key in missing if key != "attn_mask"]
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit --model (missing {missing[:5]}, unexpected {unexpected[:5]}); pass the "
            "open_clip architecture the checkpoint was trained with."
        )


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
    tokenizer = LongCLIPTokenizer.from_clip_bpe(model_max_length=context_length, pad_token="!")

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids

    builder = SampleBuilder(preprocess, tokenize, config.short_captions, config.seed)
    if config.train_data.endswith(".tar") or "{" in config.train_data:
        dataset = TarShardDataset(expand_shards(config.train_data), builder, rank, world_size)
        return DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers, collate_fn=collate)
    dataset = CaptionDataset(read_records(config.train_data, config.images_root), builder)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------


def checkpoints_in(output: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    return sorted((output / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(output: Path) -> Path | None:
    checkpoints = checkpoints_in(output)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(accelerator, output: Path, state: dict, keep: int) -> None:
    """accelerate's full state (model, optimizer, scheduler, RNG, sampler) into a folder renamed when complete."""
    target = output / "checkpoints" / f"step_{state['step']}"
    tmp = output / "checkpoints" / f".tmp-step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        os.replace(tmp, target)
        for old in checkpoints_in(output)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def export_final(model: nn.Module, model_cfg: dict, out: Path) -> None:
    """`out/` as a full Hugging Face CLIPModel + processor (the `longclip convert --to clip` layout)."""
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items() if key != "attn_mask"}
    checkpoint = checkpoint_from_state_dict(state_dict, model_cfg, "<trained model>")
    with atomic_output(out, overwrite=True) as tmp:
        save_clip(checkpoint, tmp)


def plot_losses(metrics_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "total"), ("fine_loss", "fine-grained (long)"), ("coarse_loss", "coarse (short)")):
        axis.plot([r["step"] for r in rows], [r[key] for r in rows], label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("Long-CLIP fine-tuning")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> Path:
    """Run (or resume) a training; return the output folder."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    output = Path(config.output)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(output),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        cpu=not torch.cuda.is_available(),
    )
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
    model, optimizer, loader, scheduler = accelerator.prepare(TrainingModel(model), optimizer, loader, scheduler)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped": 0}
    resume_from = latest_checkpoint(output) if config.resume == "auto" else config.resume
    if resume_from:
        accelerator.load_state(str(resume_from))
        state = json.loads((Path(resume_from) / STATE_FILE).read_text())
        frozen.restore()
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text(json.dumps(asdict(config), indent=2))
        _truncate_metrics(output / "metrics.jsonl", state["step"])
    accelerator.init_trackers("longclip", config={k: str(v) for k, v in asdict(config).items()})

    progress = tqdm(total=total_steps, initial=state["step"], disable=not accelerator.is_local_main_process)
    while state["step"] < total_steps:
        _set_epoch(loader, state["epoch"])
        batches = accelerator.skip_first_batches(loader, state["batch_in_epoch"]) if state["batch_in_epoch"] else loader
        for batch in batches:
            with accelerator.accumulate(model):
                features = model(batch["image"], batch["long_text"], batch["short_text"])
                losses = criterion(*features)
                accelerator.backward(losses["loss"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                frozen.restore()
            state["batch_in_epoch"] += 1
            state["skipped"] += int(accelerator.reduce(torch.tensor(batch["skipped"], device=accelerator.device)))
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            progress.update(1)
            if state["step"] % config.log_every == 0 or state["step"] == total_steps:
                _log(accelerator, output, state, losses, scheduler)
            if state["step"] % config.save_every == 0 or state["step"] == total_steps:
                save_checkpoint(accelerator, output, state, config.keep_checkpoints)
            if state["step"] >= total_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_final(accelerator.unwrap_model(model).clip, model_cfg, output / "final")
        plot_losses(output / "metrics.jsonl", output / "loss.png")
        (output / "skipped_images.txt").write_text(f"{state['skipped']}\n")
    accelerator.end_training()
    return output


def _steps_per_epoch(loader: DataLoader, config: TrainConfig, processes: int) -> int:
    try:
        return max(1, len(loader) // processes // config.grad_accum)
    except TypeError:  # a stream of shards has no length: --max-steps says when to stop
        if config.max_steps is None:
            raise ValueError("Training on tar shards streams without a known length: pass --max-steps.") from None
        return config.max_steps


def _set_epoch(loader, epoch: int) -> None:
    loader.set_epoch(epoch)
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _truncate_metrics(metrics_file: Path, step: int) -> None:
    """Keep the logged rows up to `step`: a resumed run logs the steps after its checkpoint again."""
    rows = metrics_file.read_text().splitlines() if metrics_file.exists() else []
    kept = [row for row in rows if row.strip() and json.loads(row)["step"] <= step]
    metrics_file.write_text("".join(row + "\n" for row in kept))


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
    for name in ("keep", "ratio", "pca_components", "batch_size", "epochs", "warmup_steps", "grad_accum"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("fine_weight", "coarse_weight", "label_smoothing", "lr", "eps", "weight_decay"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--betas", type=float, nargs=2, default=defaults.betas)
    parser.add_argument("--pca-scope", choices=("local", "global"), default=defaults.pca_scope)
    parser.add_argument("--short-captions", choices=("first-sentence", "debias"), default=defaults.short_captions)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=defaults.mixed_precision)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--freeze", nargs="*", choices=("vision", "text"), default=[])
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--resume", help="a checkpoint folder, or 'auto' for the latest in --output")
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
    return f"trained: {output / 'final'} (CLIPModel), {output / 'metrics.jsonl'}, {output / 'loss.png'}"
