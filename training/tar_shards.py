"""Webdataset tar shards streamed one sample at a time; a resumed run continues each stream from its
`StreamPosition`."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import IterableDataset, get_worker_info

from .images import UnusableSample, load_image
from .records import IMAGE_SUFFIXES, Record
from .samples import SampleBuilder

DAMAGED_ARCHIVE = "cut short (a damaged archive)"  # the last sample of a tar shard that ends mid-way


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


def is_shard_pattern(train_data: str) -> bool:
    return train_data.endswith(".tar") or "{" in train_data


@dataclass
class StreamPosition:
    """How far one process has consumed its shard streams in an epoch: for each data-loader worker, the shard it
    reads (an index into its own shards) and how many samples of it have been consumed; and the worker whose
    batch came last (the data loader takes batches from its workers in turn)."""

    shards: dict[int, tuple[int, int]] = field(default_factory=dict)
    last_worker: int = -1

    def advance(self, position: tuple[int, int, int]) -> None:
        """Take in a batch's position: (worker, shard, samples of the shard consumed)."""
        worker, shard, samples = position
        self.shards[worker] = (shard, samples)
        self.last_worker = worker

    def state(self) -> dict:
        """As JSON for a checkpoint."""
        shards = {str(worker): list(at) for worker, at in self.shards.items()}
        return {"shards": shards, "last_worker": self.last_worker}

    @classmethod
    def from_state(cls, state: dict) -> StreamPosition:
        shards = {int(worker): (int(at[0]), int(at[1])) for worker, at in state["shards"].items()}
        return cls(shards, int(state["last_worker"]))


class TarShardDataset(IterableDataset):
    """Streams webdataset-layout tar shards (`KEY.jpg` + `KEY.txt` or `KEY.json` with `caption`), one sample at a
    time: memory holds the sample being read, never the shard.

    Shards are split across processes first, then their data-loader workers (every process reads a shard of
    its own once there are as many shards as processes); shard order is shuffled per epoch with the seed.
    Unusable samples are skipped and listed (`shard:key`, reason) under `skipped` of the next sample (of a
    name-only sample at the end of the stream). Each sample carries its stream `position`; `resume` continues an
    epoch exactly where a `StreamPosition` of them stands.
    """

    def __init__(self, shards: Sequence[str], builder: SampleBuilder, rank: int = 0, world_size: int = 1):
        self.shards = list(shards)
        self.builder = builder
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = StreamPosition()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = StreamPosition()

    def resume(self, position: StreamPosition) -> None:
        """Continue this epoch from `position`: each worker seeks past the samples consumed, reading none of their
        image data, and the worker after the last one to give a batch gives the first."""
        self.start = position

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers, loader_worker = (worker.num_workers, worker.id) if worker else (1, 0)
        worker_id = (loader_worker + self.start.last_worker + 1) % workers  # the loader's first worker goes first
        order = list(self.shards)
        random.Random(f"{self.builder.seed}:{self.epoch}").shuffle(order)
        mine = order[self.rank + self.world_size * worker_id :: self.world_size * workers]
        first_shard, consumed = self.start.shards.get(worker_id, (0, 0))
        skipped = []
        for shard_index in range(first_shard, len(mine)):
            shard = mine[shard_index]
            skip = consumed if shard_index == first_shard else 0
            for sample_index, (key, parts) in enumerate(_tar_samples(shard, skip), start=skip + 1):
                position = (worker_id, shard_index, sample_index)
                try:
                    image_bytes, record = _shard_sample(key, parts)
                    image = load_image(io.BytesIO(image_bytes))
                except UnusableSample as problem:
                    skipped.append((f"{shard}:{key}", problem.reason))
                    continue
                sample = self.builder(image, record, zlib.crc32(key.encode()), self.epoch)
                yield {**sample, "skipped": skipped, "position": position}
                skipped = []
        if skipped:  # the stream's last samples were unusable: their names still travel, in a sample of their own
            yield {"skipped": skipped, "position": position}


_SAMPLE_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's KEY.SUFFIX: KEY ends at the name's 1st dot


def _tar_samples(shard: str, skip: int = 0) -> Iterator[tuple[str, dict[str, bytes] | None]]:
    """(key, {suffix: bytes}) of each sample of a webdataset tar, in archive order, read one sample at a time.

    A sample's members are adjacent, as webdataset writes them. The first `skip` samples are passed over by
    their headers: their data is never read. An archive cut short (a download or copy that stopped) gives its
    last sample as (key, None): its members may have gone on past the cut.
    """
    try:
        archive = tarfile.open(shard)
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"{shard}: not a readable tar file ({error}).") from None
    with archive:
        key, parts, index = None, {}, -1
        try:
            for member in archive:
                archive.members = []  # tarfile keeps every header it reads: memory would grow with the shard
                match = _SAMPLE_MEMBER.match(member.name)
                if not (member.isfile() and match):
                    continue
                if match.group(1) != key:
                    if index >= skip:
                        yield key, parts
                    key, parts, index = match.group(1), {}, index + 1
                if index >= skip:
                    parts[match.group(2).lower()] = archive.extractfile(member).read()
            intact = _ends_as_an_archive(archive)
        except (tarfile.TarError, OSError, EOFError) as error:  # cut short inside a member
            if key is None:
                raise ValueError(f"{shard}: not a readable tar file ({error}).") from None
            intact = False
        if key is not None and index >= skip:
            yield key, parts if intact else None


def _ends_as_an_archive(archive: tarfile.TarFile) -> bool:
    """Whether the archive's last member is followed by the zero block that ends a tar (tarfile stops without a
    word at a file that ends, or breaks, between two members)."""
    archive.fileobj.seek(archive.offset)
    return archive.fileobj.read(tarfile.BLOCKSIZE) == tarfile.NUL * tarfile.BLOCKSIZE


def _shard_sample(key: str, parts: dict[str, bytes] | None) -> tuple[bytes, Record]:
    if parts is None:
        raise UnusableSample(DAMAGED_ARCHIVE)
    image = next((parts[s[1:]] for s in IMAGE_SUFFIXES if s[1:] in parts), None)
    if image is None:
        raise UnusableSample("missing")
    try:
        if "json" in parts:
            meta = json.loads(parts["json"])
            caption, short = meta.get("caption"), meta.get("short_caption")
        else:
            caption, short = parts.get("txt", b"").decode("utf-8"), None
    except (ValueError, AttributeError):  # bad JSON or UTF-8 (both ValueErrors), JSON that is not an object
        raise UnusableSample("unreadable caption") from None
    if not isinstance(caption, str) or not caption.strip():
        raise UnusableSample("no caption")
    return image, Record(Path(key), caption, short if isinstance(short, str) and short else None)
