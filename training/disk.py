"""Writes that fail because the disk is full, told in one line. torch and safetensors report them in their own
words (`RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`, `SafetensorError: Error while
serializing: IoError(... StorageFull ...)`), which never mention disk space."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# Less free space than this just after a write failed: it failed for want of space (a failed write fills the disk).
NEARLY_FULL = 1 << 20
_NO_SPACE = ("No space left on device", "StorageFull", "os error 28")


class DiskFull(OSError):
    """A write under `path` that failed because its disk is full: names the path, the space left and `then`,
    what to do once some is freed."""

    def __init__(self, path: Path, then: str = ""):
        free = free_space(path)
        left = "" if free is None else f" ({free / 1e6:,.1f} MB free)"
        advice = f"; free some disk space, then {then}" if then else ""
        super().__init__(errno.ENOSPC, f"No space left on the disk of {path}{left}{advice}")
        self.path = path


def from_full_disk(error: BaseException, path: Path | None = None) -> bool:
    """Whether `error`, raised by a write, came from a full disk: its errno or its words say so, or (given the
    `path` being written) the disk has almost no space left."""
    if getattr(error, "errno", None) == errno.ENOSPC or any(words in str(error) for words in _NO_SPACE):
        return True
    free = free_space(path) if path is not None else None
    return free is not None and free < NEARLY_FULL


def free_space(path: Path) -> int | None:
    """Bytes free on the disk of `path` (or of its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None
