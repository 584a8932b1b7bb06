"""A sample's image read from its file or archive member, and the samples that could not be used: `UnusableSample`
says why, `write_skipped` lists them once at the end of a run."""

from __future__ import annotations

import io
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from longclip_diffusers.atomic import atomic_write

from .records import Record

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
