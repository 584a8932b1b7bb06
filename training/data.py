"""Training data: (image, long caption, short caption) from JSONL / CSV, ShareGPT4V JSON or webdataset shards.

Missing or corrupt images never stop an epoch: the sample is replaced by the next readable one, so every batch
keeps its size (all processes gather equal batches), and each skipped image travels with the batch by name and
reason, for the run to list once at the end.

At scale: annotation files are read a line or an entry at a time into a compact `RecordTable` (ShareGPT4V's 1.2 M
pairs); the images of a folder left packed are read from its zip or tar archives (`archives.py`); tar shards
stream one sample at a time, and a resumed run continues each stream from its `StreamPosition`.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import random
import re
import tarfile
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from longclip_diffusers.atomic import atomic_write

from .archives import ArchiveMember, ArchiveMembers, locate_in_archives

ShortCaptionMode = Literal["first-sentence", "debias"]
SHAREGPT4V_HELD_OUT = 1000  # the ShareGPT4V-1k test split: the JSON's first 1,000 entries
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Record:
    image: Path
    caption: str
    short_caption: str | None = None
    member: ArchiveMember | None = None  # where the image lies when its folder is packed as an archive


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


def read_records(path: str | Path, images_root: str | Path | None = None) -> RecordTable:
    """Records from a JSONL or CSV file (`image`, `caption`, optional `short_caption`) or a ShareGPT4V JSON.

    Relative image paths are taken from `images_root`, else from the annotation file's folder; the images of a
    folder left packed as zip or tar archives are read from them (`archives.py`). From a ShareGPT4V JSON the
    first 1,000 entries (the ShareGPT4V-1k test split) are left out, as published. The file is read a line or an
    entry at a time into a compact `RecordTable`. A bad line or entry is reported by file and line number
    (`data/train.jsonl:3: ...`) or entry index.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file.")
    readers = {".jsonl": jsonl_rows, ".csv": _csv_rows, ".json": _sharegpt4v_training_rows}
    if path.suffix not in readers:
        raise ValueError(f"{path}: expected a .jsonl, .csv or ShareGPT4V .json annotation file.")
    if _is_blank(path):
        raise ValueError(f"{path}: the file is empty; it needs one image-caption record per line or entry.")
    records = RecordTable.from_rows(readers[path.suffix](path), Path(images_root) if images_root else path.parent)
    if not len(records):
        raise ValueError(f"{path}: holds no training records.")
    return records


def read_sharegpt4v_test_split(
    path: str | Path, images_root: str | Path | None = None, size: int = SHAREGPT4V_HELD_OUT
) -> RecordTable:
    """The ShareGPT4V-1k test split: the JSON's first `size` entries, read without the rest of the file."""
    path = Path(path)
    entries = itertools.islice(sharegpt4v_entries(path), size)
    rows = ((where, _sharegpt4v_row(entry, where)) for where, entry in entries)
    return RecordTable.from_rows(rows, Path(images_root) if images_root else path.parent)


class _Texts:
    """Strings packed into one UTF-8 buffer and an array of their ends: no Python object per string."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("q")

    def extend(self, texts: Iterable[str]) -> None:
        encoded = [text.encode("utf-8", "surrogatepass") for text in texts]  # JSON may escape a lone surrogate
        ends = itertools.accumulate(map(len, encoded), initial=len(self.data))
        self.ends.extend(itertools.islice(ends, 1, None))
        self.data += b"".join(encoded)

    def __getitem__(self, index: int) -> str:
        start = self.ends[index - 1] if index else 0
        return self.data[start : self.ends[index]].decode("utf-8", "surrogatepass")

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.ends.itemsize * len(self.ends)


class RecordTable(Sequence[Record]):
    """Records packed into a few flat buffers, a `Record` made on each access.

    1.2 million ShareGPT4V records are then a handful of objects, not millions: data-loader workers share them
    with the process that forked them, where millions of Python objects would be copied into every worker page by
    page as reference counts and the garbage collector touch them (PyTorch's copy-on-read memory growth).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images, self.captions, self.short_captions = _Texts(), _Texts(), _Texts()
        self.members: ArchiveMembers | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, dict]], root: Path) -> RecordTable:
        """The records of (`where`, row) pairs, each row checked; images located in their archives if packed."""
        table, image_paths = cls(root), []
        checked = (_record_fields(where, row) for where, row in rows)
        while chunk := list(itertools.islice(checked, 4096)):  # packed a few thousand rows at a time, for speed
            images, captions, short_captions = zip(*chunk, strict=True)
            table.images.extend(images)
            table.captions.extend(captions)
            table.short_captions.extend(short_caption or "" for short_caption in short_captions)
            image_paths += images
        table.members = locate_in_archives(root, image_paths, IMAGE_SUFFIXES)
        return table

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        index %= len(self)
        member = self.members[index] if self.members else None
        short_caption = self.short_captions[index] or None
        return Record(self.root / self.images[index], self.captions[index], short_caption, member)

    @property
    def nbytes(self) -> int:
        """The bytes the table holds."""
        texts = self.images.nbytes + self.captions.nbytes + self.short_captions.nbytes
        return texts + (self.members.nbytes if self.members else 0)


def _is_blank(path: Path) -> bool:
    """Whether the file holds nothing but white space (and a byte-order mark), reading no more than it must."""
    with path.open("rb") as handle:
        chunk = handle.read(1 << 16).removeprefix(codecs.BOM_UTF8)
        while chunk:
            if chunk.strip():
                return False
            chunk = handle.read(1 << 16)
    return True


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of a UTF-8 file, read a line at a time; a leading byte-order mark (as Excel
    writes) is dropped, and a byte that is not UTF-8 is named with its line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):  # split at b"\n" only: JSON strings may hold U+2028
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{line[error.start]:02x}); save the file as UTF-8."
                ) from None
            yield number, text


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 text, with the `_lines` errors."""
    return "".join(text for _, text in _lines(path))


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) of each non-blank line of a JSON-lines file, read a line at a time."""
    for number, line in _lines(path):
        if line.strip():
            row = _parse_json(line.removesuffix("\n"), path, number)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected an object per line, found a {type(row).__name__}.")
            yield f"{path}:{number}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(text for _, text in _lines(path))
    try:
        if not {"image", "caption"} <= set(reader.fieldnames or ()):
            raise ValueError(
                f"{path}:1: the header {reader.fieldnames} lacks an `image` or `caption` column; the first line "
                "names the columns, e.g. `image,caption,short_caption`."
            )
        for row in reader:
            yield f"{path}:{reader.line_num}", row
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({error}).") from None


def read_json_file(path: Path) -> object:
    """A whole JSON file (a COCO captions file, a Karpathy split); an error names the file and the line."""
    return _parse_json(_read_text(path), path)


def _parse_json(text: str, path: Path, line: int | None = None) -> object:
    """`text` parsed as JSON; an error names the file's line (`line` for a JSONL line, else the error's)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _json_error(path, line or error.lineno, error.msg, error.colno) from None


def _json_error(path: Path, line: int, message: str, column: int) -> ValueError:
    return ValueError(f"{path}:{line}: not valid JSON ({message}, column {column}).")


_JSON_CHUNK = 1 << 20  # bytes read at a time from a JSON list
_JSON_MARGIN = 64  # a value parsed this close to the text's end may go on in the next chunk ("1." of "1.5e3")
_JSON_DECODER = json.JSONDecoder()
_NOT_JSON_SPACE = re.compile(r"[^ \t\n\r]")


class _JsonText:
    """A JSON file's text read a chunk at a time from `position` on, with the line and column of any position."""

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.position = "", 0
        self.line, self.column = 1, 1  # of text[0]
        self.lines_read = 0  # newlines in the bytes read, for a decoding error's line

    def more(self) -> bool:
        """Drop the text before `position` and append the next chunk; False, the text untouched, at the end."""
        chunk = self.handle.read(_JSON_CHUNK)
        try:
            decoded = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            line = self.lines_read + error.object[: error.start].count(b"\n") + 1
            raise ValueError(
                f"{self.path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); save the file as UTF-8."
            ) from None
        if not chunk:
            return False
        self.lines_read += chunk.count(b"\n")
        self.line, self.column = self.where(self.position)
        self.text, self.position = self.text[self.position :] + decoded, 0
        return True

    def where(self, position: int) -> tuple[int, int]:
        """(line, column) of text[position]."""
        newlines = self.text.count("\n", 0, position)
        if not newlines:
            return self.line, self.column + position
        return self.line + newlines, position - self.text.rfind("\n", 0, position)

    def peek(self) -> str:
        """The next character that is not white space ('' at the end of the file), `position` moved to it."""
        while True:
            found = _NOT_JSON_SPACE.search(self.text, self.position)
            if found:
                self.position = found.start()
                return found.group()
            self.position = len(self.text)
            if not self.more():
                return ""

    def value(self) -> object:
        """The JSON value at `position`, `position` moved past it."""
        while True:
            try:
                value, end = _JSON_DECODER.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                # cut off by the chunk's end: inside a string, or just before it (a literal, an escape)
                cut = error.msg.startswith("Unterminated string") or error.pos > len(self.text) - _JSON_MARGIN
                if cut and self.more():
                    continue
                line, column = self.where(error.pos)
                raise _json_error(self.path, line, error.msg, column) from None
            if end > len(self.text) - _JSON_MARGIN and self.more():
                continue
            self.position = end
            return value

    def error(self, message: str) -> ValueError:
        line, column = self.where(self.position)
        return _json_error(self.path, line, message, column)


def _json_list(path: Path, what: str) -> Iterator[object]:
    """The items of a JSON list, parsed one at a time from a file read in chunks: memory holds one chunk and one
    item, never the whole file (ShareGPT4V's is 1.5 GB)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    with path.open("rb") as handle:
        text = _JsonText(handle, path)
        if text.peek() != "[":
            value = read_json_file(path)  # not a list: the file's own parse error, or what it holds
            raise ValueError(f"{path}: expected a JSON list of {what}, found a {type(value).__name__}.")
        text.position += 1
        if text.peek() == "]":
            text.position += 1
        else:
            while True:
                yield text.value()
                separator = text.peek()
                if separator not in (",", "]"):
                    raise text.error("Expecting ',' delimiter")
                text.position += 1
                if separator == "]":
                    break
                text.peek()  # the next item's first character
        if text.peek():
            raise text.error("Extra data")


def sharegpt4v_entries(path: Path) -> Iterator[tuple[str, object]]:
    """(`file: entry [i]`, entry) of each entry of a ShareGPT4V JSON, read one entry at a time."""
    for index, entry in enumerate(_json_list(path, "ShareGPT4V entries")):
        yield f"{path}: entry [{index}]", entry


def _sharegpt4v_training_rows(path: Path) -> Iterator[tuple[str, dict]]:
    count = 0
    for count, (where, entry) in enumerate(sharegpt4v_entries(path), start=1):
        if count > SHAREGPT4V_HELD_OUT:
            yield where, _sharegpt4v_row(entry, where)
    if count <= SHAREGPT4V_HELD_OUT:
        raise ValueError(
            f"{path}: holds {count} entries, all within the first {SHAREGPT4V_HELD_OUT:,} that are held out "
            "as the ShareGPT4V-1k test split; train on the full ShareGPT4V JSON, or write your pairs as JSONL."
        )


def _sharegpt4v_row(entry: object, where: str) -> dict:
    """{image, caption} of a ShareGPT4V entry: its image and the first answer of its `gpt` turns."""
    conversations = entry.get("conversations") if isinstance(entry, dict) else None
    turns = conversations if isinstance(conversations, list) else []
    answers = [turn.get("value") for turn in turns if isinstance(turn, dict) and turn.get("from") == "gpt"]
    if not isinstance(entry, dict) or "image" not in entry or not answers:
        raise ValueError(
            f"{where}: not a ShareGPT4V entry (needs `image` and a `conversations` turn from gpt): {str(entry)[:200]}"
        )
    return {"image": entry["image"], "caption": answers[0]}


def _record_fields(where: str, row: dict) -> tuple[str, str, str | None]:
    """(image, caption, short caption) of a row, checked."""
    image, caption, short = row.get("image"), row.get("caption"), row.get("short_caption")
    if not (isinstance(image, str) and image.strip() and isinstance(caption, str) and caption.strip()):
        raise ValueError(f"{where}: lacks an `image` or `caption` value (text): {str(row)[:200]}")
    if short is not None and not isinstance(short, str):
        raise ValueError(f"{where}: `short_caption` must be text, got {short!r}.")
    return image, caption, short or None


SKIPPED_FILE = "skipped_images.txt"  # the images a run (or a cache) could not use, one `name: reason` a line


class UnusableSample(Exception):
    """A sample training cannot use; `reason` says why ("missing", "unreadable", "no caption", ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def write_skipped(skipped: dict[str, str], output: Path) -> str | None:
    """`output/skipped_images.txt`, one `image: reason` line per skipped image; the summary line, if any."""
    out = output / SKIPPED_FILE
    atomic_write(out, "".join(f"{name}: {reason}\n" for name, reason in sorted(skipped.items())))
    if not skipped:
        return None
    counts = ", ".join(f"{count} {reason}" for reason, count in sorted(Counter(skipped.values()).items()))
    return f"{len(skipped)} image(s) skipped ({counts}): see {out}"


def load_image(source: Path | io.BytesIO) -> Image.Image:
    """The image as RGB; `UnusableSample` ("missing" or "unreadable") when it cannot be read."""
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise UnusableSample("missing") from None
    except (OSError, ValueError, Image.DecompressionBombError):  # UnidentifiedImageError and truncated files too
        raise UnusableSample("unreadable") from None


def read_image(record: Record) -> Image.Image:
    """The record's image, from its file or its archive member; `UnusableSample` as `load_image`."""
    if record.member is None:
        return load_image(record.image)
    try:
        data = record.member.read()
    except (OSError, ValueError, zlib.error):
        raise UnusableSample("unreadable") from None
    return load_image(io.BytesIO(data))


def check_images_exist(records: Sequence[Record], path: str | Path, sample: int = 100) -> None:
    """Refuse a set whose first `sample` images are all absent: a wrong `--images-root`, not a few bad files."""
    first = records[:sample]
    if not any(record.member or record.image.is_file() for record in first):
        raise FileNotFoundError(
            f"{path}: none of the first {len(first)} images exists (e.g. {first[0].image}); relative image paths "
            "start from the annotation file's folder, or from --images-root."
        )


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


def _tar_samples(shard: str, skip: int = 0) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) of each sample of a webdataset tar, in archive order, read one sample at a time.

    A sample's members are adjacent, as webdataset writes them. The first `skip` samples are passed over by
    their headers: their data is never read.
    """
    try:
        with tarfile.open(shard) as archive:
            key, parts, index = None, {}, -1
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
            if key is not None and index >= skip:
                yield key, parts
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"{shard}: not a readable tar file ({error}).") from None


def _shard_sample(key: str, parts: dict[str, bytes]) -> tuple[bytes, Record]:
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
