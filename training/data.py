"""Training data: (image, long caption, short caption) from JSONL / CSV, ShareGPT4V JSON or webdataset shards.

Missing or corrupt images never stop an epoch: the sample is replaced by the next readable one and counted,
so every batch keeps its size (all processes gather equal batches) and the count is reported at the end.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset, get_worker_info

ShortCaptionMode = Literal["first-sentence", "debias"]
SHAREGPT4V_HELD_OUT = 1000  # the ShareGPT4V-1k test split: the JSON's first 1,000 entries
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Record:
    image: Path
    caption: str
    short_caption: str | None = None


# ----------------------------------------------------------------------------------------------------------
# Short captions
# ----------------------------------------------------------------------------------------------------------


def first_sentence(caption: str) -> str:
    """The reference's short caption: `caption.split(". ")[0]`."""
    return caption.split(". ")[0]


def debias_short_caption(caption: str, rng: random.Random) -> str:
    """DeBias-CLIP-style short caption: drop the leading summary sentence, keep a random subset of the rest.

    The kept sentences stay in order; a one-sentence caption is returned as it is.
    """
    sentences = [s for s in _SENTENCE_END.split(caption.strip()) if s]
    if len(sentences) < 2:
        return caption
    rest = sentences[1:]
    keep = sorted(rng.sample(range(len(rest)), rng.randint(1, len(rest))))
    return " ".join(rest[i] for i in keep)


def short_caption_for(record: Record, mode: ShortCaptionMode, rng: random.Random) -> str:
    if record.short_caption:
        return record.short_caption
    if mode == "first-sentence":
        return first_sentence(record.caption)
    if mode == "debias":
        return debias_short_caption(record.caption, rng)
    raise ValueError(f"Unknown short-caption mode {mode!r}; choose 'first-sentence' or 'debias'.")


# ----------------------------------------------------------------------------------------------------------
# Reading annotation files
# ----------------------------------------------------------------------------------------------------------


def read_records(path: str | Path, images_root: str | Path | None = None) -> list[Record]:
    """Records from a JSONL or CSV file (`image`, `caption`, optional `short_caption`) or a ShareGPT4V JSON.

    Relative image paths are taken from `images_root`, else from the annotation file's folder. From a
    ShareGPT4V JSON the first 1,000 entries (the ShareGPT4V-1k test split) are left out, as published.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file.")
    root = Path(images_root) if images_root else path.parent
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix == ".json":
        rows = [_sharegpt4v_row(entry, path) for entry in json.loads(path.read_text(encoding="utf-8"))]
        rows = rows[SHAREGPT4V_HELD_OUT:]
    else:
        raise ValueError(f"{path}: expected a .jsonl, .csv or ShareGPT4V .json annotation file.")
    records = []
    for number, row in enumerate(rows, start=1):
        if not row.get("image") or not row.get("caption"):
            raise ValueError(f"{path}: row {number} lacks an `image` or `caption` field: {row!r}")
        records.append(Record(root / row["image"], row["caption"], row.get("short_caption") or None))
    if not records:
        raise ValueError(f"{path}: holds no training records.")
    return records


def _sharegpt4v_row(entry: dict, path: Path) -> dict:
    answers = [turn["value"] for turn in entry.get("conversations", []) if turn.get("from") == "gpt"]
    if "image" not in entry or not answers:
        raise ValueError(f"{path}: not a ShareGPT4V entry (needs `image` and a gpt turn): {str(entry)[:200]}")
    return {"image": entry["image"], "caption": answers[0]}


def load_image(path: Path | io.BytesIO) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SampleBuilder:
    """Turns (image, caption, short caption) into tensors: the image transform and tokenizer of the model."""

    transform: Callable[[Image.Image], torch.Tensor]
    tokenize: Callable[[list[str]], torch.Tensor]  # list of texts -> [N, context] ids
    short_mode: ShortCaptionMode = "first-sentence"
    seed: int = 0

    def __call__(self, image: Image.Image, record: Record, key: int, epoch: int) -> dict:
        rng = random.Random(f"{self.seed}:{epoch}:{key}")  # the same short caption on a resumed run
        texts = self.tokenize([record.caption, short_caption_for(record, self.short_mode, rng)])
        return {"image": self.transform(image), "long_text": texts[0], "short_text": texts[1]}


class CaptionDataset(Dataset):
    """Map-style dataset over records; unreadable images are replaced by the next readable record."""

    def __init__(self, records: Sequence[Record], builder: SampleBuilder):
        self.records = list(records)
        self.builder = builder
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        for skipped in range(len(self.records)):
            record = self.records[(index + skipped) % len(self.records)]
            try:
                image = load_image(record.image)
            except (OSError, UnidentifiedImageError, ValueError):
                continue
            sample = self.builder(image, record, index, self.epoch)
            sample["skipped"] = skipped
            return sample
        raise RuntimeError("No readable image in the whole dataset; check the image paths.")


def expand_shards(pattern: str) -> list[str]:
    """`data/shard-{000..099}.tar` -> the 100 shard paths (webdataset's brace notation); `::` separates lists."""
    shards = []
    for part in pattern.split("::"):
        match = re.search(r"\{(\d+)\.\.(\d+)\}", part)
        if not match:
            shards.append(part)
            continue
        first, last = match.group(1), match.group(2)
        for number in range(int(first), int(last) + 1):
            shards.append(part[: match.start()] + str(number).zfill(len(first)) + part[match.end() :])
    return shards


class TarShardDataset(IterableDataset):
    """Streams webdataset-layout tar shards (`KEY.jpg` + `KEY.txt` or `KEY.json` with `caption`).

    Shards are split across processes and data-loader workers; shard order is shuffled per epoch with the
    seed. Unreadable images are skipped and counted on the next sample.
    """

    def __init__(self, shards: Sequence[str], builder: SampleBuilder, rank: int = 0, world_size: int = 1):
        self.shards = list(shards)
        self.builder = builder
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        order = list(self.shards)
        random.Random(f"{self.builder.seed}:{self.epoch}").shuffle(order)
        mine = order[self.rank * workers + worker_id :: self.world_size * workers]
        skipped = 0
        for shard in mine:
            for key, image_bytes, record in _read_shard(shard):
                try:
                    image = load_image(io.BytesIO(image_bytes))
                except (OSError, UnidentifiedImageError, ValueError):
                    skipped += 1
                    continue
                sample = self.builder(image, record, zlib.crc32(key.encode()), self.epoch)
                sample["skipped"], skipped = skipped, 0
                yield sample


def _read_shard(shard: str) -> Iterator[tuple[str, bytes, Record]]:
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            groups.setdefault(key, {})[suffix.lower()] = archive.extractfile(member).read()
    for key, parts in groups.items():
        image = next((parts[s[1:]] for s in IMAGE_SUFFIXES if s[1:] in parts), None)
        if "json" in parts:
            meta = json.loads(parts["json"])
            caption, short = meta.get("caption"), meta.get("short_caption")
        else:
            caption, short = parts.get("txt", b"").decode("utf-8"), None
        if image is not None and caption:
            yield key, image, Record(Path(key), caption, short)


def collate(samples: list[dict]) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "long_text": torch.stack([s["long_text"] for s in samples]),
        "short_text": torch.stack([s["short_text"] for s in samples]),
        "skipped": sum(s["skipped"] for s in samples),
    }
