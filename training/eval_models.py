"""A (Long-)CLIP model under evaluation: loading it, encoding images and captions, zero-shot accuracy.

Models load through the library's `load_checkpoint` + `build_clip_model`, so every layout `longclip convert`
reads works. Captions are tokenized with CLIP's exact ids (`LongCLIPTokenizer`) at all of the model's positions
(248 for Long-CLIP), or truncated at 77 tokens for a CLIP baseline; images are read by training's image loader
and preprocessed as CLIP does (bicubic resize of the short side, centre crop to the model's image size, OpenAI
mean and std).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPModel, PreTrainedTokenizerBase

from longclip_diffusers.checkpoint import CheckpointError
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.hub import resolve
from longclip_diffusers.text_encoder import build_clip_model
from longclip_diffusers.tokenizer import LongCLIPTokenizer
from longclip_diffusers.writing import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD

from .eval_sets import SIMPLE_TEMPLATES, ZeroShotSet, load_zero_shot
from .images import UnusableSample, load_image
from .metrics import ZERO_SHOT_KS, top_k_accuracy
from .text_files import read_json_file

__all__ = ["EvalModel", "encode_images", "encode_texts", "image_transform", "load_model", "zero_shot_accuracy"]


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
        config = _json_object(path / "preprocessor_config.json")
        mean, std = config.get("image_mean"), config.get("image_std")
    elif (path / "processor_config.json").is_file():  # transformers 5.x: the image processor nested
        config = _json_object(path / "processor_config.json").get("image_processor", {})
        mean, std = config.get("image_mean"), config.get("image_std")
    elif (path / "open_clip_config.json").is_file():
        config = _json_object(path / "open_clip_config.json").get("preprocess_cfg", {})
        mean, std = config.get("mean"), config.get("std")
    return (mean, std) if mean and std else (CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)


def _json_object(path: Path) -> dict:
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: holds a JSON {type(config).__name__}, not the object of a config.")
    return config


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
        try:
            image = load_image(self.paths[index])  # training's image loader: a benchmark skips nothing, though
        except UnusableSample as problem:
            raise ValueError(f"{self.paths[index]}: cannot read this image ({problem.reason}).") from None
        return self.transform(image)


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
    return top_k_accuracy(images @ classes.T, dataset.labels, ks)
