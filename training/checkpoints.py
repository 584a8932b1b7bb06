"""Checkpoints of a training run: `OUT/checkpoints/step_N/`, complete or absent, checked before resuming.

A checkpoint holds accelerate's full state (model, optimizer, scheduler, RNG and sampler states), the trainer's
own state (`trainer_state.json`: step, epoch, batches of the epoch consumed, skipped images and, for streamed tar
shards, each process's stream position) and, written last, `manifest.json`: the size of every other file. It is
filled in a staging folder and published under its name only when complete. `--resume auto` takes the newest
checkpoint whose files all match their manifest, and names each newer one it passes over (a copy cut short, files
lost in a crash before they reached the disk, a file truncated by hand). Sizes rather than hashes: these failures
cut files short or drop them, and hashing a bigG optimizer state (tens of GB) would add minutes to every save and
every resume.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from longclip_diffusers.atomic import publish

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")


class DamagedCheckpoint(ValueError):
    """A checkpoint folder that cannot be resumed from; the message names it and says why."""


def checkpoints_in(output: Path) -> list[Path]:
    """The run's `checkpoints/step_N` folders, oldest first (other names there are not checkpoints)."""
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)), key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(_CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))


def save_checkpoint(accelerator, output: Path, state: dict, keep: int) -> None:
    """accelerate's full state and `state` as `checkpoints/step_N`, published complete; keeps the newest `keep`
    up to this step (newer, damaged ones left by an earlier attempt are replaced when the run gets there)."""
    target = output / "checkpoints" / f"step_{state['step']}"
    staging = output / "checkpoints" / f".tmp-step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every process's RNG state is on disk before the manifest lists it
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state))
        sizes = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        (staging / MANIFEST_FILE).write_text(json.dumps({"files": sizes}, indent=1))
        publish(staging, target, overwrite=True)
        for old in [c for c in checkpoints_in(output) if step_of(c) <= state["step"]][:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def read_checkpoint_state(folder: Path) -> dict:
    """The trainer state of an intact checkpoint; `DamagedCheckpoint` says what is wrong with any other."""
    manifest = _read_json(folder / MANIFEST_FILE)
    if manifest is None:
        raise DamagedCheckpoint(f"{folder}: incomplete (no readable {MANIFEST_FILE}, the file written last)")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or STATE_FILE not in files:
        raise DamagedCheckpoint(f"{folder}: {MANIFEST_FILE} does not list the checkpoint's files")
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{folder}: {name} is missing")
        if path.stat().st_size != size:
            raise DamagedCheckpoint(f"{folder}: {name} holds {path.stat().st_size:,} bytes, {size:,} were written")
    state = _read_json(folder / STATE_FILE)
    counters = ("step", "epoch", "batch_in_epoch")
    if not (isinstance(state, dict) and all(isinstance(state.get(key), int) and state[key] >= 0 for key in counters)):
        raise DamagedCheckpoint(f"{folder}: {STATE_FILE} is not a trainer state")
    return state


def newest_intact_checkpoint(output: Path, warn: Callable[[str], None]) -> tuple[Path, dict] | None:
    """The newest checkpoint of `output` that `read_checkpoint_state` accepts, with its state; each damaged one passed
    over is `warn`ed about. None when the run has no checkpoint; an error when none of them is intact."""
    checkpoints = checkpoints_in(output)
    problems = []
    for folder in reversed(checkpoints):
        try:
            return folder, read_checkpoint_state(folder)
        except DamagedCheckpoint as problem:
            warn(f"{problem}: passed over")
            problems.append(str(problem))
    if checkpoints:
        raise DamagedCheckpoint(
            f"{output / 'checkpoints'}: no intact checkpoint to resume from ({'; '.join(problems)}); start the run "
            "again with --overwrite."
        )
    return None


def resume_checkpoint(resume: str) -> tuple[Path, dict]:
    """The checkpoint `--resume PATH` names, with its state; a one-line error for anything else."""
    folder = Path(resume)
    if (folder / "checkpoints").is_dir():
        raise ValueError(
            f"--resume {resume}: a run folder, not a checkpoint; pass one of its checkpoints/step_N folders, or "
            f"--resume auto --output {resume} for the newest."
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--resume {resume}: no such checkpoint folder; pass a run's checkpoints/step_N folder, or 'auto' for "
            "the newest in --output."
        )
    return folder, read_checkpoint_state(folder)


def _read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON
        return None
