"""Images read straight from zip and tar archives: ShareGPT4V's image folders as they are downloaded, unpacked never.

A folder of images may stay packed. `coco/train2017.zip` stands for `coco/train2017/` (its members with or without
the leading `train2017/`), and the `.zip` and `.tar` files inside a folder that holds no image file stand for that
folder (`sam/images/sa_000000.tar`, ... for `sam/images/`). A folder that holds image files is read as files.

Members are located once, when the records are read (a zip's central directory; a tar's headers, seeking past
the data), into one flat array; a data-loader worker then reads an image with one seek and one read of its
bytes: no archive object and no table of member names per worker.
"""

from __future__ import annotations

import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCHIVE_SUFFIXES = (".zip", ".tar")
TAR, ZIP_STORED, ZIP_DEFLATED, UNSUPPORTED = range(4)  # how a member's bytes are stored
_ZIP_KINDS = {zipfile.ZIP_STORED: ZIP_STORED, zipfile.ZIP_DEFLATED: ZIP_DEFLATED}
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes, file name length, extra field length
_MEMBER_ROW = np.dtype([("archive", "i4"), ("offset", "i8"), ("size", "i8"), ("kind", "u1"), ("crc", "u4")])


@dataclass(frozen=True)
class ArchiveMember:
    """Where an image file lies in an archive: `offset` of its data (tar) or of its local header (zip)."""

    archive: str
    offset: int
    size: int  # the bytes stored (compressed, for a deflated zip member)
    kind: int
    crc: int = 0

    def read(self) -> bytes:
        """The image file's bytes; ValueError when they cannot be read as they were indexed (archive changed or
        damaged, member encrypted or compressed by a method other than deflate)."""
        if self.kind == UNSUPPORTED:
            raise ValueError("an encrypted zip member, or compressed by another method than deflate")
        with open(self.archive, "rb") as handle:  # one handle per read: no file position shared across workers
            offset = self.offset
            if self.kind != TAR:
                handle.seek(offset)
                signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(handle.read(_ZIP_LOCAL_HEADER.size))
                if signature != b"PK\x03\x04":
                    raise ValueError("no zip member at its offset")
                offset += _ZIP_LOCAL_HEADER.size + name_length + extra_length
            handle.seek(offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise ValueError("the archive ends inside the member")
        if self.kind == ZIP_DEFLATED:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        if self.kind != TAR and zlib.crc32(data) != self.crc:
            raise ValueError("CRC mismatch")
        return data


class ArchiveMembers:
    """The archive member holding each image of a list (None where the image is read as a file), as one array."""

    def __init__(self, archives: list[str], rows: np.ndarray):
        self.archives = archives
        self.rows = rows

    def __getitem__(self, index: int) -> ArchiveMember | None:
        row = self.rows[index]
        if row["archive"] < 0:
            return None
        archive, offset, size, kind, crc = (int(value) for value in row.item())
        return ArchiveMember(self.archives[archive], offset, size, kind, crc)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes


def locate_in_archives(root: Path, images: Sequence[str], suffixes: tuple[str, ...]) -> ArchiveMembers | None:
    """The archive members holding `images` (paths relative to `root`, or absolute) whose folders are packed;
    None when none is.

    Only members named with one of `suffixes` are indexed. An image its folder's archives lack is left to be read
    as a file (and reported missing when it is read).
    """
    packed = {}  # image folder as the records write it -> the archives standing for it, with their members' folder
    for image in images:
        folder = image.rpartition("/")[0]
        if folder not in packed:
            packed[folder] = _archives_for(Path(root, folder), suffixes)
    if not any(packed.values()):
        return None
    archives = sorted({archive for found in packed.values() for archive, _ in found})
    members = {}
    for number, archive in enumerate(archives):
        bases = {str(base) for found in packed.values() for candidate, base in found if candidate == archive}
        for name, offset, size, kind, crc in _members(archive):
            if name.lower().endswith(suffixes):
                for base in bases:
                    members[_member_path(base, name)] = (number, offset, size, kind, crc)
    rows = np.zeros(len(images), dtype=_MEMBER_ROW)
    rows["archive"] = -1
    for index, image in enumerate(images):
        if packed[image.rpartition("/")[0]]:
            location = members.get(os.path.normpath(os.path.join(root, image)))
            if location is not None:
                rows[index] = location
    return ArchiveMembers([str(archive) for archive in archives], rows)


def _archives_for(folder: Path, suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """The archives standing for `folder`, each with the folder its members are relative to; [] to read files."""
    if folder.is_dir():
        if _holds_files(folder, suffixes):
            return []
        return [
            (path, folder) for path in sorted(folder.iterdir()) if path.suffix in ARCHIVE_SUFFIXES and path.is_file()
        ]
    for ancestor in folder.parents:  # the deepest folder that exists: is the missing one beside it as an archive?
        if ancestor.is_dir():
            packed = ancestor / folder.relative_to(ancestor).parts[0]
            candidates = (packed.with_name(packed.name + suffix) for suffix in ARCHIVE_SUFFIXES)
            return [(path, packed) for path in candidates if path.is_file()]
    return []


def _holds_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.name.lower().endswith(suffixes) and entry.is_file() for entry in entries)


def _member_path(base: str, name: str) -> str:
    """The image path a member stands for: under `base`, a leading `./` or repeat of base's own name dropped."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if len(parts) > 1 and parts[0] == os.path.basename(base):
        parts = parts[1:]
    return os.path.normpath(os.path.join(base, *parts))


def _members(archive: Path) -> Iterator[tuple[str, int, int, int, int]]:
    """(name, offset, size, kind, crc) of each file of a zip or uncompressed tar; ValueError naming a bad archive."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as packed:
                for info in packed.infolist():
                    if not info.is_dir():
                        kind = UNSUPPORTED if info.flag_bits & 1 else _ZIP_KINDS.get(info.compress_type, UNSUPPORTED)
                        yield info.filename, info.header_offset, info.compress_size, kind, info.CRC
            return
        with tarfile.open(archive, "r:") as packed:  # compressed tars cannot be read member by member
            for info in packed:
                if info.isfile():
                    yield info.name, info.offset_data, info.size, TAR, 0
                packed.members = []  # tarfile keeps every header it reads; nothing here needs them again
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as error:
        raise ValueError(
            f"{archive}: not a readable {archive.suffix[1:]} archive ({error}); images are read from zip files and "
            "uncompressed tar files."
        ) from None
