"""What a `longclip` command is, and the library's own commands: convert, stretch, comfy-export, bake, drift and
tiny.

The applications (pipelines, training, demo) define theirs in their own `commands.py` and register them in the
`longclip.commands` entry-point group (pyproject.toml); `cli.py` puts them all together.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from .bake import add_bake_arguments, run_bake
from .comfy_export import add_comfy_export_arguments, run_comfy_export
from .convert import DTYPES, OUTPUT_LAYOUTS, convert
from .drift import add_drift_arguments, run_drift
from .stretch import DEFAULT_KEEP, DEFAULT_RATIO


@dataclass(frozen=True)
class Command:
    """One `longclip` subcommand: its name and help, how it adds its arguments, and how it runs (returning the
    line to print; a ValueError or OSError becomes a one-line error and exit status 1)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], str]
    epilog: str | None = None


EPILOG_SOURCES = (
    "SRC is a Hugging Face Hub repo id (e.g. BeichenZhang/LongCLIP-L), a local folder (Hugging Face, diffusers "
    "or open_clip layout) or a single .pt / .safetensors checkpoint (published Long-CLIP / OpenAI / open_clip "
    "layout, or a ComfyUI text encoder)."
)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `longclip convert` (and of `stretch`, which adds its own two)."""
    parser.add_argument("source", metavar="SRC", help="checkpoint to read (see below)")
    parser.add_argument("out", metavar="OUT", help="output folder (a .safetensors file for --to comfyui)")
    parser.add_argument(
        "--to",
        choices=OUTPUT_LAYOUTS,
        default="diffusers",
        help="diffusers: OUT/text_encoder + OUT/tokenizer (default); clip: a full CLIPModel + CLIPProcessor "
        "folder; comfyui: one text-encoder .safetensors file ComfyUI loads natively",
    )
    parser.add_argument("--subfolder", help="read SRC/SUBFOLDER (e.g. text_encoder_2 of an SDXL repo)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    parser.add_argument(
        "--open-clip-model",
        metavar="NAME",
        help="open_clip architecture name or config JSON giving head counts and activation of an "
        "OpenAI-layout file (default: OpenAI conventions)",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="store weights in this precision (default: as SRC)")
    parser.add_argument(
        "--with-projection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--to diffusers: save a CLIPTextModelWithProjection (default: what SRC is)",
    )
    parser.add_argument(
        "--pad-token",
        help='tokenizer pad token: "<|endoftext|>" as SD 1.5 (default) or "!" as open_clip and SDXL\'s '
        "second tokenizer (default: the source's own tokenizer, if it has one)",
    )
    parser.add_argument(
        "--sd2",
        action="store_true",
        help="write SD 2.x's text encoder: the tower without its last layer (SD 2.x reads the penultimate one, "
        'through the final layer norm), no projection, a tokenizer padding with "!"',
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (once the new one is done)")


def add_stretch_arguments(parser: argparse.ArgumentParser) -> None:
    add_convert_arguments(parser)
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="rows kept as they are (default 20)")
    parser.add_argument("--ratio", type=int, default=DEFAULT_RATIO, help="stretch factor (default 4)")


def run_convert(args: argparse.Namespace) -> str:
    """Carry out `longclip convert` or `longclip stretch` (which has `keep` and `ratio`)."""
    out = convert(
        args.source,
        args.out,
        to=args.to,
        subfolder=args.subfolder,
        revision=args.revision,
        open_clip_model=args.open_clip_model,
        stretch=(args.keep, args.ratio) if hasattr(args, "ratio") else None,
        with_projection=args.with_projection,
        dtype=args.dtype,
        pad_token=args.pad_token,
        sd2=args.sd2,
        overwrite=args.overwrite,
    )
    return f"wrote {out} ({args.to} layout)"


def add_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")


def run_tiny(args: argparse.Namespace) -> str:
    from .tiny import TINY_PIPELINES, first_training_command, write_tiny_components

    out = write_tiny_components(args.out, seed=args.seed, overwrite=args.overwrite)
    return (
        f"wrote tiny components to {out}: {', '.join(f'{name}/' for name in TINY_PIPELINES)}, "
        f"{', '.join(f'longclip-{name}/' for name in TINY_PIPELINES)}, longclip-l/, train/\n"
        f"a first training run on {out / 'train'}: {first_training_command(out)}"
    )


LIBRARY_COMMANDS = (
    Command(
        "convert",
        "convert a (Long-)CLIP checkpoint to diffusers, CLIPModel or ComfyUI layout",
        add_convert_arguments,
        run_convert,
        EPILOG_SOURCES,
    ),
    Command(
        "stretch",
        "training-free long version of a 77-position CLIP (knowledge-preserved stretching)",
        add_stretch_arguments,
        run_convert,
        EPILOG_SOURCES,
    ),
    Command(
        "comfy-export",
        "write the ComfyUI custom nodes and Long-CLIP text encoder files",
        add_comfy_export_arguments,
        run_comfy_export,
    ),
    Command(
        "bake",
        "write a single-file SD 1.x / SDXL checkpoint with a Long-CLIP baked in",
        add_bake_arguments,
        run_bake,
    ),
    Command(
        "drift",
        "how far a Long-CLIP's conditioning moved from its CLIP's, as each SD family reads it",
        add_drift_arguments,
        run_drift,
    ),
    Command("tiny", "write tiny random pipelines and Long-CLIP encoders (offline)", add_tiny_arguments, run_tiny),
)
