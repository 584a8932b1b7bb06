"""A training run's folder: what a run leaves in it, the checks before writing into it, and its outputs.

    config.json          the run's settings (a resumed run must keep those that change what it computes)
    metrics.jsonl        one row of losses per logged step; loss.png, their plot
    checkpoints/step_N/  complete or absent (`checkpoints.py`)
    final/               the trained model: a Hugging Face CLIPModel, or a text encoder + tokenizer
    skipped_images.txt   the images that could not be read
An earlier run in `--output` is never replaced unless `--overwrite` asks for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from torch import nn

from longclip_diffusers.atomic import atomic_output, atomic_write
from longclip_diffusers.constants import stable_diffusion_pad_token
from longclip_diffusers.formats import checkpoint_from_state_dict
from longclip_diffusers.writing import save_clip, save_diffusers

from .config import TrainConfig
from .feature_cache import CACHE_FILE
from .images import SKIPPED_FILE
from .tar_shards import is_shard_pattern

TRACKER_RUN = "longclip"  # accelerate's trackers log under OUT/longclip
RUN_FILES = ("config.json", "metrics.jsonl", SKIPPED_FILE, "loss.png", "final", "checkpoints", TRACKER_RUN)
# Settings a resumed run may change: none of them changes what the run computes.
RESUMABLE_CHANGES = (
    "output", "resume", "overwrite", "workers", "save_every", "keep_checkpoints", "log_every", "report_to",
    "grad_checkpointing",
)  # fmt: skip


def earlier_run(output: Path) -> list[str]:
    """The files of a training run already in `output` (other files there are not the trainer's)."""
    return [name for name in RUN_FILES if (output / name).exists()]


def check_output(config: TrainConfig) -> None:
    """Refuse to write into a folder holding an earlier run unless asked to resume or replace it (changes nothing)."""
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output}: is a file; training writes a folder.")
    if (output / CACHE_FILE).is_file():
        raise FileExistsError(
            f"--output {output}: an image-feature cache ({CACHE_FILE}), not a training run; train on it with "
            f"--image-features {output} and write the run to another --output."
        )
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


def plot_losses(metrics_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics_rows(metrics_file)
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "total"), ("fine_loss", "fine-grained (long)"), ("coarse_loss", "coarse (short)")):
        axis.plot([r["step"] for r in rows], [r[key] for r in rows], label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("Long-CLIP fine-tuning")
    axis.legend(loc="upper left")
    drift_rows = [r for r in rows if "drift_rel_l2" in r]  # --preserve-conditioning: the drift it holds down
    if drift_rows:
        drift_axis = axis.twinx()
        drift_axis.plot([r["step"] for r in drift_rows], [r["drift_rel_l2"] for r in drift_rows], "k--", label="drift")
        drift_axis.set_ylabel("conditioning drift (relative L2)")
        drift_axis.legend(loc="upper right")
    figure.tight_layout()
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=120))
    plt.close(figure)


def metrics_rows(metrics_file: Path) -> list[dict]:
    """The logged rows; a line cut short by a killed run is left out."""
    rows = []
    for line in metrics_file.read_text().splitlines() if metrics_file.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def truncate_metrics(metrics_file: Path, step: int) -> None:
    """Keep the logged rows up to `step`: a resumed run logs the steps after its checkpoint again."""
    kept = [row for row in metrics_rows(metrics_file) if row["step"] <= step]
    atomic_write(metrics_file, "".join(json.dumps(row) + "\n" for row in kept))


def append_metrics(output: Path, row: dict) -> None:
    """Add one logged step's row to `metrics.jsonl`."""
    with (output / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")
