"""Helpers shared by the training tests: a synthetic dataset (squares of one colour on another, long captions
that say so), tiny open_clip configs and checkpoints, the settings and command lines of a short run, and what a
user sees of a command."""

import hashlib
import io
import json
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image
from safetensors.torch import save_file

from longclip_diffusers.cli import main
from longclip_diffusers.training.config import TrainConfig

TINY_CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_dataset(folder: Path, count: int = 32, corrupt: tuple[int, ...] = (), missing: tuple[int, ...] = ()) -> Path:
    """Squares of one colour on another, with long captions that say so; JSONL annotations."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for i in range(count):
        square, background = rng.sample(sorted(COLORS), 2)
        image = np.zeros((32, 32, 3), dtype=np.uint8)
        image[:] = COLORS[background]
        image[8:24, 8:24] = COLORS[square]
        if i in corrupt:
            (folder / f"img{i}.png").write_bytes(b"not a png")
        elif i not in missing:
            Image.fromarray(image).save(folder / f"img{i}.png")
        caption = (
            f"A {square} square on a {background} background. The square sits in the middle of the picture. "
            f"Its edges are sharp and straight. The {background} background fills every corner."
        )
        rows.append({"image": f"img{i}.png", "caption": caption})
    (folder / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    (folder / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    return folder


def config_for(folder: Path, output: Path, **overrides) -> TrainConfig:
    values = dict(
        train_data=str(folder / "train.jsonl"),
        output=str(output),
        model=str(folder / "tiny.json"),
        pretrained=None,
        batch_size=8,
        epochs=3,
        warmup_steps=2,
        lr=1e-3,
        workers=0,
        save_every=4,
        log_every=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def losses_of(output: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())}


@contextmanager
def deadline(seconds: int):
    """Fail, rather than hang, a run that would never end (an epoch without batches used to loop forever)."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def train_args(folder: Path, output: Path, **flags) -> list[str]:
    """The command line of `config_for(folder, output)` (the same settings), with `flags` added or changed."""
    values = {
        "train-data": folder / "train.jsonl", "model": folder / "tiny.json", "pretrained": "none", "output": output,
        "batch-size": 8, "epochs": 3, "warmup-steps": 2, "lr": "1e-3", "workers": 0, "save-every": 4, "log-every": 1,
    }  # fmt: skip
    return command_line("train", values, flags)


def command_line(command: str, values: dict, flags: dict) -> list[str]:
    """`longclip COMMAND` with the options `values`, `flags` added or changed (`some_flag=True`: `--some-flag`)."""
    values = {**values, **{key.replace("_", "-"): value for key, value in flags.items()}}
    args = [command]
    for key, value in values.items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return args


def run_cli(capsys, args: list) -> tuple[int, str, str]:
    """`longclip ARGS` (paths and numbers as their strings): exit code, stdout, stderr."""
    with deadline(120):
        code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("longclip: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder` with its modification time and content hash."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_shards(folder: Path, shards: int, per_shard: int, corrupt=(), bad_captions=()) -> str:
    """Webdataset tar shards of `write_dataset`'s images; sample `(shard, i)` listed in `corrupt` holds bytes that
    are no image, in `bad_captions` a JSON caption file that is no JSON. Returns the brace pattern."""
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    for shard in range(shards):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as archive:
            for i in range(per_shard):
                row = rows[(shard * per_shard + i) % len(rows)]
                image = b"not a png" if (shard, i) in corrupt else (folder / row["image"]).read_bytes()
                caption = (
                    b"{not json" if (shard, i) in bad_captions else json.dumps({"caption": row["caption"]}).encode()
                )
                for name, data in ((f"s{shard}_{i}.png", image), (f"s{shard}_{i}.json", caption)):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    archive.addfile(member, io.BytesIO(data))
    return str(folder / f"shard-{{000..{shards - 1:03d}}}.tar")


def save_pretrained(path: Path, seed: int, config: dict = TINY_CONFIG) -> Path:
    """A tiny open_clip checkpoint (both towers) as a safetensors file in the open_clip layout."""
    torch.manual_seed(seed)
    save_file({key: value.contiguous() for key, value in CLIP(**config).state_dict().items()}, path)
    return path


def on_a_nearly_full_disk(tmp_path: Path, room: int, first: list, then: list, keep: Path) -> dict:
    """`longclip FIRST` on a disk with only `room` bytes free, then `longclip THEN` once space is freed; the exit
    codes and error output of both, and the folder `keep` (on that disk) copied to `tmp_path / "kept"`.

    The disk is real: a 256 MiB tmpfs mounted at `tmp_path / "disk"` in a mount namespace of its own (`unshare`),
    filled but for `room` bytes by a file that is removed between the two commands. Skips where no such namespace
    can be made."""
    disk = tmp_path / "disk"
    disk.mkdir()
    unshare = [shutil.which("unshare") or "unshare", "--mount", "--map-root-user"]
    probe = subprocess.run([*unshare, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no tmpfs of its own can be mounted here: {probe.stderr.decode().strip()}")
    longclip = [sys.executable, "-m", "longclip_diffusers"]
    script = f"""
        mount -t tmpfs -o size=256m tmpfs {shlex.quote(str(disk))} || exit 99
        head -c {256 * 2**20 - room} /dev/zero > {shlex.quote(str(disk / "filler"))}
        {shlex.join([*longclip, *map(str, first)])} 2> {tmp_path / "first.err"}; echo $? > {tmp_path / "first.rc"}
        rm {shlex.quote(str(disk / "filler"))}
        {shlex.join([*longclip, *map(str, then)])} 2> {tmp_path / "then.err"}; echo $? > {tmp_path / "then.rc"}
        cp -r {shlex.quote(str(keep))} {tmp_path / "kept"}
    """
    result = subprocess.run([*unshare, "bash", "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        f"{name}_{part}": (tmp_path / f"{name}.{part}").read_text().strip() if part == "err" else
        int((tmp_path / f"{name}.{part}").read_text())
        for name in ("first", "then") for part in ("rc", "err")
    }  # fmt: skip
