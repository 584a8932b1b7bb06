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
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import __version__
from .atomic import atomic_output, refuse_file_above
from .checkpoint import Checkpoint, CheckpointError
from .comfyui.encoders import CLIP_TYPES, read_back_single_file, role_problem
from .convert import DTYPES
from .families import FAMILIES
from .formats import load_checkpoint
from .hub import WEIGHT_SUFFIXES
from .stretch import CLIP_POSITIONS
from .tokenizer import LongCLIPTokenizer, check_pair
from .writing import write_comfyui_text_encoder

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
description = "Long-CLIP text encoders for SD 1.5, SDXL, SD 3 and Flux in ComfyUI: 248-token windows, long prompts."
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

Nodes (category **Long-CLIP**) that condition SD 1.5, SDXL, SD 3 / 3.5 and Flux.1 on prompts far past 77 tokens
with [Long-CLIP](https://arxiv.org/abs/2403.15378) text encoders: 248 tokens per window, longer prompts in more
windows, A1111 weighting (`(word)`, `(word:1.3)`, `[word]`, `BREAK`). They run the `longclip-diffusers` library,
so a prompt gives the same conditioning as its diffusers pipelines (`LongCLIPStableDiffusionPipeline`,
`LongCLIPStableDiffusionXLPipeline`, `LongCLIPStableDiffusion3Pipeline`, `LongCLIPFluxPipeline`).

## Install

1. With the Python that runs ComfyUI: `python -m pip install "longclip-diffusers>={version}"`
   (ComfyUI-Manager installs it from `requirements.txt`).
2. Put this folder in `ComfyUI/custom_nodes/`, and text encoders in `ComfyUI/models/text_encoders/`;
   `longclip comfy-export COMFYUI_DIR --encoder SRC` writes both.
3. Restart ComfyUI.

## Nodes

- **Load Long-CLIP** (`LongCLIPLoader`) -> `LONGCLIP`: `text_encoder`, a file in `models/text_encoders` or
  `models/clip`; `clip_type`, `clip_l` (a Long-CLIP-L) or `clip_g` (SDXL's / SD 3's OpenCLIP-bigG).
- **Long-CLIP Text Encode (SD 1.5)** (`LongCLIPTextEncode`) -> `CONDITIONING`: `long_clip`, `text`; optional
  `clip_skip`, `weighting`, `max_windows` (0: no limit), `weight_style`.
- **Long-CLIP Text Encode (SDXL)** (`LongCLIPTextEncodeSDXL`) -> `CONDITIONING` with `pooled_output`:
  `long_clip` (clip_l), `clip_g`, the sizes of CLIPTextEncodeSDXL, `text`, `strategy` (`chunk` or `stretch`);
  optional `text_g` (bigG's prompt, empty: `text`), `clip_skip`, `weighting`, `max_windows`, `weight_style`.
- **Long-CLIP Text Encode (SD3)** (`LongCLIPTextEncodeSD3`) -> `CONDITIONING` with `pooled_output`, as
  CLIPTextEncodeSD3: `long_clip` (clip_l, with its text projection), `clip_g`, `t5`, `text`, `strategy`; optional
  `text_g`, `text_t5` (empty: `text`), `clip_skip`, `weighting`, `max_windows`, `max_sequence_length` (T5's
  tokens, default 256), `weight_style`.
- **Long-CLIP Text Encode (Flux)** (`LongCLIPTextEncodeFlux`) -> `CONDITIONING` with `pooled_output` and
  `guidance`, as CLIPTextEncodeFlux: `long_clip` (clip_l), `t5`, `text`, `guidance`; optional `text_t5`,
  `weighting`, `max_sequence_length` (default 512), `weight_style`.
- **T5 from CLIP (Long-CLIP)** (`LongCLIPT5FromCLIP`) -> `LONGCLIP_T5`: `clip`, a ComfyUI CLIP holding T5.
- **Long-CLIP from CLIP (stretch)** (`LongCLIPStretch`) -> `LONGCLIP`: `clip` (e.g. from Load Checkpoint),
  `clip_type`, `keep`, `ratio`.
- **Load Checkpoint (Long-CLIP)** (`LongCLIPCheckpointLoader`) -> `MODEL`, `CLIP`, `VAE`: `ckpt_name`, a
  checkpoint whose CLIP is a Long-CLIP (248 positions), which Load Checkpoint fails on.

- The loader reads single files (ComfyUI's layout, published Long-CLIP `.pt` files) and any file of a Hugging
  Face, diffusers or open_clip folder placed in the model folder; it lists only ComfyUI's model folders.
- SDXL's and SD 3's bigG has no long version: `chunk` (default) reads the 248-token windows in 77-token chunks,
  aligned token for token with Long-CLIP-L; `stretch` stretches it without training. Take bigG from the
  checkpoint with "Long-CLIP from CLIP" (`clip_type` clip_g, `ratio` 1), or load a `clip_g` file as clip_g.
- T5 comes from a ComfyUI CLIP that holds one: CLIPLoader (type `sd3`) with a t5xxl file (fp16, bf16, fp8 or
  scaled fp8) loads T5 alone; DualCLIPLoader, TripleCLIPLoader and checkpoints that bundle T5 work too. "T5 from
  CLIP" reads it in place: the nodes run the CLIP's own T5 (its dtype, ComfyUI's memory management), never a
  second copy.
- `weight_style` (every encode node): `a1111` (default) weights as A1111 and the diffusers pipelines; `comfyui` as
  ComfyUI's CLIPTextEncode (CLIP's and T5's states), for the same conditioning as core.
- Flux reads only Long-CLIP-L's pooled vector: up to 246 tokens of `text` (to the first `BREAK`); T5 reads up to
  `max_sequence_length` tokens. Weights scale T5's states (and CLIP's states for SD 3), never a pooled vector.
- "Long-CLIP from CLIP" with `ratio` 4 makes a training-free 248-position encoder from a 77-position one.
- Encode the negative prompt with a second encode node (Flux.1-dev runs at cfg 1: zero out the positive one).
  LoRA loaders patch ComfyUI's CLIP, not these encoders; "Long-CLIP from CLIP" and "T5 from CLIP" read a CLIP
  with its patches applied.
- ComfyUI's own CLIP loaders also load the exported `.safetensors` natively as Long-CLIP-L (with ComfyUI's
  prompt handling instead of these nodes').

## Example workflows (API format)

`workflows/longclip_sdxl_api.json` (drop it on ComfyUI; `longclip_sd15_api.json`, `longclip_sd3_api.json` and
`longclip_flux_api.json` for SD 1.5, SD 3.5 and Flux.1-dev), SDXL:

```json
{workflow}
```
"""

WORKFLOW_FAMILIES = tuple(key for key, family in FAMILIES.items() if family.comfy)
_EXAMPLE_PROMPT = (
    "A highly detailed oil painting of an old stone lighthouse on a rugged cliff at dusk, waves crashing on "
    "the black rocks below, seagulls circling in a sky streaked with orange and violet, a warm light glowing "
    "in the lantern room, a narrow staircase winding down to a small pier where fishermen mend their nets"
)
_EXAMPLE_NEGATIVE = "blurry, low quality, watermark"
# The model files each example workflow names, by role (a family's key for its model): the published models' usual
# file names.
DEFAULT_MODELS = {
    **{key: FAMILIES[key].comfy.model_file for key in WORKFLOW_FAMILIES},
    "vae": "ae.safetensors",
    "clip_g": "clip_g.safetensors",
    "t5": "t5xxl_fp16.safetensors",
}


def example_workflow(
    encoder_name: str = DEFAULT_ENCODER_NAME, family: str = "sdxl", models: Mapping[str, str] | None = None
) -> dict:
    """A text-to-image workflow in ComfyUI's API format using these nodes, for a family of `WORKFLOW_FAMILIES`:
    SD 1.5, SDXL, SD 3.5 (Large) or Flux.1-dev. `models` replaces file names of `DEFAULT_MODELS` (by role)."""
    if family not in WORKFLOW_FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {', '.join(WORKFLOW_FAMILIES)}.")
    spec = FAMILIES[family]
    workflow = spec.comfy
    names = {**DEFAULT_MODELS, **(models or {})}
    size = workflow.size
    nodes: dict[str, dict] = {
        "1": (
            {"class_type": "UNETLoader", "inputs": {"unet_name": names[family], "weight_dtype": "default"}}
            if workflow.diffusion_model_only
            else {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": names[family]}}
        ),
        "2": {"class_type": "LongCLIPLoader", "inputs": {"text_encoder": encoder_name, "clip_type": "clip_l"}},
    }
    encoders: dict = {"long_clip": ["2", 0]}
    if workflow.clip_g == "checkpoint":  # SDXL's own bigG, read by windows of its 77 positions ("chunk")
        inputs = {"clip": ["1", 1], "clip_type": "clip_g", "keep": 20, "ratio": 1}
        nodes["3"] = {"class_type": "LongCLIPStretch", "inputs": inputs}
    elif workflow.clip_g == "file":
        nodes["3"] = {
            "class_type": "LongCLIPLoader",
            "inputs": {"text_encoder": names["clip_g"], "clip_type": "clip_g"},
        }
    if workflow.clip_g:
        encoders["clip_g"] = ["3", 0]
    if spec.t5:  # T5-XXL loaded alone into a ComfyUI CLIP, read in place by "T5 from CLIP"
        nodes["10"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": names["t5"], "type": "sd3"}}
        nodes["11"] = {"class_type": "LongCLIPT5FromCLIP", "inputs": {"clip": ["10", 0]}}
        encoders["t5"] = ["11", 0]
    if workflow.size_inputs:
        encoders.update(width=size, height=size, crop_w=0, crop_h=0, target_width=size, target_height=size)
    options = {"strategy": "chunk"} if spec.big_g_strategies else {}
    if workflow.guidance is not None:
        options["guidance"] = workflow.guidance

    def encode(text: str) -> dict:
        return {"class_type": workflow.encode_node, "inputs": {**encoders, "text": text, **options}}

    nodes["4"] = encode(_EXAMPLE_PROMPT)
    nodes["5"] = (
        encode(_EXAMPLE_NEGATIVE)
        if spec.reads_negative
        else {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}}  # cfg 1: unused
    )
    if workflow.diffusion_model_only:
        nodes["12"] = {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}}
    nodes["6"] = {"class_type": workflow.latent_node, "inputs": {"width": size, "height": size, "batch_size": 1}}
    steps, cfg, scheduler = workflow.steps, workflow.cfg, workflow.scheduler
    nodes["7"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": ["4", 0],
            "negative": ["5", 0],
            "latent_image": ["6", 0],
            "seed": 0,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": "euler",
            "scheduler": scheduler,
            "denoise": 1.0,
        },
    }
    vae = ["12", 0] if workflow.diffusion_model_only else ["1", 2]
    nodes["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": vae}}
    nodes["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "longclip"}}
    return nodes


def format_workflow(workflow: dict) -> str:
    """API-format JSON with one node a line."""
    lines = [f"  {json.dumps(node)}: {json.dumps(spec)}" for node, spec in workflow.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def write_node_package(folder: Path, encoder_name: str = DEFAULT_ENCODER_NAME) -> None:
    """Write the custom-node package (shim, registry metadata, README, example workflows) into `folder`."""
    workflows = {f"longclip_{family}_api.json": example_workflow(encoder_name, family) for family in WORKFLOW_FAMILIES}
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


def _is_long_clip_l(checkpoint: Checkpoint) -> bool:
    """Whether an encoder exports as what ComfyUI detects as Long-CLIP-L (for the example workflow): long, and
    shallower than the 23 or more layers by which ComfyUI tells OpenCLIP-H and bigG apart."""
    return checkpoint.num_positions > CLIP_POSITIONS and checkpoint.text_config.num_hidden_layers < 23


# What the Load Long-CLIP node must read back from a single file exactly as the source's config says.
_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
)
_USE_A_FOLDER = (
    "Put a folder with its config into models/text_encoders instead (the node reads a folder's config.json; "
    "`longclip convert SRC FOLDER` makes one)."
)


def check_exportable(checkpoint: Checkpoint) -> None:
    """Refuse an encoder the Load Long-CLIP node would refuse, or read with another config, once exported as a
    single file (weights without a config), saying why and what to do instead. Writes nothing."""
    source = checkpoint.source
    try:
        read_back = read_back_single_file(checkpoint)
    except CheckpointError as error:
        reason = str(error).removeprefix(f"{source}: ")
        raise CheckpointError(
            f"{source}: the Load Long-CLIP node could not load the exported file, which holds no config: {reason}"
        ) from None
    differences = [
        f"{name}={getattr(read_back.text_config, name)!r} instead of {getattr(checkpoint.text_config, name)!r}"
        for name in _CONFIG_FIELDS
        if getattr(read_back.text_config, name) != getattr(checkpoint.text_config, name)
    ]
    if differences:
        raise CheckpointError(
            f"{source}: the exported file holds no config, and the Load Long-CLIP node would infer "
            f"{', '.join(differences)} from its weights (it assumes OpenAI's 64-wide heads and QuickGELU, or "
            f"OpenCLIP-H/bigG by depth). {_USE_A_FOLDER}"
        )
    problems = [role_problem(read_back, clip_type) for clip_type in CLIP_TYPES]
    if all(problems):
        clip_l, clip_g = problems
        raise CheckpointError(
            f"{source}: the Load Long-CLIP node would refuse it both as clip_l and as clip_g. As clip_l: it {clip_l} "
            f"As clip_g: it {clip_g} Export a long version instead: `longclip stretch SRC LONG`, then --encoder LONG."
        )
    tokenizer = LongCLIPTokenizer.from_pretrained(model_max_length=read_back.num_positions)
    check_pair(tokenizer, read_back.text_config, source)  # the node gives a single file CLIP's own tokenizer


def export_comfyui(
    out: str | os.PathLike,
    encoders: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    *,
    dtype: str | None = None,
) -> Path:
    """Write the custom-node package and the `encoders` (any source `longclip convert` reads) under `out`.

    Every encoder is read and checked first (`check_exportable`: the Load Long-CLIP node must load the file as
    it is meant), before anything is written. `out` may be an existing ComfyUI folder: only the package folder
    and the encoder files are written. All are built in a staging folder inside `out` first, so a failure leaves
    `out` as it was; then each is renamed into place. Existing ones are replaced only with `overwrite=True`.
    `dtype` (fp32, fp16, bf16) converts the encoders' weights. Returns `out`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: is a file; OUT is the folder to write into (a ComfyUI folder, say).")
    refuse_file_above(out)
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
    checkpoints = [load_checkpoint(source) for source in encoders]
    for checkpoint in checkpoints:
        check_exportable(checkpoint)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".longclip-comfy-export.", suffix=".tmp", dir=out))
    try:
        (staging / TEXT_ENCODERS).mkdir(parents=True)
        for checkpoint, name in zip(checkpoints, names, strict=True):
            write_comfyui_text_encoder(checkpoint, staging / TEXT_ENCODERS / name, DTYPES[dtype] if dtype else None)
        long_names = [name for checkpoint, name in zip(checkpoints, names, strict=True) if _is_long_clip_l(checkpoint)]
        write_node_package(staging / CUSTOM_NODES / NODE_PACKAGE, (long_names or [DEFAULT_ENCODER_NAME])[0])
        _keep_saved_workflows(out / CUSTOM_NODES / NODE_PACKAGE, staging / CUSTOM_NODES / NODE_PACKAGE)
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


def _keep_saved_workflows(package: Path, new_package: Path) -> None:
    """The workflows a user saved in an earlier package's `workflows/` (any file the export does not write) go
    into the new package, so --overwrite replaces only what the export writes."""
    saved = package / "workflows"
    for path in sorted(saved.rglob("*")) if saved.is_dir() else []:
        target = new_package / "workflows" / path.relative_to(saved)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


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
