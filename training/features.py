"""Image features computed once (`longclip cache-features`), and text-only training on them (`longclip train
--image-features`).

Stable Diffusion uses only the text tower of a CLIP. Fine-tuning it needs the image tower for one thing, the image
features the loss compares captions with, and a frozen tower gives the same features every epoch. So they are
computed once and cached, and a text-only run reads them: no image-tower weights, activations or pixels in memory
(1.8 B parameters fewer at ViT-bigG size), one image-tower pass per image instead of one per epoch.

A cache folder:
    cache.json                   what made it (model, image-tower fingerprint, preprocessing, annotation file,
                                 dtype) and, once complete, the size of every shard
    features-00000.safetensors   `features` [n, D] (normalised, as training uses them) and `indices` [n] (rows of
                                 the annotation file) of `shard_size` consecutive rows; its metadata holds the
                                 rows' range, the images among them that could not be read (name, reason) and
                                 the id of the cache it belongs to
    skipped_images.txt           those images, `name: reason`
Every process computes shards of its own and writes each one atomically, so a killed run keeps its finished shards
and the same command computes the rest. A training run checks the cache against itself and refuses it, saying what
differs, when it was made with another model, other image-tower weights or another annotation file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from longclip_diffusers.arguments import integer
from longclip_diffusers.atomic import atomic_output, atomic_write, replace_when_done
from longclip_diffusers.convert import DTYPES
from longclip_diffusers.formats import CheckpointError, safetensors_header
from longclip_diffusers.writing import SAFETENSORS_DTYPES

from .data import (
    SKIPPED_FILE,
    CaptionDataset,
    SampleBuilder,
    UnusableSample,
    check_images_exist,
    is_shard_pattern,
    read_records,
    write_skipped,
)

logger = logging.getLogger(__name__)
FORMAT = "longclip-image-features/1"
CACHE_FILE = "cache.json"
_SHARD_PREFIX = "features-"
# What each identity field is to a user, for messages naming what differs.
_FIELDS = {
    "format": "cache format",
    "model_config": "--model",
    "pretrained": "--pretrained",
    "seed": "--seed (of random weights)",
    "image_tower_sha256": "image-tower weights",
    "preprocess": "image preprocessing",
    "mixed_precision": "--mixed-precision",
    "train_data": "--train-data",
    "annotations_sha256": "annotation file content",
    "records": "annotation rows",
    "dtype": "--dtype",
    "shard_size": "--shard-size",
}


class CacheMismatch(ValueError):
    """A cache made by something else than the run reading it; the message says what differs."""


class DamagedCache(ValueError):
    """A cache (or one shard of it) that cannot be read as it was written; the message names the file."""


# ----------------------------------------------------------------------------------------------------------
# What made a cache
# ----------------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A fingerprint of named tensors: their names, shapes and float32 values, in name order (so a checkpoint
    stored in half precision fingerprints as the float32 model it loads into)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        values = tensors[name].detach().to("cpu", torch.float32).contiguous().reshape(-1)
        digest.update(f"{name}{list(tensors[name].shape)}".encode())
        digest.update(values.view(torch.uint8).numpy())
    return digest.hexdigest()


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


def cache_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _identity_of(stored: dict) -> dict:
    return {key: value for key, value in stored.items() if key not in ("complete", "shards", "features", "skipped")}


def differences(stored: dict, identity: dict) -> list[str]:
    """The identity fields in which a stored cache differs from `identity`, as a user knows them."""
    return [label for key, label in _FIELDS.items() if stored.get(key) != identity.get(key)]


def read_cache_file(folder: Path) -> dict | None:
    """The `cache.json` of `folder`; None when there is none. A file of something else is refused."""
    path = folder / CACHE_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DamagedCache(f"{path}: unreadable ({error}); make the cache again with --overwrite.") from None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise DamagedCache(f"{path}: not the description of an image-feature cache ({FORMAT}).")
    return stored


# ----------------------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------------------


def shard_name(number: int) -> str:
    return f"{_SHARD_PREFIX}{number:05d}.safetensors"


def shard_count(identity: dict) -> int:
    return math.ceil(identity["records"] / identity["shard_size"])


def shard_rows(identity: dict, number: int) -> range:
    size = identity["shard_size"]
    return range(number * size, min((number + 1) * size, identity["records"]))


def write_shard(
    path: Path, features: torch.Tensor, indices: list[int], skipped: list[list], identity: dict, number: int
) -> None:
    rows = shard_rows(identity, number)
    metadata = {
        "cache_id": cache_id(identity),
        "rows": f"{rows.start}:{rows.stop}",
        "skipped": json.dumps(skipped),
    }
    tensors = {"features": features.contiguous(), "indices": torch.tensor(indices, dtype=torch.long)}
    with atomic_output(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_shard(path: Path, identity: dict, number: int) -> tuple[torch.Tensor, list[list]]:
    """The `indices` and skipped images ([row, name, reason]) of an intact shard of the cache `identity`;
    `DamagedCache` says what is wrong with any other file."""
    if not path.is_file():
        raise DamagedCache(f"{path}: missing")
    try:
        tensors, data_start = safetensors_header(path)
        expected = data_start + max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
    except (CheckpointError, KeyError, TypeError, IndexError):
        raise DamagedCache(f"{path}: unreadable (not a complete safetensors file)") from None
    if expected != path.stat().st_size:
        raise DamagedCache(f"{path}: holds {path.stat().st_size:,} bytes, {expected:,} were written (truncated)")
    rows = shard_rows(identity, number)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            indices = handle.get_tensor("indices")
            shape = handle.get_slice("features").get_shape()
            dtype = handle.get_slice("features").get_dtype()
        skipped = json.loads(metadata.get("skipped", "null"))
    except (SafetensorError, OSError, ValueError) as error:
        raise DamagedCache(f"{path}: unreadable ({error})") from None
    if metadata.get("cache_id") != cache_id(identity) or metadata.get("rows") != f"{rows.start}:{rows.stop}":
        raise DamagedCache(f"{path}: belongs to another cache than {path.parent / CACHE_FILE} describes")
    listed = sorted([*indices.tolist(), *(row for row, _, _ in skipped)]) if isinstance(skipped, list) else None
    torch_dtype = DTYPES[identity["dtype"]]
    if listed != list(rows) or shape != [len(indices), identity["dim"]] or dtype != SAFETENSORS_DTYPES[torch_dtype]:
        raise DamagedCache(f"{path}: does not hold the rows {rows.start}..{rows.stop - 1} it should")
    return indices, skipped


# ----------------------------------------------------------------------------------------------------------
# Computing a cache
# ----------------------------------------------------------------------------------------------------------


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


def existing_cache(output: Path) -> dict | None:
    """The cache already in `output`, if any; refuses an `output` that is a file or a folder of other files."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output}: is a file; the cache is a folder.")
    stored = read_cache_file(output) if output.is_dir() else None
    others = [p for p in output.iterdir() if not p.name.endswith(".tmp")] if output.is_dir() else []  # ours, cut short
    if stored is None and others:
        raise FileExistsError(
            f"--output {output}: a folder of other files, not an image-feature cache; choose a new or empty folder."
        )
    return stored


def check_same_cache(stored: dict, identity: dict, output: Path) -> None:
    """Refuse to add to a cache made by something else (only a cache made the same way is resumed)."""
    different = differences(_identity_of(stored), identity)
    if different:
        raise FileExistsError(
            f"--output {output}: holds another image-feature cache (made with --model {stored.get('model')}, "
            f"--pretrained {stored.get('pretrained')}, --train-data {stored.get('train_data')}; it differs in "
            f"{', '.join(different)}); choose another --output, or pass --overwrite to replace it."
        )


def cache_files(output: Path) -> list[str]:
    """The files of the cache in `output` (other files there are not the cache's)."""
    shards = [path.name for path in output.glob(f"{_SHARD_PREFIX}*.safetensors")]
    return sorted(shards) + [name for name in (SKIPPED_FILE, CACHE_FILE) if (output / name).exists()]


def cache_features(config: CacheConfig) -> Path:
    """Compute (or finish) the cache `config.output`: every row's normalised image features; return the folder."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from .train import TrainConfig, build_model  # train.py reads caches with this module

    if config.dtype not in DTYPES:
        raise ValueError(f"--dtype {config.dtype!r}: choose one of {', '.join(DTYPES)}.")
    output = Path(config.output)
    stored = existing_cache(output)
    if is_shard_pattern(config.train_data):
        raise ValueError(
            f"--train-data {config.train_data}: cache-features reads an annotation file (JSONL, CSV or ShareGPT4V "
            "JSON), whose rows the cache is indexed by; tar shards have no fixed rows."
        )
    records = read_records(config.train_data, config.images_root)
    check_images_exist(records, config.train_data)

    state = PartialState(cpu=not torch.cuda.is_available())  # processes, not training: no Accelerator needed
    set_seed(config.seed)
    model, preprocess, model_cfg = build_model(TrainConfig(model=config.model, pretrained=config.pretrained))
    image_tower = model.visual.requires_grad_(False).eval()
    weights = {f"visual.{key}": value for key, value in image_tower.state_dict().items()}
    identity = cache_identity(config, model_cfg, preprocess, weights, len(records))
    del model, weights  # the text tower
    if stored is not None and not config.overwrite:
        check_same_cache(stored, identity, output)  # in every process, before any of them writes
    state.wait_for_everyone()
    # Every check has passed: only now does --overwrite set the earlier cache aside (removed once this one is
    # complete, put back if computing it fails).
    with replace_when_done(output, cache_files, enabled=config.overwrite and state.is_main_process):
        if state.is_main_process and (stored is None or config.overwrite or stored.get("complete")):
            output.mkdir(parents=True, exist_ok=True)
            atomic_write(output / CACHE_FILE, json.dumps({**identity, "complete": False}, indent=1) + "\n")
        state.wait_for_everyone()

        images = CaptionDataset(records, SampleBuilder(preprocess, tokenize=None))
        _compute_shards(image_tower.to(state.device), images, identity, config, output, state)
        state.wait_for_everyone()
        if state.is_main_process:
            _finish(identity, output)
        state.wait_for_everyone()
    return output


def _pending_shards(identity: dict, output: Path, rank: int, processes: int) -> list[int]:
    """This process's shards that are not on disk intact (a damaged one is removed, to be computed again, and so
    is what a killed run left of one half written)."""
    pending = []
    for number in range(rank, shard_count(identity), processes):
        path = output / shard_name(number)
        for unfinished in output.glob(f".{path.name}.*.tmp"):  # `atomic_output`'s staging folders
            shutil.rmtree(unfinished, ignore_errors=True)
        if path.exists():
            try:
                read_shard(path, identity, number)
                continue
            except DamagedCache as problem:
                logger.warning("%s: computed again", problem)
                path.unlink()
        pending.append(number)
    return pending


@torch.no_grad()
def _compute_shards(image_tower: nn.Module, images: CaptionDataset, identity: dict, config, output: Path, state):
    pending = _pending_shards(identity, output, state.process_index, state.num_processes)
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


def _finish(identity: dict, output: Path) -> None:
    """Check every shard, list the skipped images and mark the cache complete."""
    sizes, skipped, features = {}, {}, 0
    for number in range(shard_count(identity)):
        path = output / shard_name(number)
        indices, shard_skipped = read_shard(path, identity, number)
        sizes[path.name] = path.stat().st_size
        features += len(indices)
        skipped.update({name: reason for _, name, reason in shard_skipped})
    if not features:
        name, reason = next(iter(skipped.items()))
        raise ValueError(
            f"{identity['train_data']}: none of its {identity['records']} images can be read (e.g. {name}: {reason}); "
            "nothing to cache. Check the images, or --images-root."
        )
    summary = write_skipped(skipped, output)
    complete = {**identity, "complete": True, "shards": sizes, "features": features, "skipped": len(skipped)}
    atomic_write(output / CACHE_FILE, json.dumps(complete, indent=1) + "\n")
    if summary:
        print(summary)


# ----------------------------------------------------------------------------------------------------------
# Reading a cache for training
# ----------------------------------------------------------------------------------------------------------


def read_complete_cache(folder: str | os.PathLike) -> dict:
    """The description of the complete cache in `folder`, after checking every shard is there at its size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--image-features {folder}: no such folder; make it with `longclip cache-features`.")
    stored = read_cache_file(folder)
    if stored is None:
        raise FileNotFoundError(
            f"--image-features {folder}: not an image-feature cache (no {CACHE_FILE}); make one with "
            "`longclip cache-features`."
        )
    if not stored.get("complete"):
        done = sum((folder / shard_name(n)).is_file() for n in range(shard_count(stored)))
        raise DamagedCache(
            f"--image-features {folder}: incomplete ({done} of {shard_count(stored)} shards); finish it by running "
            "the same `longclip cache-features` command again (it keeps the shards already done)."
        )
    for name, size in stored["shards"].items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            found = "is missing" if actual is None else f"holds {actual:,} bytes, {size:,} were written"
            raise DamagedCache(
                f"--image-features {folder}: {name} {found}; run the same `longclip cache-features` command again "
                "to compute it again."
            )
    return stored


def check_cache_for_run(config) -> dict:
    """The cache `config.image_features`, after refusing one made with another model or another annotation file
    than the run's (the image tower is checked once its weights are read: `check_image_tower`)."""
    from .train import open_clip_config  # train.py reads caches with this module

    folder = Path(config.image_features)
    if "text" in config.freeze:
        raise ValueError(
            "--freeze text with --image-features: a run on cached image features trains the text tower only, "
            "so nothing would be trained; leave --freeze text out."
        )
    stored = read_complete_cache(folder)
    if is_shard_pattern(config.train_data):
        raise ValueError(
            f"--image-features {folder}: a cache is indexed by the rows of an annotation file; pass that file as "
            f"--train-data ({stored['train_data']}), not tar shards."
        )
    _, model_cfg = open_clip_config(config.model)
    if json.loads(json.dumps(model_cfg)) != stored["model_config"]:
        raise CacheMismatch(
            f"--image-features {folder}: holds the image features of --model {stored['model']}, not of --model "
            f"{config.model} (another architecture); train with --model {stored['model']}, or cache the features of "
            "this model with `longclip cache-features`."
        )
    if not Path(config.train_data).is_file():
        raise FileNotFoundError(f"--train-data {config.train_data}: no such annotation file.")
    if file_sha256(config.train_data) != stored["annotations_sha256"]:
        raise CacheMismatch(
            f"--image-features {folder}: was made from another version of --train-data {config.train_data} (its "
            f"content changed since, or the cache is of {stored['train_data']}): its rows no longer match the "
            "cached features. Cache the features of this file again (`longclip cache-features ... --overwrite`)."
        )
    return stored


def check_image_tower(config, image_tower: dict[str, torch.Tensor]) -> None:
    """Refuse a cache made with another image tower than the one of --pretrained (`image_tower`: its tensors,
    empty for a checkpoint without one)."""
    folder = Path(config.image_features)
    stored = read_complete_cache(folder)
    made_with = (
        f"--pretrained {stored['pretrained']}" if stored["pretrained"] else f"random weights (--seed {stored['seed']})"
    )
    if stored["pretrained"] is None or config.pretrained is None:  # random weights are the same for the same seed
        same = stored["pretrained"] is None and config.pretrained is None and stored["seed"] == config.seed
    elif not image_tower:
        raise CacheMismatch(
            f"--pretrained {config.pretrained}: has no image tower to check against the one {folder} was made with "
            f"({made_with}); pass the checkpoint the cache was made from."
        )
    else:
        same = tensors_sha256(image_tower) == stored["image_tower_sha256"]
    if not same:
        run = f"--pretrained {config.pretrained}" if config.pretrained else f"random weights (--seed {config.seed})"
        raise CacheMismatch(
            f"--image-features {folder}: holds the features of another image tower ({made_with}) than this run's "
            f"({run}); train from the weights the cache was made with, or cache the features of these weights."
        )


class FeatureCache:
    """A complete cache opened for training: each row's features, read from its shard when needed, or the reason
    the row has none."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.identity = _identity_of(read_complete_cache(self.folder))
        rows = self.identity["records"]
        self.shard = torch.full((rows,), -1, dtype=torch.int32)
        self.row = torch.zeros(rows, dtype=torch.int64)
        self.reasons: dict[int, str] = {}
        for number in range(shard_count(self.identity)):
            indices, skipped = read_shard(self.folder / shard_name(number), self.identity, number)
            self.shard[indices] = number
            self.row[indices] = torch.arange(len(indices))
            self.reasons.update({row: reason for row, _, reason in skipped})
        self._handles: dict[tuple[int, int], object] = {}

    def __len__(self) -> int:
        return self.identity["records"]

    def features(self, position: int) -> torch.Tensor:
        """Row `position`'s image features (float32); `UnusableSample` with the reason when its image could not
        be read."""
        number = int(self.shard[position])
        if number < 0:
            raise UnusableSample(self.reasons[position])
        key = (os.getpid(), number)  # one handle per process: data-loader workers open their own
        if key not in self._handles:
            self._handles[key] = safe_open(self.folder / shard_name(number), framework="pt")
        return self._handles[key].get_slice("features")[int(self.row[position])].float()


class CachedCaptionDataset(CaptionDataset):
    """`CaptionDataset` with each image's cached features in place of its pixels: the same samples, an image that
    could not be read replaced by the next readable one, as in training on the images."""

    def __init__(self, records, builder: SampleBuilder, cache: FeatureCache):
        super().__init__(records, builder)
        if len(cache) != len(self.records):
            raise DamagedCache(f"{cache.folder}: holds {len(cache)} rows, the annotation file {len(self.records)}.")
        self.cache = cache

    def load(self, position: int) -> torch.Tensor:
        return self.cache.features(position)


def cached_features(features: torch.Tensor) -> torch.Tensor:
    """The image transform of a text-only run: the cached features are used as they are."""
    return features


# ----------------------------------------------------------------------------------------------------------
# The text tower alone
# ----------------------------------------------------------------------------------------------------------


class TextCLIP(nn.Module):
    """An open_clip `CLIP` without its image tower, for training on cached image features.

    Built by open_clip's own text-tower builder from the model config, with `CLIP`'s parameter names
    (`token_embedding`, `positional_embedding`, `transformer`, `ln_final`, `text_projection`, `logit_scale`), so
    checkpoints, `encode_text_cut`, stretching and exports treat it as they treat `CLIP`. `encode_image` takes the
    cached features, which `cache-features` stored normalised.
    """

    def __init__(self, model_cfg: dict):
        super().__init__()
        from open_clip.model import CLIPTextCfg, _build_text_tower

        text_cfg = CLIPTextCfg(**model_cfg["text_cfg"])
        if text_cfg.hf_model_name or text_cfg.embed_cls:
            raise ValueError("Training on cached image features supports CLIP's own text transformer only.")
        text = _build_text_tower(model_cfg["embed_dim"], text_cfg, model_cfg.get("quick_gelu", False))
        self.transformer = text.transformer
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def encode_image(self, image_features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The cached image features, as they are (normalised when cached)."""
        return image_features


def pretrained_file(name: str, tag: str) -> str:
    """The weights file of open_clip's pretrained tag `tag` for model `name` (downloaded once, by open_clip)."""
    import open_clip

    config = open_clip.get_pretrained_cfg(name, tag)
    if not config:
        raise ValueError(
            f"--pretrained {tag!r}: not a pretrained tag of {name} (its tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}), nor an existing file or folder."
        )
    return open_clip.download_pretrained(config)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


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
    output = cache_features(CacheConfig(**values))
    stored = read_complete_cache(output)
    size = sum(stored["shards"].values())
    return (
        f"cached the image features of {stored['features']:,} images in {output} ({len(stored['shards'])} shards, "
        f"{size / 1e6:,.1f} MB); train on them with `longclip train ... --image-features {output}`"
    )
