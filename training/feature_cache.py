"""The image-feature cache (`longclip cache-features` writes it, `longclip train --image-features` reads it): its
format, what made it, and the checks a run makes before training on it.

Stable Diffusion uses only the text tower of a CLIP. Fine-tuning it needs the image tower for one thing, the image
features the loss compares captions with, and a frozen tower gives the same features every epoch. So they are
computed once and cached, and a text-only run reads them: no image-tower weights, activations or pixels in memory
(1.8 B parameters fewer at ViT-bigG size), one image-tower pass per image instead of one per epoch.

A cache folder:
    cache.json                   what made it (model, image-tower fingerprint, preprocessing, annotation file,
                                 dtype), the folder its images were read from and, once complete, the size of
                                 every shard
    features-00000.safetensors   `features` [n, D] (normalised, as training uses them) and `indices` [n] (rows of
                                 the annotation file) of `shard_size` consecutive rows; its metadata holds the
                                 rows' range, the images among them that could not be read (name, reason) and
                                 the id of the cache it belongs to
    skipped_images.txt           those images, `name: reason`
A training run checks the cache against itself and refuses it, saying what differs, when it was made with another
model, other image-tower weights or another annotation file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from longclip_diffusers.atomic import atomic_output
from longclip_diffusers.checkpoint import CheckpointError
from longclip_diffusers.convert import DTYPES
from longclip_diffusers.weights_files import safetensors_header
from longclip_diffusers.writing import SAFETENSORS_DTYPES

from .images import UnusableSample
from .samples import CaptionDataset, SampleBuilder
from .tar_shards import is_shard_pattern

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
# What each field of a description holds; a complete cache's has `_COMPLETE`'s too.
_SHAPE = {
    "model": str, "model_config": dict, "pretrained": (str, type(None)), "seed": (int, type(None)),
    "image_tower_sha256": str, "preprocess": str, "mixed_precision": str, "train_data": str,
    "annotations_sha256": str, "records": int, "dim": int, "dtype": str, "shard_size": int, "complete": bool,
}  # fmt: skip
_COMPLETE = {"shards": dict, "features": int, "skipped": int}
_COUNTS = ("records", "dim", "shard_size")  # at least 1
_KIND_NAMES = {
    str: "a string", dict: "an object", int: "a whole number", bool: "true or false",
    (str, type(None)): "a string or null", (int, type(None)): "a whole number or null",
}  # fmt: skip
# Fields that say what computing a cache found or read, not what its features depend on.
_FOUND = ("complete", "shards", "features", "skipped", "images_root")


class CacheMismatch(ValueError):
    """A cache made by something else than the run reading it; the message says what differs."""


class DamagedCache(ValueError):
    """A cache (or one shard of it) that cannot be read as it was written; the message names the file."""


class NotACache(DamagedCache):
    """A `cache.json` that is not the description of an image-feature cache (another tool's file)."""


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


def cache_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def identity_of(stored: dict) -> dict:
    """What made a cache, from its description (without what computing it found)."""
    return {key: value for key, value in stored.items() if key not in _FOUND}


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
        raise NotACache(f"{path}: not the description of an image-feature cache ({FORMAT}).")
    problem = _description_problem(stored)
    if problem:
        raise DamagedCache(
            f"{path}: {problem} (edited by hand?); make the cache again (`longclip cache-features ... --overwrite`)."
        )
    return stored


def _description_problem(stored: dict) -> str | None:
    """What is wrong with the fields of a cache description, if anything."""
    shape = {**_SHAPE, **(_COMPLETE if stored.get("complete") else {})}
    for key, kind in shape.items():
        if key not in stored:
            return f"lacks {key!r}"
        if not isinstance(stored[key], kind) or (kind is int and isinstance(stored[key], bool)):
            return f"{key!r} holds {json.dumps(stored[key])[:40]}, not {_KIND_NAMES[kind]}"
    small = [key for key in _COUNTS if stored[key] < 1]
    if small:
        return f"{small[0]!r} is {stored[small[0]]}, not a count"
    if stored["dtype"] not in DTYPES:
        return f"'dtype' is {stored['dtype']!r}, not one of {', '.join(DTYPES)}"
    if stored["complete"] and not all(isinstance(size, int) for size in stored["shards"].values()):
        return "'shards' does not map each shard file to its size"
    return None


# ----------------------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------------------


def shard_name(number: int) -> str:
    return f"{_SHARD_PREFIX}{number:05d}.safetensors"


def shard_files(folder: Path) -> list[str]:
    """The names of the shard files in `folder`, in order."""
    return sorted(path.name for path in folder.glob(f"{_SHARD_PREFIX}*.safetensors"))


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


def read_feature_shard(path: Path, identity: dict, number: int) -> tuple[torch.Tensor, list[list]]:
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


def check_cache_for_run(config, model_cfg: dict) -> dict:
    """The description of the cache `config.image_features`, after refusing one made with another model
    (`model_cfg`: the open_clip config of --model) or another annotation file than the run's (the image tower is
    checked once its weights are read: `check_image_tower`)."""
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


def check_image_tower(config, stored: dict, image_tower: dict[str, torch.Tensor]) -> None:
    """Refuse the cache `stored` (its description) when it was made with another image tower than the one of
    --pretrained (`image_tower`: its tensors, empty for a checkpoint without one)."""
    folder = Path(config.image_features)
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
    the row has none. `stored`: its description, when already read (`read_complete_cache`)."""

    def __init__(self, folder: str | os.PathLike, stored: dict | None = None):
        self.folder = Path(folder)
        self.identity = identity_of(stored or read_complete_cache(self.folder))
        rows = self.identity["records"]
        self.shard = torch.full((rows,), -1, dtype=torch.int32)
        self.row = torch.zeros(rows, dtype=torch.int64)
        self.reasons: dict[int, str] = {}
        for number in range(shard_count(self.identity)):
            indices, skipped = read_feature_shard(self.folder / shard_name(number), self.identity, number)
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
