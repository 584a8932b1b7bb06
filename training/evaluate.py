"""Retrieval and zero-shot evaluation of (Long-)CLIP models: what `longclip eval` runs.

The benchmarks of Long-CLIP (arXiv 2403.15378, sec. 4): long-caption retrieval (Urban-1k, ShareGPT4V-1k, DOCCI),
short-caption retrieval (COCO 5k, Flickr30k 1k) and zero-shot classification on a class-per-folder image set
(ImageNet). Every retrieval set is read into a `RetrievalSet`; several captions per image are allowed.

Models load through `load_checkpoint` + `build_clip_model`, so every layout `longclip convert` reads works.
Captions are tokenized with CLIP's exact ids (`LongCLIPTokenizer`) at all of the model's positions (248 for
Long-CLIP), or truncated at 77 tokens for a CLIP baseline; images are preprocessed as CLIP does (bicubic resize
of the short side, centre crop to the model's image size, OpenAI mean and std).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPModel, PreTrainedTokenizerBase

from longclip_diffusers.convert import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, DTYPES
from longclip_diffusers.formats import CheckpointError, load_checkpoint
from longclip_diffusers.hub import resolve
from longclip_diffusers.stretch import CLIP_POSITIONS
from longclip_diffusers.text_encoder import build_clip_model
from longclip_diffusers.tokenizer import LongCLIPTokenizer

__all__ = [
    "EvalModel",
    "RetrievalSet",
    "ZeroShotSet",
    "add_eval_arguments",
    "encode_images",
    "encode_texts",
    "evaluate",
    "image_transform",
    "load_coco",
    "load_docci",
    "load_flickr30k",
    "load_jsonl",
    "load_model",
    "load_sharegpt4v",
    "load_urban1k",
    "load_zero_shot",
    "retrieval_metrics",
    "run_eval",
    "write_results",
    "zero_shot_accuracy",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHAREGPT4V_TEST_SIZE = 1000  # the first 1,000 entries of the ShareGPT4V JSON, held out of Long-CLIP's training
CAPTIONS_PER_IMAGE = 5  # COCO and Flickr30k retrieval use 5 captions per image (some COCO images have 6 or 7)
SIMPLE_TEMPLATES = ("a photo of a {}.",)
RETRIEVAL_KS = (1, 5, 10)
ZERO_SHOT_KS = (1, 5)
_WORDNET_ID = re.compile(r"n\d{8}")


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected {expected}.") from None


def _read_jsonl(path: Path, expected: str) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}.")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error}); expected {expected}.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: not a JSON object; expected {expected}.")
            rows.append(row)
    return rows


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
    path: str | os.PathLike, images_root: str | os.PathLike | None = None, limit: int = SHAREGPT4V_TEST_SIZE
) -> RetrievalSet:
    """ShareGPT4V-1k: the first `limit` entries of the ShareGPT4V JSON; each caption is the first "gpt" turn.

    Image paths are relative to `images_root` (default: the JSON's folder).
    """
    path = Path(path)
    entry_layout = '{"image": path, "conversations": [..., {"from": "gpt", "value": caption}]}'
    expected = f"the ShareGPT4V JSON, a list of {entry_layout}"
    data = _read_json(path, expected)
    if not isinstance(data, list):
        raise ValueError(f"{path}: holds a {type(data).__name__}; expected {expected}.")
    if len(data) < limit:
        logger.warning("%s: has %d entries, fewer than the %d of the test split; using all.", path, len(data), limit)
    root = _default_root(path, images_root)
    pairs = []
    for number, entry in enumerate(data[:limit]):
        try:
            image = entry["image"]
            caption = next(turn["value"] for turn in entry["conversations"] if turn.get("from") == "gpt")
        except (KeyError, TypeError, AttributeError, StopIteration):
            raise ValueError(f"{path}: entry {number} is not {entry_layout}.") from None
        where = f"{path}: entry {number}"
        pairs.append((root / _text(image, where, "an image path"), _text(caption, where, "a caption")))
    return _from_pairs(pairs, path)


def _is_karpathy(data: Any) -> bool:
    """Whether `data` is a Karpathy split file (`dataset_coco.json`, `dataset_flickr30k.json`)."""
    return (
        isinstance(data, dict)
        and "annotations" not in data
        and isinstance(data.get("images"), list)
        and all(isinstance(image, dict) and "sentences" in image and "split" in image for image in data["images"][:1])
    )


def _karpathy_images(path: Path, split: str = "test") -> list[dict]:
    expected = 'a Karpathy split file ({"images": [{"filename", "split", "sentences": [{"raw"}]}]})'
    data = _read_json(path, expected)
    if not _is_karpathy(data):
        raise ValueError(f"{path}: is not {expected}.")
    images = [image for image in data["images"] if image.get("split") == split]
    if not images:
        splits = sorted({str(image.get("split")) for image in data["images"]})
        raise ValueError(f"{path}: has no {split!r} images (splits found: {', '.join(splits)}).")
    return images


def _karpathy_set(path: Path, root: Path, captions_per_image: int | None) -> RetrievalSet:
    pairs = []
    for number, image in enumerate(_karpathy_images(path)):
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
        return _karpathy_set(path, root, captions_per_image)
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
    rows = _read_jsonl(path, expected)
    root = _default_root(path, images_root, "images")
    pairs = []
    for number, row in enumerate(rows, 1):
        if "split" not in row:
            raise ValueError(f"{path}, row {number}: has no 'split'; expected {expected}.")
        if row["split"] == split:
            where = f"{path}, row {number}"
            pairs.append(
                (
                    root / _text(row.get("image_file"), where, "an image_file"),
                    _text(row.get("description"), where, "a description"),
                )
            )
    if not pairs:
        splits = sorted({str(row["split"]) for row in rows})
        raise ValueError(f"{path}: has no {split!r} rows (splits found: {', '.join(splits) or 'none'}).")
    return _from_pairs(pairs, path)


def load_jsonl(path: str | os.PathLike, images_root: str | os.PathLike | None = None) -> RetrievalSet:
    """Any retrieval set as JSON lines: {"image": path, "caption": text}; lines sharing an image share it."""
    path = Path(path)
    expected = 'one {"image": path, "caption": text} per line'
    root = _default_root(path, images_root)
    pairs = []
    for number, row in enumerate(_read_jsonl(path, expected), 1):
        where = f"{path}, row {number}"
        pairs.append(
            (root / _text(row.get("image"), where, "an image path"), _text(row.get("caption"), where, "a caption"))
        )
    return _from_pairs(pairs, path)


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
# Metrics
# ----------------------------------------------------------------------------------------------------------


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_of_caption: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, float]:
    """Recall@k in percent, by cosine similarity: `i2t_R@k` and `t2i_R@k` for each k.

    Image to text: a hit when any caption of the image is among the k best; text to image: when its image is.
    A query's rank counts the candidates scoring strictly higher than its best true match, so ties (e.g. the
    same caption text under two images) do not count against it.
    """
    images = F.normalize(image_features.detach().float().cpu(), dim=-1)
    texts = F.normalize(text_features.detach().float().cpu(), dim=-1)
    owners = torch.as_tensor(image_of_caption, dtype=torch.long).cpu()
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"Expected [N, d] features of one width, got {tuple(images.shape)} and {tuple(texts.shape)}.")
    if owners.shape != (texts.shape[0],) or owners.min() < 0 or owners.max() >= images.shape[0]:
        raise ValueError(
            f"image_of_caption needs one index in 0..{images.shape[0] - 1} per caption ({texts.shape[0]})."
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"Every k must be at least 1, got {tuple(ks)}.")

    chunk = max(1, 2**24 // max(images.shape[0], texts.shape[0]))  # bounds the similarity block to 64 MB
    i2t_rank = torch.empty(images.shape[0], dtype=torch.long)
    for start in range(0, images.shape[0], chunk):
        similarity = images[start : start + chunk] @ texts.T
        rows = torch.arange(start, start + similarity.shape[0]).unsqueeze(1)
        best_true = similarity.masked_fill(owners.unsqueeze(0) != rows, float("-inf")).amax(dim=1, keepdim=True)
        i2t_rank[start : start + chunk] = (similarity > best_true).sum(dim=1)
    t2i_rank = torch.empty(texts.shape[0], dtype=torch.long)
    for start in range(0, texts.shape[0], chunk):
        similarity = texts[start : start + chunk] @ images.T
        true = similarity.gather(1, owners[start : start + chunk].unsqueeze(1))
        t2i_rank[start : start + chunk] = (similarity > true).sum(dim=1)

    metrics = {f"i2t_R@{k}": 100.0 * int((i2t_rank < k).sum()) / len(i2t_rank) for k in ks}
    metrics.update({f"t2i_R@{k}": 100.0 * int((t2i_rank < k).sum()) / len(t2i_rank) for k in ks})
    return metrics


# ----------------------------------------------------------------------------------------------------------
# Models and encoding
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalModel:
    """A model to evaluate and the text length it reads captions at.

    `source`: anything `longclip convert` reads. `max_length`: None for all of the model's positions (248 for
    Long-CLIP); 77 for a CLIP baseline (captions truncated as CLIP truncates them). `open_clip_model`: the
    open_clip architecture of an OpenAI-layout file that does not follow OpenAI conventions.
    """

    source: str | os.PathLike
    max_length: int | None = None
    open_clip_model: str | None = None


def image_transform(
    image_size: int, mean: Sequence[float] = CLIP_IMAGE_MEAN, std: Sequence[float] = CLIP_IMAGE_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP's evaluation preprocessing: bicubic resize of the short side, centre crop, normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _image_statistics(path: Path) -> tuple[Sequence[float], Sequence[float]]:
    """Mean and std saved with a model folder (Hugging Face or open_clip), else OpenAI's."""
    mean = std = None
    if (path / "preprocessor_config.json").is_file():  # transformers 4.x
        config = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        mean, std = config.get("image_mean"), config.get("image_std")
    elif (path / "processor_config.json").is_file():  # transformers 5.x: the image processor nested
        config = json.loads((path / "processor_config.json").read_text(encoding="utf-8")).get("image_processor", {})
        mean, std = config.get("image_mean"), config.get("image_std")
    elif (path / "open_clip_config.json").is_file():
        config = json.loads((path / "open_clip_config.json").read_text(encoding="utf-8")).get("preprocess_cfg", {})
        mean, std = config.get("mean"), config.get("std")
    return (mean, std) if mean and std else (CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)


def load_model(
    spec: EvalModel | str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[CLIPModel, LongCLIPTokenizer, Callable[[Image.Image], torch.Tensor]]:
    """(CLIPModel, tokenizer at the text length to evaluate at, image transform) for a checkpoint."""
    spec = spec if isinstance(spec, EvalModel) else EvalModel(spec)
    path = resolve(spec.source)
    checkpoint = load_checkpoint(path, open_clip_model=spec.open_clip_model)
    if not checkpoint.has_vision:
        raise CheckpointError(
            f"{spec.source}: is a text encoder only; evaluation needs the full CLIP model (text and vision towers)."
        )
    positions = checkpoint.num_positions
    max_length = spec.max_length or positions
    if not 3 <= max_length <= positions:
        raise ValueError(f"{spec.source}: cannot read captions at {max_length} tokens; it has {positions} positions.")
    tokenizer = LongCLIPTokenizer.from_pretrained(path, model_max_length=max_length)
    if len(tokenizer) > checkpoint.text_config.vocab_size:
        raise CheckpointError(
            f"{spec.source}: its tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{checkpoint.text_config.vocab_size}."
        )
    model = build_clip_model(checkpoint, dtype=dtype).to(device)
    transform = image_transform(model.config.vision_config.image_size, *_image_statistics(path))
    return model, tokenizer, transform


def _pooled(output: Any) -> torch.Tensor:
    """Projected features from `get_*_features`: a tensor in transformers 4.x, a model output in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"{path}: cannot read this image ({error}).") from None


class _ProcessorTransform:
    """A Hugging Face image processor as a one-image transform."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(_load_rgb(self.paths[index]))


@torch.no_grad()
def encode_images(
    model: CLIPModel,
    transform: Callable[[Image.Image], torch.Tensor] | Any,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 64,
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalised image features [len(paths), d] (float32, on the CPU).

    `transform` maps a PIL image to a [3, H, W] tensor (`image_transform`), or is a Hugging Face image processor.
    """
    if not paths:
        raise ValueError("No images to encode.")
    if hasattr(transform, "preprocess"):  # a Hugging Face image processor
        transform = _ProcessorTransform(transform)
    parameter = next(model.parameters())
    loader = torch.utils.data.DataLoader(
        _ImageFiles([Path(p) for p in paths], transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=parameter.device.type == "cuda",
    )
    features = []
    with tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
        for pixels in loader:
            output = model.get_image_features(pixel_values=pixels.to(parameter.device, parameter.dtype))
            features.append(_pooled(output).float().cpu())
            bar.update(len(pixels))
    return F.normalize(torch.cat(features), dim=-1)


@torch.no_grad()
def encode_texts(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    max_length: int | None = None,
    batch_size: int = 256,
    *,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalised text features [len(captions), d] (float32, on the CPU).

    Captions are truncated at `max_length` tokens (default: all the model's positions, 248 for Long-CLIP; 77 for
    a CLIP baseline). Batches are padded to their longest caption only: the text attention is causal and the
    features are read at the end-of-text token, so later padding cannot change them.
    """
    if not captions:
        raise ValueError("No captions to encode.")
    positions = model.config.text_config.max_position_embeddings
    max_length = max_length or positions
    if max_length > positions:
        raise ValueError(f"max_length={max_length} exceeds the model's {positions} text positions.")
    device = next(model.parameters()).device
    features = []
    with tqdm(total=len(captions), desc="texts", unit="text", disable=not progress) as bar:
        for start in range(0, len(captions), batch_size):
            batch = list(captions[start : start + batch_size])
            ids = tokenizer(batch, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
            output = model.get_text_features(input_ids=ids["input_ids"].to(device))
            features.append(_pooled(output).float().cpu())
            bar.update(len(batch))
    return F.normalize(torch.cat(features), dim=-1)


def zero_shot_accuracy(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerBase,
    image_folder: str | os.PathLike | ZeroShotSet,
    templates: Sequence[str] | None = None,
    *,
    transform: Callable[[Image.Image], torch.Tensor] | Any = None,
    max_length: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    ks: Sequence[int] = ZERO_SHOT_KS,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot top-k accuracy in percent (`top1`, `top5`); k is capped at the number of classes.

    Each class embedding is the normalised mean of its normalised template embeddings (as in CLIP).
    `templates` overrides those of a ZeroShotSet; the default transform is CLIP's at the model's image size.
    """
    if isinstance(image_folder, ZeroShotSet):
        dataset = image_folder
        if templates is not None:
            dataset = ZeroShotSet(dataset.images, dataset.labels, dataset.class_names, tuple(templates))
    else:
        dataset = load_zero_shot(image_folder, templates or SIMPLE_TEMPLATES)
    if transform is None:
        transform = image_transform(model.config.vision_config.image_size)
    prompts = [template.format(name) for name in dataset.class_names for template in dataset.templates]
    prompt_features = encode_texts(model, tokenizer, prompts, max_length, batch_size * 4, progress=progress)
    classes = F.normalize(prompt_features.view(len(dataset.class_names), len(dataset.templates), -1).mean(1), dim=-1)
    images = encode_images(model, transform, dataset.images, batch_size, num_workers=num_workers, progress=progress)
    scores = images @ classes.T
    labels = torch.as_tensor(dataset.labels).unsqueeze(1)
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    return {f"top{k}": 100.0 * int((top[:, :k] == labels).any(dim=1).sum()) / len(labels) for k in ks}


# ----------------------------------------------------------------------------------------------------------
# Running everything and writing the results
# ----------------------------------------------------------------------------------------------------------


def _describe(task: RetrievalSet | ZeroShotSet) -> dict[str, Any]:
    if isinstance(task, RetrievalSet):
        return {"kind": "retrieval", "images": len(task.images), "captions": len(task.captions)}
    return {
        "kind": "zero-shot",
        "images": len(task.images),
        "classes": len(task.class_names),
        "templates": len(task.templates),
    }


def evaluate(
    models: Mapping[str, EvalModel | str | os.PathLike],
    tasks: Mapping[str, RetrievalSet | ZeroShotSet] | Sequence[tuple[str, RetrievalSet | ZeroShotSet]],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model on every task; write `out_dir/results.{json,md,png}`; return the results.

    `models` maps a display name to a source (or an `EvalModel`, e.g. with max_length=77 for a CLIP baseline);
    `tasks` maps a benchmark name to a `RetrievalSet` or `ZeroShotSet`. Models are loaded one at a time, and the
    results are rewritten after each, so an interrupted run keeps those already finished.
    """
    specs = {name: spec if isinstance(spec, EvalModel) else EvalModel(spec) for name, spec in models.items()}
    tasks = dict(tasks)
    if not specs:
        raise ValueError("Give at least one model to evaluate.")
    if not tasks:
        raise ValueError("Give at least one benchmark to evaluate on.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but torch sees no CUDA GPU here.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "models": {},
        "benchmarks": {name: _describe(task) for name, task in tasks.items()},
        "results": {},
    }
    options = dict(num_workers=num_workers, progress=progress)
    for name, spec in specs.items():
        logger.info("evaluating %s (%s)", name, spec.source)
        model, tokenizer, transform = load_model(spec, device, dtype)
        max_length = tokenizer.model_max_length
        report["models"][name] = {
            "source": str(spec.source),
            "max_length": max_length,
            "image_size": model.config.vision_config.image_size,
        }
        scores: dict[str, dict[str, float]] = {}
        for task_name, task in tasks.items():
            logger.info("%s: %s", name, task_name)
            if isinstance(task, RetrievalSet):
                images = encode_images(model, transform, task.images, batch_size, **options)
                texts = encode_texts(model, tokenizer, task.captions, max_length, batch_size * 4, progress=progress)
                scores[task_name] = retrieval_metrics(images, texts, task.image_of_caption)
            else:
                scores[task_name] = zero_shot_accuracy(
                    model, tokenizer, task, transform=transform, max_length=max_length, batch_size=batch_size, **options
                )
        report["results"][name] = scores
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_results(report, out_dir)
    return report


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, renamed over `path` once complete."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


_TABLE_COLUMNS = (
    ("I2T R@1", "i2t_R@1"),
    ("I2T R@5", "i2t_R@5"),
    ("I2T R@10", "i2t_R@10"),
    ("T2I R@1", "t2i_R@1"),
    ("T2I R@5", "t2i_R@5"),
    ("T2I R@10", "t2i_R@10"),
    ("top-1", "top1"),
    ("top-5", "top5"),
)


def results_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table: one row per model and benchmark; recall and accuracy in percent."""
    header = ["model", "tokens", "benchmark", *(title for title, _ in _TABLE_COLUMNS)]
    lines = [
        "# Evaluation results",
        "",
        "Recall@k (image to text, text to image) and zero-shot accuracy, in percent.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(_TABLE_COLUMNS)) + "|",
    ]
    for name, scores in report["results"].items():
        tokens = report["models"][name]["max_length"]
        for benchmark, values in scores.items():
            cells = [f"{values[key]:.1f}" if key in values else "–" for _, key in _TABLE_COLUMNS]
            lines.append("| " + " | ".join([name, str(tokens), benchmark, *cells]) + " |")
    lines += ["", "Models:", ""]
    lines += [f"- {name}: `{model['source']}`" for name, model in report["models"].items()]
    lines += ["", "Benchmarks:", ""]
    for name, about in report["benchmarks"].items():
        counts = ", ".join(f"{value} {key}" for key, value in about.items() if key != "kind")
        lines.append(f"- {name} ({about['kind']}): {counts}")
    return "\n".join(lines) + "\n"


def results_figure(report: Mapping[str, Any]) -> Any:
    """A bar chart of R@1 (I2T and T2I) and zero-shot top-1 per benchmark, one bar per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves the global backend alone
    from matplotlib.figure import Figure

    groups: list[tuple[str, str, str]] = []  # (label, benchmark, metric)
    for benchmark, about in report["benchmarks"].items():
        if about["kind"] == "retrieval":
            groups += [(f"{benchmark}\nI2T R@1", benchmark, "i2t_R@1"), (f"{benchmark}\nT2I R@1", benchmark, "t2i_R@1")]
        else:
            groups.append((f"{benchmark}\ntop-1", benchmark, "top1"))
    names = list(report["results"])
    figure = Figure(figsize=(min(24.0, 3.0 + len(groups) * (0.4 + 0.3 * len(names))), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(names))
    for offset, name in enumerate(names):
        scores = report["results"][name]
        values = [scores.get(benchmark, {}).get(metric, float("nan")) for _, benchmark, metric in groups]
        positions = [index + (offset - (len(names) - 1) / 2) * width for index in range(len(groups))]
        bars = axes.bar(positions, values, width, label=name)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(groups)), [label for label, _, _ in groups], fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("R@1 / top-1 (%)")
    axes.set_title("Retrieval R@1 and zero-shot top-1")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return figure


def write_results(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write `results.json`, `results.md` and `results.png` into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.md", out_dir / "results.png"]
    _atomic_write(paths[0], lambda f: f.write((json.dumps(report, indent=2) + "\n").encode("utf-8")))
    _atomic_write(paths[1], lambda f: f.write(results_markdown(report).encode("utf-8")))
    _atomic_write(paths[2], lambda f: results_figure(report).savefig(f, format="png", dpi=120))
    return paths


# ----------------------------------------------------------------------------------------------------------
# Command line (`longclip eval`)
# ----------------------------------------------------------------------------------------------------------

_IMAGE_ROOT_BENCHMARKS = ("sharegpt4v", "coco", "flickr30k", "docci", "jsonl")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `longclip eval`."""
    models = parser.add_argument_group("models (at least one)")
    models.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]SRC",
        help="model to evaluate at all its text positions (248 tokens for Long-CLIP); repeat for more",
    )
    models.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="[NAME=]SRC",
        help=f"model evaluated with captions truncated at {CLIP_POSITIONS} tokens, as CLIP reads them "
        "(e.g. openai/clip-vit-large-patch14); repeat for more",
    )
    models.add_argument(
        "--open-clip-model",
        metavar="NAME",
        help="open_clip architecture name or config JSON for OpenAI-layout files that do not follow OpenAI "
        "conventions (default: OpenAI conventions)",
    )
    benchmarks = parser.add_argument_group("benchmarks (at least one; only those given are run)")
    benchmarks.add_argument("--urban1k", metavar="DIR", help="Urban-1k folder: image/NNN.jpg + caption/NNN.txt")
    benchmarks.add_argument(
        "--sharegpt4v", metavar="JSON", help="ShareGPT4V JSON; its first 1,000 entries are ShareGPT4V-1k"
    )
    benchmarks.add_argument(
        "--coco",
        metavar="JSON",
        help="COCO captions JSON (captions_val2017.json: COCO 5k), or the Karpathy dataset_coco.json (test split)",
    )
    benchmarks.add_argument(
        "--coco-karpathy", metavar="JSON", help="keep only the Karpathy 5k test split of this dataset_coco.json"
    )
    benchmarks.add_argument(
        "--flickr30k",
        metavar="JSON_OR_TOKEN_FILE",
        help="Karpathy dataset_flickr30k.json (its 1k-image test split) or results_20130124.token (all images)",
    )
    benchmarks.add_argument(
        "--flickr30k-karpathy", metavar="JSON", help="keep only the Karpathy test split of a --flickr30k token file"
    )
    benchmarks.add_argument("--docci", metavar="JSONL", help="DOCCI docci_descriptions.jsonlines (test split)")
    benchmarks.add_argument("--jsonl", metavar="FILE", help='any set: one {"image": path, "caption": text} per line')
    benchmarks.add_argument(
        "--zero-shot", metavar="DIR", help="image folder with one sub-folder per class (ImageNet's val layout)"
    )
    benchmarks.add_argument(
        "--templates",
        default="openai",
        metavar="openai|simple|FILE",
        help='zero-shot prompts: CLIP\'s 80 ImageNet templates (default), "a photo of a {}.", or a file with one '
        "template per line",
    )
    benchmarks.add_argument(
        "--class-names",
        metavar="FILE",
        help="zero-shot class names: one per line in sorted folder order, or a JSON {folder: name} (default: "
        "folder names with underscores as spaces; ImageNet's WordNet-id folders get CLIP's class names)",
    )
    roots = parser.add_argument_group("image folders")
    roots.add_argument(
        "--images",
        metavar="ROOT",
        help="folder the image paths of the JSON/JSONL benchmarks are relative to (default: the file's folder; "
        "for DOCCI and Flickr30k its images/ or flickr30k-images/ sub-folder)",
    )
    for name in _IMAGE_ROOT_BENCHMARKS:
        roots.add_argument(f"--{name}-images", metavar="ROOT", help=f"--images for --{name} only")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="folder for results.json, results.md, results.png")
    run.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (texts: 4x as many; default 64)"
    )
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model precision (default fp32)")
    run.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="image-loading processes (default: up to 8)",
    )


def _default_model_name(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_file():
        return path.stem
    return path.resolve().name if path.exists() else source


def parse_models(
    values: Sequence[str], baselines: Sequence[str] = (), open_clip_model: str | None = None
) -> dict[str, EvalModel]:
    """`[NAME=]SRC` arguments as {name: EvalModel}; baselines read captions at 77 tokens."""
    models: dict[str, EvalModel] = {}
    for value, max_length in [(v, None) for v in values] + [(v, CLIP_POSITIONS) for v in baselines]:
        name, equals, source = value.partition("=")
        if not (equals and name and source) or Path(value).expanduser().exists():
            name, source = _default_model_name(value), value
            if max_length is not None:
                name += f" ({max_length} tokens)"
        if name in models:
            raise ValueError(f"Two models are named {name!r}; name them apart with NAME=SRC.")
        models[name] = EvalModel(source, max_length, open_clip_model)
    return models


def _read_class_names(path: str) -> list[str] | dict[str, str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; expected class names, one per line, or a JSON object.")
    if file.suffix == ".json":
        names = _read_json(file, "a JSON object {folder: class name}")
        if not isinstance(names, dict):
            raise ValueError(f"{file}: expected a JSON object {{folder: class name}}.")
        return names
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def tasks_from_args(args: argparse.Namespace) -> dict[str, RetrievalSet | ZeroShotSet]:
    """Load the benchmarks named on the command line (only those given)."""

    def root(name: str) -> str | None:
        return getattr(args, f"{name}_images", None) or args.images

    if args.coco_karpathy and not args.coco:
        raise ValueError("--coco-karpathy restricts --coco; give the captions JSON with --coco.")
    if args.flickr30k_karpathy and not args.flickr30k:
        raise ValueError("--flickr30k-karpathy restricts --flickr30k; give the token file with --flickr30k.")
    tasks: dict[str, RetrievalSet | ZeroShotSet] = {}
    if args.urban1k:
        tasks["urban1k"] = load_urban1k(args.urban1k)
    if args.sharegpt4v:
        tasks["sharegpt4v-1k"] = load_sharegpt4v(args.sharegpt4v, root("sharegpt4v"))
    if args.coco:
        tasks["coco"] = load_coco(args.coco, root("coco"), karpathy=args.coco_karpathy)
    if args.flickr30k:
        tasks["flickr30k"] = load_flickr30k(args.flickr30k, root("flickr30k"), karpathy=args.flickr30k_karpathy)
    if args.docci:
        tasks["docci"] = load_docci(args.docci, root("docci"))
    if args.jsonl:
        name = Path(args.jsonl).stem
        tasks[name if name not in tasks else f"{name} (jsonl)"] = load_jsonl(args.jsonl, root("jsonl"))
    if args.zero_shot:
        class_names = _read_class_names(args.class_names) if args.class_names else None
        tasks["zero-shot"] = load_zero_shot(args.zero_shot, read_templates(args.templates), class_names)
    return tasks


def run_eval(args: argparse.Namespace) -> str:
    """Carry out `longclip eval`; return the line to print."""
    models = parse_models(args.model, args.baseline, args.open_clip_model)
    if not models:
        raise ValueError("Give a model to evaluate: --model [NAME=]SRC (or --baseline [NAME=]SRC).")
    benchmark_flags = "--urban1k, --sharegpt4v, --coco, --flickr30k, --docci, --jsonl or --zero-shot"
    if not any(
        getattr(args, flag) for flag in ("urban1k", "sharegpt4v", "coco", "flickr30k", "docci", "jsonl", "zero_shot")
    ):
        raise ValueError(f"Give at least one benchmark: {benchmark_flags}.")
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers}: give 0 or more.")
    tasks = tasks_from_args(args)
    report = evaluate(
        models,
        tasks,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        dtype=DTYPES[args.dtype],
        num_workers=args.workers,
    )
    headline = []
    for name, scores in report["results"].items():
        for benchmark, values in scores.items():
            if "i2t_R@1" in values:
                headline.append(f"{name} {benchmark} I2T/T2I R@1 {values['i2t_R@1']:.1f}/{values['t2i_R@1']:.1f}")
            else:
                headline.append(f"{name} {benchmark} top-1 {values['top1']:.1f}")
    return f"wrote results.json, results.md, results.png to {args.out}: " + "; ".join(headline)
