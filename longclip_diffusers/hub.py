"""Turn a source (local path or Hugging Face Hub repo id) into local files, downloading only what we read."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

# Preferred weights in one folder, best first; a folder holding none of these may hold one single-file checkpoint.
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_SMALL_FILE_SUFFIXES = (".json", ".txt")
# Sub-folders of a pipeline-style repo that hold what we read.
_KNOWN_SUBFOLDERS = ("", "text_encoder", "tokenizer")


def looks_local(source: str) -> bool:
    """Whether `source` can only be a local path (not a Hub repo id `owner/name`): absolute or relative with `.`,
    `~`, more than one `/`, a weights suffix, or a first part that is a local folder (`models/typo`)."""
    return (
        source.startswith((".", "/", "~"))
        or os.sep in source.replace("/", "", 1)
        or source.count("/") != 1
        or source.endswith(WEIGHT_SUFFIXES)
        or Path(source.split("/")[0]).is_dir()
    )


def select_files(repo_files: list[str], subfolder: str | None = None) -> list[str]:
    """The files of a repo we need: configs and tokenizer files, and one set of weights per folder."""
    base = subfolder.strip("/") if subfolder else ""
    selected: list[str] = []
    for sub in _KNOWN_SUBFOLDERS:
        folder = posixpath.join(base, sub) if sub else base
        here = [name for name in repo_files if posixpath.dirname(name) == folder]
        selected += [name for name in here if name.endswith(_SMALL_FILE_SUFFIXES)]
        by_name = {posixpath.basename(name): name for name in here}
        weights = next((by_name[name] for name in _HF_WEIGHTS if name in by_name), None)
        if weights is None:
            singles = sorted(name for name in here if name.endswith(WEIGHT_SUFFIXES))
            weights = next((name for name in singles if name.endswith(".safetensors")), singles[0]) if singles else None
        if weights is not None:
            selected.append(weights)
            if weights.endswith(".index.json"):
                selected.append(posixpath.join(folder, "model-*.safetensors"))
    return selected


def resolve(source: str | os.PathLike, *, subfolder: str | None = None, revision: str | None = None) -> Path:
    """Local path of `source`: an existing local file or folder as is, otherwise a Hub repo downloaded.

    From a Hub repo only configs, tokenizer files and one weights file per folder are fetched (for a published
    Long-CLIP repo: its `.pt`/`.safetensors`); the Hub cache is reused, and works offline once filled.
    """
    path = Path(source).expanduser()
    if path.exists():
        path = path / subfolder if subfolder else path
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder (subfolder {subfolder!r} of {source}).")
        return path
    source = str(source)
    if looks_local(source):
        raise FileNotFoundError(f"{source}: no such file or folder (and it is not a Hugging Face Hub repo id).")
    try:
        repo_files = huggingface_hub.list_repo_files(source, revision=revision)
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{source}: neither a local path nor a Hugging Face Hub repo you can access "
            "(check the spelling; for gated or private repos run `hf auth login`)."
        ) from None
    except HFValidationError:
        raise FileNotFoundError(f"{source}: no such file or folder, nor a valid Hub repo id.") from None
    except Exception as error:  # offline mode, DNS, proxy, timeouts: each HTTP stack raises its own types
        try:  # use what an earlier run downloaded
            folder = huggingface_hub.snapshot_download(source, revision=revision, local_files_only=True)
        except (LocalEntryNotFoundError, OSError):
            raise FileNotFoundError(
                f"{source}: not a local path, and the Hugging Face Hub is unreachable with nothing cached for it "
                f"({type(error).__name__}). Connect, or pass a local folder or file."
            ) from None
        return Path(folder) / subfolder if subfolder else Path(folder)
    wanted = select_files(repo_files, subfolder)
    if not wanted:
        raise FileNotFoundError(
            f"{source}: the Hub repo has no CLIP weights or tokenizer files"
            + (f" in {subfolder!r}" if subfolder else "")
            + "."
        )
    folder = Path(huggingface_hub.snapshot_download(source, revision=revision, allow_patterns=wanted))
    return folder / subfolder if subfolder else folder
