"""Reading weights files without running any code in them: safetensors, PyTorch zip and legacy pickles (with
`torch.load(weights_only=True)`), their headers, and config JSON; each failure a one-line `CheckpointError`."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .checkpoint import CheckpointError


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without running any code in it; `.pt` files are memory-mapped when possible.

    A safetensors file is read as one whatever its suffix (e.g. saved as `.bin`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    head = _check_weights_file(path)
    is_zip = head.startswith(_ZIP_MAGIC)
    if path.suffix == ".safetensors" and is_zip:  # torch.load reads a .safetensors path as safetensors
        raise CheckpointError(f"{path}: is a PyTorch checkpoint, not a safetensors file; rename it to .pt.")
    if path.suffix == ".safetensors" or head[8:10] == _SAFETENSORS_HEADER_START:
        return read_safetensors(path)
    try:
        # torch.load tells its zip format (memory-mappable) from the legacy one only by failing; look first
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        if not any(marker in str(error) for marker in _CODE_MARKERS):
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (its pickle data is invalid). {DOWNLOAD_AGAIN}"
            ) from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors, and loading it "
            "could run code. Only load checkpoints you trust; convert a trusted one to .safetensors first. "
            f"(torch said: {_first_line(error)})"
        ) from None
    except Exception as error:  # torch's readers fail on damaged files with any error type (EOFError, KeyError...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt download?): "
            f"{_first_line(error)}. {DOWNLOAD_AGAIN}"
        ) from None
    return _unwrap(loaded, path)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_SAFETENSORS_HEADER_START = b'{"'  # a safetensors file: 8 bytes of header length, then its JSON header
# Markers of torch's weights-only refusal of a pickle that names code (as opposed to a damaged pickle).
_CODE_MARKERS = ("Unsupported global", "Trying to call reduce", "Unsupported class")
DOWNLOAD_AGAIN = "Download it again."


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_weights_file(path: Path) -> bytes:
    """The first bytes of a weights file, after refusing what cannot hold weights: empty files and text files
    (a Git LFS pointer, an error page saved in place of the download)."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        raise CheckpointError(f"{path}: is empty (0 bytes); the download or copy did not finish. {DOWNLOAD_AGAIN}")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path}: is a Git LFS pointer, not the weights; fetch them with `git lfs pull` in its repository "
            "(or download the file itself)."
        )
    if all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head):
        raise CheckpointError(
            f"{path}: holds text ({head[:32].decode()!r}...), not weights; an error page saved in place of the "
            f"file? {DOWNLOAD_AGAIN}"
        )
    return head


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path}: not a complete safetensors file (truncated or corrupt download?): {error}. {DOWNLOAD_AGAIN}"
        ) from None


def read_json(path: Path) -> dict:
    """A JSON object from a config file, or a one-line error naming the file."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); restore or download the file again.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(config).__name__}, not the object of a config.")
    return config


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in a training checkpoint ({"state_dict": ...}) and drop DDP's `module.` prefix."""
    for container in ("state_dict", "model", "module"):
        if isinstance(loaded, dict) and isinstance(loaded.get(container), dict):
            loaded = loaded[container]
    if not isinstance(loaded, dict) or not any(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors; is it a model checkpoint?")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """The tensors a safetensors header describes (name -> dtype, shape, data_offsets; `__metadata__` left out)
    and the byte offset where their data starts, read without loading any tensor."""
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > _MAX_SAFETENSORS_HEADER:
                raise ValueError(f"a header of {header_size} bytes")
            header = json.loads(handle.read(header_size))
        tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
        if not all(isinstance(entry, dict) for entry in tensors.values()):
            raise ValueError("a tensor entry that is not an object")
        return tensors, 8 + header_size
    except (struct.error, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {error}).") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor shapes recorded in a safetensors header, read without loading any tensor."""
    tensors, _ = safetensors_header(path)
    try:
        return {key: list(entry["shape"]) for key, entry in tensors.items()}
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {error}).") from None


_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit


def text_positions(folder: Path) -> int | None:
    """Rows of the text position table of a Hugging Face (or diffusers) folder, from file headers only.

    `None` when the folder holds no single `model.safetensors` text encoder.
    """
    for candidate in (folder / "model.safetensors", folder / "text_encoder" / "model.safetensors"):
        if candidate.is_file():
            try:
                shapes = safetensors_shapes(candidate)
            except CheckpointError:  # the encoder's own loading reports that; the tokenizer does not need it
                return None
            for key, shape in shapes.items():
                if key.endswith("embeddings.position_embedding.weight") and not key.startswith("vision_model."):
                    return shape[0] if shape else None
    return None
