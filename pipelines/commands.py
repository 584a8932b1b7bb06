"""`longclip generate`, the pipelines' command (registered in pyproject.toml's `longclip.commands` entry points)."""

from __future__ import annotations

import argparse

from longclip_diffusers.arguments import integer, real
from longclip_diffusers.commands import Command
from longclip_diffusers.prompts import parse_weighted_prompt

from . import generate as generation

MAX_IMAGE_SIDE = 4096
MAX_STEPS = 1000  # SD and SDXL are trained on 1000 noise levels; schedulers refuse more steps
MAX_GUIDANCE = 100.0


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `longclip generate`."""
    parser.add_argument(
        "--pipeline",
        required=True,
        help="stock SD 1.x/2.x, SDXL, SD 3 or Flux.1 pipeline: Hub id or folder (the family is read from its "
        "model_index.json)",
    )
    parser.add_argument(
        "--long-encoder", required=True, help="Long-CLIP checkpoint (any SRC of `longclip convert --help`)"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", help="negative prompt (not for Flux.1)")
    side_requirement = f"a multiple of 8 from 8 to {MAX_IMAGE_SIDE} (e.g. 512, 768, 1024)"
    side = integer(8, MAX_IMAGE_SIDE, multiple_of=8, requirement=side_requirement)
    parser.add_argument(
        "--steps",
        type=integer(1, MAX_STEPS, requirement=f"a whole number of steps from 1 to {MAX_STEPS}"),
        default=30,
        help="denoising steps (default 30)",
    )
    parser.add_argument(
        "--seed", type=integer(0, 2**64 - 1, requirement="a seed from 0 to 2**64 - 1"), default=0, help="(default 0)"
    )
    parser.add_argument(
        "--guidance",
        type=real(
            0,
            MAX_GUIDANCE,
            requirement=f"a guidance scale from 0 to {MAX_GUIDANCE:g} (Stable Diffusion usually runs at 5 to 9; "
            "1 or less turns classifier-free guidance off)",
        ),
        help="guidance scale (default: the pipeline's; Flux.1-dev: its distilled guidance, 3.5)",
    )
    parser.add_argument("--width", type=side, help="pixels, with --height (default: the pipeline's size)")
    parser.add_argument("--height", type=side, help="pixels, with --width")
    parser.add_argument(
        "--strategy", choices=("chunk", "stretch"), help="SDXL and SD 3: how bigG reads long prompts (default chunk)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="write a grid: vanilla CLIP | Long-CLIP, same seed, captioned"
    )
    parser.add_argument("--out", required=True, help="image file to write (.png, .webp, .jpg, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run_generate(args: argparse.Namespace) -> str:
    """Carry out `longclip generate`; return the line to print."""
    # Everything that can be checked without the models, before they load.
    generation.check_out(args.out, args.overwrite)
    generation.check_size(args.width, args.height)
    for prompt in (args.prompt, args.negative or ""):
        parse_weighted_prompt(prompt)  # refuses weights out of range
    if args.negative and args.guidance is not None and args.guidance <= 1:
        raise ValueError(
            f"--negative has no effect with --guidance {args.guidance:g}: classifier-free guidance (which reads the "
            "negative prompt) needs a guidance scale above 1. Raise --guidance or leave --negative out."
        )
    # Then what the pipeline's model_index.json tells (its family), still before any model loads.
    family = generation.pipeline_family(args.pipeline)
    generation.check_options(family, args.pipeline, strategy=args.strategy, negative_prompt=args.negative)

    pair = generation.load_pipelines(args.pipeline, args.long_encoder, strategy=args.strategy, family=family)
    options = dict(steps=args.steps, seed=args.seed, guidance_scale=args.guidance, width=args.width, height=args.height)
    if args.compare:
        image = generation.compare(pair, args.prompt, args.negative, **options)
    else:
        image = generation.generate(pair.long, args.prompt, args.negative, **options)
    out = generation.save_image(image, args.out, overwrite=args.overwrite)
    read = generation.long_read(pair.long, args.prompt)
    compared = ", vanilla CLIP | Long-CLIP" if args.compare else ""
    return f"wrote {out} with {pair.family.name} (prompt: {read}{compared})"


GENERATE = Command(
    "generate",
    "generate with Long-CLIP (and, with --compare, beside vanilla CLIP on the same seed)",
    add_generate_arguments,
    run_generate,
)
