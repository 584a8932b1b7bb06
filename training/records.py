"""Caption records: (image, long caption, short caption) read from JSONL / CSV or a ShareGPT4V JSON into a compact
`RecordTable` (ShareGPT4V's 1.2 M pairs), the images of a folder left packed located in its zip or tar archives
(`archives.py`)."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .archives import ArchiveMember, ArchiveMembers, locate_in_archives
from .text_files import csv_rows, is_blank, json_list, jsonl_rows

SHAREGPT4V_HELD_OUT = 1000  # the ShareGPT4V-1k test split: the JSON's first 1,000 entries
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Record:
    image: Path
    caption: str
    short_caption: str | None = None
    member: ArchiveMember | None = None  # where the image lies when its folder is packed as an archive


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
    readers = {".jsonl": jsonl_rows, ".csv": csv_rows, ".json": _sharegpt4v_training_rows}
    if path.suffix not in readers:
        raise ValueError(f"{path}: expected a .jsonl, .csv or ShareGPT4V .json annotation file.")
    if is_blank(path):
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


def sharegpt4v_entries(path: Path) -> Iterator[tuple[str, object]]:
    """(`file: entry [i]`, entry) of each entry of a ShareGPT4V JSON, read one entry at a time."""
    for index, entry in enumerate(json_list(path, "ShareGPT4V entries")):
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
