"""Atomic writes: every file and folder this package writes appears complete or not at all.

A writer fills a temporary path beside the target (same folder, so the final rename never crosses file
systems); only a complete result is renamed into place. Files get the permissions the user's umask gives a
new file (the temporary files of `tempfile` would otherwise leave them readable by their owner only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_output", "atomic_write", "publish", "replace_when_done"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another output or pass --overwrite.")


def refuse_file_above(out: str | os.PathLike) -> None:
    """Refuse, before any work, an `out` under a file (`notes.txt/image.png`), where nothing can be written."""
    above = next(folder for folder in Path(out).absolute().parents if folder.exists())
    if not above.is_dir():
        raise NotADirectoryError(f"{out}: {above} is a file, not a folder to write into.")


def publish(staging: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Move a finished file or folder `staging` to `out` (same file system), replacing `out` only if `overwrite`.

    A file replaces an old one in one step (`os.replace`). A folder cannot: the old one is moved aside first and
    removed once the new one is in place.
    """
    staging, out = Path(staging), Path(out)
    _refuse_existing(out, overwrite)
    if staging.is_file():
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, out)
        return out
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


@contextmanager
def atomic_output(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `out` for the caller to create (a file or a folder); on success it is renamed
    to `out`, on failure removed.

    An existing `out` is refused before anything is written unless `overwrite=True`, and then replaced only once
    the new one is complete.
    """
    out = Path(out)
    _refuse_existing(out, overwrite)  # before anything is written; `publish` checks again once it is
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp_dir / out.name
        publish(tmp_dir / out.name, out, overwrite)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write(
    out: str | os.PathLike, content: str | bytes | Callable[[IO[bytes]], None], overwrite: bool = True
) -> Path:
    """Write one file atomically: text (UTF-8), bytes, or a function of the binary handle (e.g.
    `lambda f: figure.savefig(f, format="png")`). An existing file is replaced, or refused if not `overwrite`."""
    with atomic_output(out, overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        if callable(content):
            content(handle)
        else:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
    return Path(out)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@contextmanager
def replace_when_done(
    folder: str | os.PathLike, entries: Callable[[Path], Iterable[str]], enabled: bool = True
) -> Iterator[None]:
    """`--overwrite` for a job that fills `folder` in place (a training run, a feature cache): the rule of
    `atomic_output`, old output replaced only by a finished new one, for outputs that cannot be staged whole.

    `entries(folder)` names the job's own files and folders in `folder` (never the user's). On entering, those of
    the earlier output are moved into a hidden folder inside `folder`; they are removed once the job has finished,
    and put back (the new job's entries removed) if it fails. A job killed outright leaves them in
    `folder/.replaced-*.tmp`. With `enabled=False` (no --overwrite, or not the main process) nothing is moved.
    """
    folder = Path(folder)
    earlier = list(entries(folder)) if enabled and folder.is_dir() else []
    if not earlier:
        yield
        return
    aside = Path(tempfile.mkdtemp(prefix=".replaced-", suffix=".tmp", dir=folder))
    for name in earlier:
        (folder / name).rename(aside / name)
    try:
        yield
    except BaseException:
        for name in entries(folder):
            _remove(folder / name)
        for name in earlier:
            (aside / name).rename(folder / name)
        aside.rmdir()
        raise
    shutil.rmtree(aside)
