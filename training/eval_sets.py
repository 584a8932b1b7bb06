"""The evaluation sets `longclip eval` reads: retrieval sets (images, captions, and which image each caption describes)
and zero-shot sets (a class-per-folder image set and prompt templates).

The benchmarks of Long-CLIP (arXiv 2403.15378, sec. 4): long-caption retrieval (Urban-1k, ShareGPT4V-1k, DOCCI),
short-caption retrieval (COCO 5k, Flickr30k 1k) and zero-shot classification (ImageNet); any other set as JSON
lines. ShareGPT4V, JSON lines and JSON files are read by the readers training uses (`records.py`, `text_files.py`),
with their `file:line` errors.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import IMAGE_SUFFIXES, SHAREGPT4V_HELD_OUT, RecordTable, read_sharegpt4v_test_split
from .text_files import jsonl_rows, read_json_file

logger = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5  # COCO and Flickr30k retrieval use 5 captions per image (some COCO images have 6 or 7)
SIMPLE_TEMPLATES = ("a photo of a {}.",)
_WORDNET_ID = re.compile(r"n\d{8}")


@dataclass
class RetrievalSet:
    """Images, captions, and the index (into `images`) of the image each caption describes."""

    images: list[Path]
    captions: list[str]
    image_of_caption: list[int]

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.image_of_caption):
            raise ValueError(
                f"{len(self.captions)} captions but {len(self.image_of_caption)} image indices; give one per caption."
            )
        if not self.images or not self.captions:
            raise ValueError(
                f"A retrieval set needs images and captions, got {len(self.images)} and {len(self.captions)}."
            )
        described = set(self.image_of_caption)
        if min(described) < 0 or max(described) >= len(self.images):
            raise ValueError(
                f"Image indices must be in 0..{len(self.images) - 1}; got {min(described)}..{max(described)}."
            )
        if len(described) != len(self.images):
            lonely = next(i for i in range(len(self.images)) if i not in described)
            raise ValueError(f"{self.images[lonely]}: has no caption; every image needs at least one.")


@dataclass
class ZeroShotSet:
    """Images, the class index of each, class names, and the prompt templates (`"a photo of a {}."`)."""

    images: list[Path]
    labels: list[int]
    class_names: list[str]
    templates: tuple[str, ...] = SIMPLE_TEMPLATES

    def __post_init__(self) -> None:
        self.templates = tuple(self.templates)
        if not self.templates or any("{}" not in template for template in self.templates):
            raise ValueError(f"Each template needs a '{{}}' where the class name goes, got {self.templates!r}.")
        if len(self.images) != len(self.labels) or not self.images:
            raise ValueError(f"Need one label per image and at least one image, got {len(self.images)} images.")
        if min(self.labels) < 0 or max(self.labels) >= len(self.class_names):
            raise ValueError(f"Labels must be in 0..{len(self.class_names) - 1}.")


def _natural_key(text: str) -> list:
    """Sort key putting "2" before "10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _read_json(path: Path, expected: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}.")
    return read_json_file(path)


def _text(value: Any, where: str, expected: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected {expected}, got {value!r}.")
    return value.strip()


def _default_root(path: Path, images_root: str | os.PathLike | None, *subfolders: str) -> Path:
    """`images_root`, else the first of the data file's sub-folders that exists, else the data file's folder."""
    if images_root is not None:
        return Path(images_root)
    return next((path.parent / sub for sub in subfolders if (path.parent / sub).is_dir()), path.parent)


def _require_images(images: Sequence[Path], source: Path) -> None:
    missing = [image for image in images if not image.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source}: {len(missing)} of its {len(images)} images are missing, e.g. {missing[0]}; pass the folder "
            "the image paths are relative to (images_root, or --images on the command line)."
        )


def _from_pairs(pairs: Iterable[tuple[Path, str]], source: Path) -> RetrievalSet:
    """A RetrievalSet from (image, caption) pairs; captions of the same image file are grouped under it."""
    index: dict[Path, int] = {}
    images: list[Path] = []
    captions: list[str] = []
    owners: list[int] = []
    for image, caption in pairs:
        if image not in index:
            index[image] = len(images)
            images.append(image)
        captions.append(caption)
        owners.append(index[image])
    if not captions:
        raise ValueError(f"{source}: holds no image-caption pairs.")
    _require_images(images, source)
    return RetrievalSet(images, captions, owners)


def load_urban1k(path: str | os.PathLike, images_root: str | os.PathLike | None = None) -> RetrievalSet:
    """Urban-1k: `path/image/NAME.jpg` paired by name with `path/caption/NAME.txt` (one caption per image)."""
    root = Path(path)
    caption_dir = root / "caption"
    image_dir = Path(images_root) if images_root is not None else root / "image"
    for folder in (caption_dir, image_dir):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: no such folder; expected the Urban-1k layout {root}/image/NAME.jpg + "
                f"{root}/caption/NAME.txt."
            )
    caption_files = {file.stem: file for file in caption_dir.glob("*.txt")}
    image_files: dict[str, Path] = {}
    for file in image_dir.iterdir():
        if file.suffix.lower() in IMAGE_SUFFIXES:
            if file.stem in image_files:
                raise ValueError(f"{file}: two images are named {file.stem!r}; cannot tell which caption is whose.")
            image_files[file.stem] = file
    if not caption_files:
        raise ValueError(f"{caption_dir}: holds no .txt captions; expected {root}/caption/NAME.txt files.")
    unpaired = sorted(caption_files.keys() ^ image_files.keys(), key=_natural_key)
    if unpaired:
        raise ValueError(
            f"{root}: {len(unpaired)} images or captions have no partner (image/NAME.jpg pairs with "
            f"caption/NAME.txt), e.g. {unpaired[:5]}."
        )
    names = sorted(caption_files, key=_natural_key)
    captions = [
        _text(caption_files[name].read_text(encoding="utf-8"), str(caption_files[name]), "a caption") for name in names
    ]
    return RetrievalSet([image_files[name] for name in names], captions, list(range(len(names))))


def load_sharegpt4v(
    path: str | os.PathLike, images_root: str | os.PathLike | None = None, limit: int = SHAREGPT4V_HELD_OUT
) -> RetrievalSet:
    """ShareGPT4V-1k: the first `limit` entries of the ShareGPT4V JSON (read without the rest of the file); each
    caption is the first "gpt" turn, read as training reads the JSON. Image paths are relative to `images_root`
    (default: the JSON's folder).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected the ShareGPT4V JSON.")
    records = read_sharegpt4v_test_split(path, _default_root(path, images_root), limit)
    if len(records) < limit:
        logger.warning("%s: has %d entries, fewer than the %d of the test split; using all.", path, len(records), limit)
    return _from_pairs(((record.image, record.caption.strip()) for record in records), path)


def _is_karpathy(data: Any) -> bool:
    """Whether `data` is a Karpathy split file (`dataset_coco.json`, `dataset_flickr30k.json`)."""
    return (
        isinstance(data, dict)
        and "annotations" not in data
        and isinstance(data.get("images"), list)
        and all(isinstance(image, dict) and "sentences" in image and "split" in image for image in data["images"][:1])
    )


def _karpathy_images(path: Path, split: str = "test", data: Any = None) -> list[dict]:
    """The `split` images of the Karpathy file `path` (`data`: its content, when already read)."""
    expected = 'a Karpathy split file ({"images": [{"filename", "split", "sentences": [{"raw"}]}]})'
    if data is None:
        data = _read_json(path, expected)
    if not _is_karpathy(data):
        raise ValueError(f"{path}: is not {expected}.")
    images = [image for image in data["images"] if image.get("split") == split]
    if not images:
        splits = sorted({str(image.get("split")) for image in data["images"]})
        raise ValueError(f"{path}: has no {split!r} images (splits found: {', '.join(splits)}).")
    return images


def _karpathy_set(path: Path, root: Path, captions_per_image: int | None, data: Any = None) -> RetrievalSet:
    pairs = []
    for number, image in enumerate(_karpathy_images(path, data=data)):
        try:
            name = str(Path(image.get("filepath", "")) / image["filename"])
            sentences = [sentence["raw"] for sentence in image["sentences"]][:captions_per_image]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: test image {number} lacks filename or sentences[].raw.") from None
        where = f"{path}: {name}"
        pairs += [(root / name, _text(sentence, where, "a caption")) for sentence in sentences]
    return _from_pairs(pairs, path)


def load_coco(
    path: str | os.PathLike,
    images_root: str | os.PathLike | None = None,
    karpathy: str | os.PathLike | None = None,
    captions_per_image: int | None = CAPTIONS_PER_IMAGE,
) -> RetrievalSet:
    """COCO: a captions JSON (`images` [{id, file_name}], `annotations` [{image_id, caption}]).

    With `karpathy` (a `dataset_coco.json`) only its test split (5k images) is kept; `path` may also be that
    Karpathy file itself. `captions_val2017.json` alone is COCO 5k as Long-CLIP evaluates it. Each image keeps
    its first `captions_per_image` captions (None: all). Images are relative to `images_root` (default: the
    JSON's folder).
    """
    path = Path(path)
    expected = 'a COCO captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})'
    data = _read_json(path, expected)
    root = _default_root(path, images_root)
    if _is_karpathy(data):
        if karpathy is not None:
            raise ValueError(f"{path}: is a Karpathy split file already; give either it or a captions JSON with it.")
        return _karpathy_set(path, root, captions_per_image, data)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        raise ValueError(f"{path}: is not {expected}.")
    try:
        file_names = {image["id"]: image["file_name"] for image in data["images"]}
        captions: dict[Any, list[str]] = {}
        for annotation in data["annotations"]:
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: is not {expected}.") from None
    ids = [image_id for image_id in file_names if image_id in captions]
    if karpathy is not None:
        karpathy = Path(karpathy)
        test_ids = [image.get("cocoid", image.get("id")) for image in _karpathy_images(karpathy)]
        absent = [image_id for image_id in test_ids if image_id not in captions or image_id not in file_names]
        if absent:
            raise ValueError(
                f"{path}: lacks {len(absent)} of the {len(test_ids)} Karpathy test images of {karpathy} (e.g. id "
                f"{absent[0]}); the Karpathy split is drawn from val2014: use captions_val2014.json."
            )
        ids = test_ids
    pairs = [
        (
            root / _text(file_names[image_id], f"{path}: image {image_id}", "a file_name"),
            _text(caption, str(path), "a caption"),
        )
        for image_id in ids
        for caption in captions[image_id][:captions_per_image]
    ]
    return _from_pairs(pairs, path)


def load_flickr30k(
    path: str | os.PathLike,
    images_root: str | os.PathLike | None = None,
    karpathy: str | os.PathLike | None = None,
    captions_per_image: int | None = CAPTIONS_PER_IMAGE,
) -> RetrievalSet:
    """Flickr30k: the Karpathy `dataset_flickr30k.json` (its 1k-image test split) or `results_20130124.token`.

    The token file (`NAME.jpg#N<TAB>caption` lines) gives every image, or, with `karpathy`, the test split.
    Images are relative to `images_root` (default: `flickr30k-images/` beside the file if present, else its folder).
    """
    path = Path(path)
    root = _default_root(path, images_root, "flickr30k-images")
    if path.suffix == ".json":
        if karpathy is not None:
            raise ValueError(f"{path}: is a Karpathy split file already; `karpathy` goes with the token file.")
        return _karpathy_set(path, root, captions_per_image)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected dataset_flickr30k.json or results_20130124.token.")
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\n").partition("\t")
            name, hash_sign, _ = key.rpartition("#")
            if not tab or not hash_sign or not name:
                raise ValueError(
                    f"{path}, line {number}: expected 'IMAGE.jpg#N<TAB>caption', got {line.strip()[:80]!r}."
                )
            captions.setdefault(name, []).append(_text(caption, f"{path}, line {number}", "a caption"))
    names = list(captions)
    if karpathy is not None:
        names = [image["filename"] for image in _karpathy_images(Path(karpathy))]
        absent = [name for name in names if name not in captions]
        if absent:
            raise ValueError(f"{path}: has no captions for {len(absent)} Karpathy test images, e.g. {absent[0]}.")
    return _from_pairs(
        ((root / name, caption) for name in names for caption in captions[name][:captions_per_image]), path
    )


def load_docci(
    path: str | os.PathLike, images_root: str | os.PathLike | None = None, split: str = "test"
) -> RetrievalSet:
    """DOCCI: `docci_descriptions.jsonlines` ({"image_file", "description", "split"} per line), one split.

    Images are relative to `images_root` (default: `images/` beside the file if present, else its folder).
    """
    path = Path(path)
    expected = 'DOCCI descriptions, one {"image_file": name, "description": text, "split": name} per line'
    rows = list(jsonl_rows(path))
    root = _default_root(path, images_root, "images")
    pairs = []
    for where, row in rows:
        if "split" not in row:
            raise ValueError(f"{where}: has no 'split'; expected {expected}.")
        if row["split"] == split:
            pairs.append(
                (
                    root / _text(row.get("image_file"), where, "an image_file"),
                    _text(row.get("description"), where, "a description"),
                )
            )
    if not pairs:
        splits = sorted({str(row["split"]) for _, row in rows})
        raise ValueError(f"{path}: has no {split!r} rows (splits found: {', '.join(splits) or 'none'}).")
    return _from_pairs(pairs, path)


def load_jsonl(path: str | os.PathLike, images_root: str | os.PathLike | None = None) -> RetrievalSet:
    """Any retrieval set as JSON lines: {"image": path, "caption": text}, read as training reads its JSONL; lines
    sharing an image share it."""
    path = Path(path)
    records = RecordTable.from_rows(jsonl_rows(path), _default_root(path, images_root))
    return _from_pairs(((record.image, record.caption.strip()) for record in records), path)


def load_zero_shot(
    folder: str | os.PathLike,
    templates: Sequence[str] = SIMPLE_TEMPLATES,
    class_names: Sequence[str] | Mapping[str, str] | None = None,
) -> ZeroShotSet:
    """A class-per-sub-folder image set (ImageNet's val layout); classes in sorted folder order.

    `class_names`: one per folder in sorted order, or {folder: name}. By default folder names with underscores
    as spaces; ImageNet's 1,000 WordNet-id folders (n01440764, ...) get CLIP's ImageNet class names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; expected one sub-folder of images per class.")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"{folder}: has no sub-folders; expected one sub-folder of images per class.")
    if isinstance(class_names, Mapping):
        unnamed = [name for name in classes if name not in class_names]
        if unnamed:
            raise ValueError(f"{folder}: class names are missing for {len(unnamed)} folders, e.g. {unnamed[0]!r}.")
        names = [class_names[name] for name in classes]
    elif class_names is not None:
        names = list(class_names)
        if len(names) != len(classes):
            raise ValueError(f"{folder}: has {len(classes)} class folders but {len(names)} class names were given.")
    elif len(classes) == 1000 and all(_WORDNET_ID.fullmatch(name) for name in classes):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
    else:
        names = [name.replace("_", " ") for name in classes]
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        images += files
        labels += [label] * len(files)
    if not images:
        raise ValueError(f"{folder}: its class folders hold no images ({', '.join(IMAGE_SUFFIXES)}).")
    return ZeroShotSet(images, labels, names, tuple(templates))


def read_templates(value: str) -> tuple[str, ...]:
    """Prompt templates: "openai" (CLIP's 80 ImageNet templates), "simple", or a file with one per line."""
    if value == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)
    if value == "simple":
        return SIMPLE_TEMPLATES
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give openai, simple or a file with one template per line.")
    templates = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f"{path}: expected one template per line, each with '{{}}' where the class name goes.")
    return templates


# ----------------------------------------------------------------------------------------------------------
# Zero-shot class names, and what a benchmark holds
# ----------------------------------------------------------------------------------------------------------


def read_class_names(path: str | os.PathLike) -> list[str] | dict[str, str]:
    """Zero-shot class names: one per line (in sorted folder order), or a JSON object {folder: name}."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; expected class names, one per line, or a JSON object.")
    if file.suffix == ".json":
        names = _read_json(file, "a JSON object {folder: class name}")
        if not isinstance(names, dict):
            raise ValueError(f"{file}: expected a JSON object {{folder: class name}}.")
        return names
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def describe(task: RetrievalSet | ZeroShotSet) -> dict[str, Any]:
    """What a benchmark holds, for the report."""
    if isinstance(task, RetrievalSet):
        return {"kind": "retrieval", "images": len(task.images), "captions": len(task.captions)}
    return {
        "kind": "zero-shot",
        "images": len(task.images),
        "classes": len(task.class_names),
        "templates": len(task.templates),
    }
