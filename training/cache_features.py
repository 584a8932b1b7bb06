"""Computing an image-feature cache (`longclip cache-features`); its format is `feature_cache.py`.

Every process computes shards of its own and writes each one atomically, so a killed run keeps its finished shards
and the same command computes the rest, and computes again a shard whose skipped images can now be read. Only a
cache made the same way is resumed; another in `--output` is replaced only with `--overwrite`, once the new one is
complete. One run at a time writes a folder (a lock beside it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from longclip_diffusers.arguments import integer
from longclip_diffusers.atomic import atomic_write, replace_when_done
from longclip_diffusers.convert import DTYPES

from .config import TrainConfig
from .disk import DiskFull, from_full_disk
from .feature_cache import (
    CACHE_FILE,
    FORMAT,
    DamagedCache,
    NotACache,
    differences,
    file_sha256,
    identity_of,
    read_cache_file,
    read_complete_cache,
    read_feature_shard,
    shard_count,
    shard_files,
    shard_name,
    shard_rows,
    tensors_sha256,
    write_shard,
)
from .images import SKIPPED_FILE, UnusableSample, check_images_exist, write_skipped
from .model import build_model
from .records import read_records
from .samples import CaptionDataset, SampleBuilder
from .tar_shards import is_shard_pattern

logger = logging.getLogger(__name__)


@dataclass
class CacheConfig:
    train_data: str
    output: str
    model: str
    pretrained: str | None
    images_root: str | None = None
    dtype: str = "fp32"
    shard_size: int = 4096
    batch_size: int = 256
    workers: int = 4
    mixed_precision: str = "no"
    seed: int = 0
    overwrite: bool = False


def weights_source(pretrained: str | None) -> str | None:
    """--pretrained as the cache records it: a file or folder by its absolute path, a tag as it is."""
    return str(Path(pretrained).resolve()) if pretrained and Path(pretrained).exists() else pretrained


def cache_identity(
    config: CacheConfig, model_cfg: dict, preprocess: object, image_tower: dict[str, torch.Tensor], records: int
) -> dict:
    """Everything the cached features depend on."""
    return {
        "format": FORMAT,
        "model": config.model,
        "model_config": json.loads(json.dumps(model_cfg)),  # tuples as the lists JSON gives back
        "pretrained": weights_source(config.pretrained),
        "seed": None if config.pretrained else config.seed,  # random weights are their seed
        "image_tower_sha256": tensors_sha256(image_tower),
        "preprocess": repr(preprocess),
        "mixed_precision": config.mixed_precision,
        "train_data": str(Path(config.train_data).resolve()),
        "annotations_sha256": file_sha256(config.train_data),
        "records": records,
        "dim": model_cfg["embed_dim"],
        "dtype": config.dtype,
        "shard_size": config.shard_size,
    }


class _ImagesToCache(Dataset):
    """The preprocessed pixels of some rows, read as training reads them (`CaptionDataset.load`), or why not."""

    def __init__(self, images: CaptionDataset, positions: list[int], preprocess):
        self.images, self.positions, self.preprocess = images, positions, preprocess

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor | None, list | None]:
        position = self.positions[item]
        try:
            return position, self.preprocess(self.images.load(position)), None
        except UnusableSample as problem:
            return position, None, [position, str(self.images.records[position].image), problem.reason]


def _collate_images(samples: list[tuple]) -> dict:
    usable = [(position, pixels) for position, pixels, _ in samples if pixels is not None]
    return {
        "positions": [position for position, _ in usable],
        "pixels": torch.stack([pixels for _, pixels in usable]) if usable else None,
        "skipped": [skip for _, _, skip in samples if skip is not None],
    }


def existing_cache(output: Path, overwrite: bool) -> dict | None:
    """The description of the cache already in `output`, if any (with `overwrite`, {} for a damaged one, to be
    replaced); refuses an `output` that is a file or a folder of other files."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output}: is a file; the cache is a folder.")
    try:
        stored = read_cache_file(output) if output.is_dir() else None
    except NotACache:
        raise
    except DamagedCache:
        if not overwrite:
            raise
        return {}
    others = [p for p in output.iterdir() if not p.name.endswith(".tmp")] if output.is_dir() else []  # ours, cut short
    if stored is None and others:
        raise FileExistsError(
            f"--output {output}: a folder of other files, not an image-feature cache; choose a new or empty folder."
        )
    return stored


def check_same_cache(stored: dict, identity: dict, output: Path) -> None:
    """Refuse to add to a cache made by something else (only a cache made the same way is resumed)."""
    different = differences(identity_of(stored), identity)
    if different:
        raise FileExistsError(
            f"--output {output}: holds another image-feature cache (made with --model {stored.get('model')}, "
            f"--pretrained {stored.get('pretrained')}, --train-data {stored.get('train_data')}; it differs in "
            f"{', '.join(different)}); choose another --output, or pass --overwrite to replace it."
        )


def images_root(config: CacheConfig) -> str:
    """The folder the annotation file's relative image paths start from (--images-root, else the file's)."""
    return str(Path(config.images_root or Path(config.train_data).parent).resolve())


def check_images_root(stored: dict, root: str, output: Path) -> bool:
    """Whether the shards in `output` were computed from the images under another folder than `root` (they are
    then computed again); refuses to replace a complete cache of those images without --overwrite."""
    earlier = stored.get("images_root")  # caches from before it was recorded: not known
    if earlier is None or earlier == root:
        return False
    if stored.get("complete"):
        raise FileExistsError(
            f"--output {output}: holds the features of the images under {earlier}, not of those under {root} "
            "(--images-root); pass --overwrite to cache these instead, or choose another --output."
        )
    logger.warning(
        "%s: its shards were computed from the images under %s: computed again from %s", output, earlier, root
    )
    return True


def cache_files(output: Path) -> list[str]:
    """The files of the cache in `output` (other files there are not the cache's)."""
    return shard_files(output) + [name for name in (SKIPPED_FILE, CACHE_FILE) if (output / name).exists()]


def cache_features(config: CacheConfig) -> Path:
    """Compute (or finish) the cache `config.output`: every row's normalised image features; return the folder."""
    from accelerate import PartialState

    if config.dtype not in DTYPES:
        raise ValueError(f"--dtype {config.dtype!r}: choose one of {', '.join(DTYPES)}.")
    output = Path(config.output)
    existing_cache(output, config.overwrite)  # refused before anything is read, if it is not a cache
    if is_shard_pattern(config.train_data):
        raise ValueError(
            f"--train-data {config.train_data}: cache-features reads an annotation file (JSONL, CSV or ShareGPT4V "
            "JSON), whose rows the cache is indexed by; tar shards have no fixed rows."
        )
    records = read_records(config.train_data, config.images_root)
    check_images_exist(records, config.train_data)

    state = PartialState(cpu=not torch.cuda.is_available())  # processes, not training: no Accelerator needed
    with writing_alone(output, enabled=state.is_main_process):
        state.wait_for_everyone()
        return _compute_cache(config, records, state)


@contextmanager
def writing_alone(output: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of `output` (`.NAME.cache-features.lock` beside it, removed after) while one `cache-features`
    writes it; refuse, before anything is written, when another one holds it."""
    if not enabled:
        yield
        return
    output = output.resolve()  # `--output .` has a name, and a folder beside it, only so
    lock = output.parent / f".{output.name}.cache-features.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a")  # held until the cache is done
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FileExistsError(
                f"--output {output}: another `longclip cache-features` is writing it; wait until it ends and run "
                "this command again, or choose another --output."
            ) from None
        if lock.exists() and lock.stat().st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the lock file its last holder removed: take the new one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def _compute_cache(config: CacheConfig, records, state) -> Path:
    """`cache_features` once no other run writes `config.output`."""
    from accelerate.utils import set_seed

    output = Path(config.output)
    stored = existing_cache(output, config.overwrite)  # read again: it cannot change now
    set_seed(config.seed)
    model, preprocess, model_cfg = build_model(TrainConfig(model=config.model, pretrained=config.pretrained))
    image_tower = model.visual.requires_grad_(False).eval()
    weights = {f"visual.{key}": value for key, value in image_tower.state_dict().items()}
    identity = cache_identity(config, model_cfg, preprocess, weights, len(records))
    del model, weights  # the text tower
    root = images_root(config)
    moved = False
    if stored is not None and not config.overwrite:
        check_same_cache(stored, identity, output)  # in every process, before any of them writes
        moved = check_images_root(stored, root, output)
    state.wait_for_everyone()
    # Every check has passed: only now does --overwrite set the earlier cache aside (removed once this one is
    # complete, put back if computing it fails).
    with replace_when_done(output, cache_files, enabled=config.overwrite and state.is_main_process):
        if state.is_main_process and (stored is None or config.overwrite or moved or stored.get("complete")):
            output.mkdir(parents=True, exist_ok=True)
            for name in shard_files(output) if moved else []:  # computed from the images under another root
                (output / name).unlink()
            description = {**identity, "images_root": root, "complete": False}
            atomic_write(output / CACHE_FILE, json.dumps(description, indent=1) + "\n")
        state.wait_for_everyone()

        images = CaptionDataset(records, SampleBuilder(preprocess, tokenize=None))
        _compute_shards(image_tower.to(state.device), images, identity, config, output, state)
        state.wait_for_everyone()
        if state.is_main_process:
            _finish(identity, root, output)
        state.wait_for_everyone()
    return output


def _pending_shards(identity: dict, images: CaptionDataset, output: Path, rank: int, processes: int) -> list[int]:
    """This process's shards that are not on disk intact, or that skipped an image which can now be read (a
    damaged one is removed, to be computed again, and so is what a killed run left of one half written)."""
    pending = []
    for number in range(rank, shard_count(identity), processes):
        path = output / shard_name(number)
        for unfinished in output.glob(f".{path.name}.*.tmp"):  # `atomic_output`'s staging folders
            shutil.rmtree(unfinished, ignore_errors=True)
        if path.exists():
            try:
                _, skipped = read_feature_shard(path, identity, number)
                readable = [name for row, name, _ in skipped if _readable(images, row)]
                if not readable:
                    continue
                logger.warning(
                    "%s: %d image(s) it skipped can now be read (e.g. %s): computed again", path, len(readable),
                    readable[0],
                )  # fmt: skip
            except DamagedCache as problem:
                logger.warning("%s: computed again", problem)
            path.unlink()
        pending.append(number)
    return pending


def _readable(images: CaptionDataset, position: int) -> bool:
    try:
        images.load(position)
    except UnusableSample:
        return False
    return True


@torch.no_grad()
def _compute_shards(image_tower: nn.Module, images: CaptionDataset, identity: dict, config, output: Path, state):
    pending = _pending_shards(identity, images, output, state.process_index, state.num_processes)
    positions = [position for number in pending for position in shard_rows(identity, number)]
    loader = DataLoader(
        _ImagesToCache(images, positions, images.builder.transform),
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=_collate_images,
    )
    dtype = DTYPES[identity["dtype"]]
    no_rows = torch.zeros(0, identity["dim"], dtype=dtype)  # a shard whose every image was unreadable
    autocast = torch.autocast(  # as accelerate runs the live image tower under --mixed-precision
        state.device.type, dtype=DTYPES.get(config.mixed_precision), enabled=config.mixed_precision != "no"
    )
    open_shards = {number: {"features": [], "indices": [], "skipped": []} for number in pending}
    description = f"image features ({len(pending)} shards)"
    with tqdm(
        total=len(positions), unit="image", desc=description, disable=not state.is_local_main_process
    ) as progress:
        for batch in loader:
            features = []
            if batch["pixels"] is not None:
                with autocast:
                    features = F.normalize(image_tower(batch["pixels"].to(state.device)), dim=-1)
                features = features.to("cpu", dtype)
            for position, row in zip(batch["positions"], features, strict=True):
                shard = open_shards[position // identity["shard_size"]]
                shard["indices"].append(position)
                shard["features"].append(row)
            for skip in batch["skipped"]:
                open_shards[skip[0] // identity["shard_size"]]["skipped"].append(skip)
            for number in [n for n, shard in open_shards.items() if _is_full(shard, identity, n)]:
                shard = open_shards.pop(number)
                rows = torch.stack(shard["features"]) if shard["features"] else no_rows
                write_shard(output / shard_name(number), rows, shard["indices"], shard["skipped"], identity, number)
            progress.update(len(batch["positions"]) + len(batch["skipped"]))


def _is_full(shard: dict, identity: dict, number: int) -> bool:
    return len(shard["indices"]) + len(shard["skipped"]) == len(shard_rows(identity, number))


def _finish(identity: dict, root: str, output: Path) -> None:
    """Check every shard, list the skipped images and mark the cache complete."""
    sizes, skipped, features = {}, {}, 0
    for number in range(shard_count(identity)):
        path = output / shard_name(number)
        indices, shard_skipped = read_feature_shard(path, identity, number)
        sizes[path.name] = path.stat().st_size
        features += len(indices)
        skipped.update({name: reason for _, name, reason in shard_skipped})
    if not features:
        name, reason = next(iter(skipped.items()))
        raise ValueError(
            f"{identity['train_data']}: none of its {identity['records']} images can be read (e.g. {name}: {reason}); "
            "nothing to cache. Check the images, or --images-root, and run the command again (it reads the skipped "
            "images again)."
        )
    summary = write_skipped(skipped, output)
    found = {"complete": True, "shards": sizes, "features": features, "skipped": len(skipped)}
    complete = {**identity, "images_root": root, **found}
    atomic_write(output / CACHE_FILE, json.dumps(complete, indent=1) + "\n")
    if summary:
        print(summary)


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CacheConfig("", "", "", None)
    parser.add_argument("--model", required=True, help="open_clip model name or model-config JSON, as for train")
    parser.add_argument(
        "--pretrained",
        required=True,
        help="open_clip pretrained tag, a .pt/.safetensors checkpoint or a Hugging Face CLIP folder, as for train "
        "('none': random weights, from --seed)",
    )
    parser.add_argument("--train-data", required=True, help="the JSONL / CSV / ShareGPT4V JSON file train will read")
    parser.add_argument("--images-root", help="folder relative image paths start from (default: the file's)")
    parser.add_argument("--output", required=True, help="the cache folder (resumed when it holds this cache)")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=defaults.dtype,
        help="precision of the stored features: fp32 (default: training reads what a live image tower gives) or "
        "fp16 / bf16 (half the disk)",
    )
    for name, minimum, help_text in (
        ("shard_size", 1, "rows per shard file, the unit of resuming"),
        ("batch_size", 1, "images per image-tower pass (per process)"),
        ("workers", 0, "data-loader workers decoding images (per process)"),
    ):
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=integer(minimum),
            default=default,
            help=f"{help_text} (default {default})",
        )
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=defaults.mixed_precision)
    parser.add_argument("--seed", type=integer(0, 2**32 - 1), default=defaults.seed, help="for --pretrained none")
    parser.add_argument("--overwrite", action="store_true", help="replace another cache in --output")


def run_cache_features(args: argparse.Namespace) -> str:
    values = {key: getattr(args, key) for key in CacheConfig.__dataclass_fields__ if hasattr(args, key)}
    if values.get("pretrained") == "none":
        values["pretrained"] = None
    try:
        output = cache_features(CacheConfig(**values))
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk in its own words
        if not from_full_disk(error):
            raise
        kept = "" if values.get("overwrite") else " (it keeps the shards already written)"
        raise DiskFull(Path(values["output"]), f"run the same command again{kept}") from None
    stored = read_complete_cache(output)
    size = sum(stored["shards"].values())
    return (
        f"cached the image features of {stored['features']:,} images in {output} ({len(stored['shards'])} shards, "
        f"{size / 1e6:,.1f} MB); train on them with `longclip train ... --image-features {output}`"
    )
