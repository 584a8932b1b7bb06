"""`longclip comfy-export`: the ComfyUI custom-node package, and Long-CLIP text encoders ComfyUI loads natively.

`export_comfyui(OUT, [SRC, ...])` writes, into a ComfyUI folder or any other:
- `OUT/custom_nodes/longclip_diffusers_nodes/`: a shim importing the nodes of the installed `longclip_diffusers`
  package (`__init__.py`), registry metadata (`pyproject.toml`, `requirements.txt`), a README and example
  workflows;
- `OUT/models/text_encoders/<name>.safetensors` for each SRC: the single-file layout ComfyUI core detects as
  Long-CLIP-L (`convert(SRC, ..., to="comfyui")`).
The package folder is not called `longclip_diffusers`: ComfyUI imports a custom node under its folder name,
which would then shadow the library it imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .convert import DTYPES, POSITION_KEY, convert
from .formats import atomic_output, safetensors_shapes
from .hub import WEIGHT_SUFFIXES
from .stretch import CLIP_POSITIONS

NODE_PACKAGE = "longclip_diffusers_nodes"
CUSTOM_NODES = Path("custom_nodes")
TEXT_ENCODERS = Path("models") / "text_encoders"
DEFAULT_ENCODER_NAME = "LongCLIP-L.safetensors"
_WEIGHT_FILE_STEMS = ("model", "pytorch_model", "open_clip_pytorch_model", "open_clip_model")
_SUBFOLDER_NAMES = ("text_encoder", "text_encoder_2")

_SHIM = '''"""Long-CLIP nodes for ComfyUI (category "Long-CLIP"), from the installed `longclip-diffusers` package."""

try:
    from longclip_diffusers.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as error:
    if error.name not in ("longclip_diffusers", "longclip_diffusers.comfyui"):
        raise
    raise ImportError(
        "Long-CLIP nodes need longclip-diffusers>={version} in the Python that runs ComfyUI: "
        "run `python -m pip install -U longclip-diffusers` with that Python, then restart ComfyUI."
    ) from error

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''

_PYPROJECT = """[project]
name = "longclip-diffusers-nodes"
version = "{version}"
description = "Long-CLIP text encoders for SD 1.5 and SDXL in ComfyUI: 248-token windows, prompts past 248 tokens."
license = {{ text = "Apache-2.0" }}
requires-python = ">=3.10"
dependencies = ["longclip-diffusers>={version}"]

[project.urls]
Documentation = "https://pypi.org/project/longclip-diffusers/"

[tool.comfy]
PublisherId = ""  # your Comfy Registry publisher id; needed only to publish
DisplayName = "Long-CLIP (longclip-diffusers)"
Icon = ""
includes = []
"""

_README = """# Long-CLIP for ComfyUI

Nodes (category **Long-CLIP**) that condition SD 1.5 and SDXL on prompts far past 77 tokens with
[Long-CLIP](https://arxiv.org/abs/2403.15378) text encoders: 248 tokens per window, longer prompts in more
windows, A1111 weighting (`(word)`, `(word:1.3)`, `[word]`, `BREAK`). They run the `longclip-diffusers` library,
so a prompt gives the same conditioning as its diffusers pipelines (`LongCLIPStableDiffusionPipeline`,
`LongCLIPStableDiffusionXLPipeline`).

## Install

1. With the Python that runs ComfyUI: `python -m pip install "longclip-diffusers>={version}"`
   (ComfyUI-Manager installs it from `requirements.txt`).
2. Put this folder in `ComfyUI/custom_nodes/`, and text encoders in `ComfyUI/models/text_encoders/`;
   `longclip comfy-export COMFYUI_DIR --encoder SRC` writes both.
3. Restart ComfyUI.

## Nodes

- **Load Long-CLIP** (`LongCLIPLoader`) -> `LONGCLIP`: `text_encoder`, a file in `models/text_encoders` or
  `models/clip`; `clip_type`, `clip_l` (a Long-CLIP-L) or `clip_g` (SDXL's OpenCLIP-bigG).
- **Long-CLIP Text Encode (SD 1.5)** (`LongCLIPTextEncode`) -> `CONDITIONING`: `long_clip`, `text`; optional
  `clip_skip`, `weighting`, `max_windows` (0: no limit).
- **Long-CLIP Text Encode (SDXL)** (`LongCLIPTextEncodeSDXL`) -> `CONDITIONING` with `pooled_output`:
  `long_clip` (clip_l), `clip_g`, the sizes of CLIPTextEncodeSDXL, `text`, `strategy` (`chunk` or `stretch`);
  optional `text_g` (bigG's prompt, empty: `text`), `clip_skip`, `weighting`, `max_windows`.
- **Long-CLIP from CLIP (stretch)** (`LongCLIPStretch`) -> `LONGCLIP`: `clip` (e.g. from Load Checkpoint),
  `clip_type`, `keep`, `ratio`.

- The loader reads single files (ComfyUI's layout, published Long-CLIP `.pt` files) and any file of a Hugging
  Face, diffusers or open_clip folder placed in the model folder; it lists only ComfyUI's model folders.
- SDXL's bigG has no long version: `chunk` (default) reads the 248-token windows in 77-token chunks, aligned token
  for token with Long-CLIP-L; `stretch` stretches it without training. Take bigG from the checkpoint with
  "Long-CLIP from CLIP" (`clip_type` clip_g, `ratio` 1), or load a `clip_g` file as clip_g.
- "Long-CLIP from CLIP" with `ratio` 4 makes a training-free 248-position encoder from a 77-position one.
- Encode the negative prompt with a second encode node. LoRA loaders patch ComfyUI's CLIP, not these
  encoders; "Long-CLIP from CLIP" reads a CLIP with its patches applied.
- ComfyUI's own CLIP loaders also load the exported `.safetensors` natively as Long-CLIP-L (with ComfyUI's
  prompt handling instead of these nodes').

## Example workflow (SDXL, API format)

`workflows/longclip_sdxl_api.json` (drop it on ComfyUI; `workflows/longclip_sd15_api.json` for SD 1.5):

```json
{workflow}
```
"""


def example_workflow(encoder_name: str = DEFAULT_ENCODER_NAME, sdxl: bool = True) -> dict:
    """A text-to-image workflow in ComfyUI's API format using these nodes (SDXL, or SD 1.5)."""
    prompt = (
        "A highly detailed oil painting of an old stone lighthouse on a rugged cliff at dusk, waves crashing on "
        "the black rocks below, seagulls circling in a sky streaked with orange and violet, a warm light glowing "
        "in the lantern room, a narrow staircase winding down to a small pier where fishermen mend their nets"
    )
    negative = "blurry, low quality, watermark"
    size = 1024 if sdxl else 512
    nodes: dict[str, dict] = {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors" if sdxl else "v1-5-pruned-emaonly.safetensors"},
        },
        "2": {"class_type": "LongCLIPLoader", "inputs": {"text_encoder": encoder_name, "clip_type": "clip_l"}},
    }
    if sdxl:
        nodes["3"] = {
            "class_type": "LongCLIPStretch",
            "inputs": {"clip": ["1", 1], "clip_type": "clip_g", "keep": 20, "ratio": 1},
        }
        sizes = dict(width=size, height=size, crop_w=0, crop_h=0, target_width=size, target_height=size)
        for node, text in (("4", prompt), ("5", negative)):
            nodes[node] = {
                "class_type": "LongCLIPTextEncodeSDXL",
                "inputs": {"long_clip": ["2", 0], "clip_g": ["3", 0], **sizes, "text": text, "strategy": "chunk"},
            }
    else:
        for node, text in (("4", prompt), ("5", negative)):
            nodes[node] = {"class_type": "LongCLIPTextEncode", "inputs": {"long_clip": ["2", 0], "text": text}}
    nodes["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    nodes["7"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": ["4", 0],
            "negative": ["5", 0],
            "latent_image": ["6", 0],
            "seed": 0,
            "steps": 30,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    }
    nodes["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
    nodes["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "longclip"}}
    return nodes


def format_workflow(workflow: dict) -> str:
    """API-format JSON with one node a line."""
    lines = [f"  {json.dumps(node)}: {json.dumps(spec)}" for node, spec in workflow.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def write_node_package(folder: Path, encoder_name: str = DEFAULT_ENCODER_NAME) -> None:
    """Write the custom-node package (shim, registry metadata, README, example workflows) into `folder`."""
    workflows = {
        "longclip_sdxl_api.json": example_workflow(encoder_name, sdxl=True),
        "longclip_sd15_api.json": example_workflow(encoder_name, sdxl=False),
    }
    (folder / "workflows").mkdir(parents=True)
    for name, workflow in workflows.items():
        (folder / "workflows" / name).write_text(format_workflow(workflow) + "\n", encoding="utf-8")
    readme = _README.format(version=__version__, workflow=format_workflow(workflows["longclip_sdxl_api.json"]))
    files = {
        "__init__.py": _SHIM.format(version=__version__),
        "pyproject.toml": _PYPROJECT.format(version=__version__),
        "requirements.txt": f"longclip-diffusers>={__version__}\n",
        "README.md": readme,
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def encoder_file_name(source: str | os.PathLike) -> str:
    """The `models/text_encoders` file name for a source: its file or folder name, or a Hub repo's name.

    Generic names say where they come from: `X/model.safetensors` -> `X`, `X/text_encoder_2` -> `X-text_encoder_2`.
    """
    path = Path(source).expanduser()
    path = path.resolve() if path.exists() else Path(str(source).rstrip("/\\"))
    if path.suffix in WEIGHT_SUFFIXES:
        if path.stem not in _WEIGHT_FILE_STEMS or not path.parent.name:
            return f"{path.stem}.safetensors"
        path = path.parent
    name = path.name
    if name in _SUBFOLDER_NAMES and path.parent.name:
        name = f"{path.parent.name}-{name}"
    return f"{name}.safetensors"


def _is_long_clip_l(path: Path) -> bool:
    """Whether an exported file is what ComfyUI detects as Long-CLIP-L (for the example workflow)."""
    shapes = safetensors_shapes(path)
    rows = shapes.get(POSITION_KEY, [0])[0]
    return rows > CLIP_POSITIONS and not any(".layers.22." in key or ".layers.30." in key for key in shapes)


def export_comfyui(
    out: str | os.PathLike,
    encoders: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    *,
    dtype: str | None = None,
) -> Path:
    """Write the custom-node package and the `encoders` (any source `longclip convert` reads) under `out`.

    `out` may be an existing ComfyUI folder: only the package folder and the encoder files are written. All are
    built in a staging folder inside `out` first, so a source that fails leaves `out` as it was; then each is
    renamed into place. Existing ones are replaced only with `overwrite=True`. `dtype` (fp32, fp16, bf16)
    converts the encoders' weights. Returns `out`.
    """
    out = Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    names = [encoder_file_name(source) for source in encoders]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Several encoders would be written as {', '.join(duplicates)}; rename the sources or export them "
            "one at a time into different folders."
        )
    targets = [CUSTOM_NODES / NODE_PACKAGE, *(TEXT_ENCODERS / name for name in names)]
    existing = [str(out / target) for target in targets if (out / target).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)}: already exists; choose another output or pass --overwrite.")

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".longclip-comfy-export.", suffix=".tmp", dir=out))
    try:
        for source, name in zip(encoders, names, strict=True):
            convert(source, staging / TEXT_ENCODERS / name, to="comfyui", dtype=dtype)
        long_names = [name for name in names if _is_long_clip_l(staging / TEXT_ENCODERS / name)]
        write_node_package(staging / CUSTOM_NODES / NODE_PACKAGE, (long_names or [DEFAULT_ENCODER_NAME])[0])
        for target in targets:
            with atomic_output(out / target, overwrite=overwrite) as tmp:
                (staging / target).rename(tmp)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return out


def add_comfy_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `longclip comfy-export`."""
    parser.add_argument(
        "out",
        metavar="OUT",
        help="ComfyUI folder (or any folder): writes OUT/custom_nodes/longclip_diffusers_nodes/ and "
        "OUT/models/text_encoders/NAME.safetensors",
    )
    parser.add_argument(
        "--encoder",
        metavar="SRC",
        action="append",
        default=[],
        help="a text encoder to export (repeatable): any SRC `longclip convert` reads",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="store the encoders in this precision (default: as SRC)")
    parser.add_argument("--overwrite", action="store_true", help="replace the package folder and encoder files")


def run_comfy_export(args: argparse.Namespace) -> str:
    """Carry out `longclip comfy-export`; return the line to print."""
    out = export_comfyui(args.out, args.encoder, overwrite=args.overwrite, dtype=args.dtype)
    files = ", ".join(encoder_file_name(source) for source in args.encoder)
    encoders = f"; text encoders in {out / TEXT_ENCODERS}: {files}" if files else ""
    return f"wrote ComfyUI nodes to {out / CUSTOM_NODES / NODE_PACKAGE}{encoders}"
