"""Training samples from caption records: the short caption of each, the (image, long, short) tensors a model takes,
a map-style dataset that replaces an unusable image by the next readable one, and batch collation."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import UnusableSample, read_image
from .records import Record

ShortCaptionMode = Literal["first-sentence", "debias"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


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
    """Map-style dataset over records; a missing or unreadable image is replaced by the next readable record.

    Each sample lists the `(image, reason)` of the records it replaced under `skipped`: it travels in the batch,
    so the names reach the training process from data-loader workers too.
    """

    def __init__(self, records: Sequence[Record], builder: SampleBuilder):
        self.records = records  # a RecordTable stays packed: workers share it rather than copy it
        self.builder = builder
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, position: int):
        """What the builder's transform takes for row `position` (its image); `UnusableSample` when unusable."""
        return read_image(self.records[position])

    def __getitem__(self, index: int) -> dict:
        skipped = []
        for offset in range(len(self.records)):
            position = (index + offset) % len(self.records)
            record = self.records[position]
            try:
                image = self.load(position)
            except UnusableSample as problem:
                skipped.append((str(record.image), problem.reason))
                continue
            return {**self.builder(image, record, index, self.epoch), "skipped": skipped}
        raise ValueError(f"None of the {len(self.records)} images can be read ({skipped[0][0]}: {skipped[0][1]}).")


def collate(samples: list[dict]) -> dict:
    """The samples' tensors stacked, every skipped sample they carry (a name-only sample adds no tensors), and
    their stream position if streamed."""
    usable = [s for s in samples if "image" in s]
    keys = ("image", "long_text", "short_text") if usable else ()
    batch = {
        **{key: torch.stack([s[key] for s in usable]) for key in keys},
        "skipped": [entry for s in samples for entry in s["skipped"]],
    }
    if "position" in samples[-1]:  # a batch comes from one data-loader worker: its last sample's is the furthest
        batch["position"] = samples[-1]["position"]
    return batch
