"""The `longclip` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .arguments import integer, real
from .convert import DTYPES, OUTPUT_LAYOUTS, convert
from .stretch import DEFAULT_KEEP, DEFAULT_RATIO

MAX_IMAGE_SIDE = 4096
MAX_STEPS = 1000  # SD and SDXL are trained on 1000 noise levels; schedulers refuse more steps
MAX_GUIDANCE = 100.0

EPILOG_SOURCES = (
    "SRC is a Hugging Face Hub repo id (e.g. BeichenZhang/LongCLIP-L), a local folder (Hugging Face, diffusers "
    "or open_clip layout) or a single .pt / .safetensors checkpoint (published Long-CLIP / OpenAI / open_clip "
    "layout, or a ComfyUI text encoder)."
)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longclip", description="Long-CLIP text encoders for Stable Diffusion.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert_parser = commands.add_parser(
        "convert",
        help="convert a (Long-)CLIP checkpoint to diffusers, CLIPModel or ComfyUI layout",
        epilog=EPILOG_SOURCES,
    )
    _add_output_arguments(convert_parser)

    stretch_parser = commands.add_parser(
        "stretch",
        help="training-free long version of a 77-position CLIP (knowledge-preserved stretching)",
        epilog=EPILOG_SOURCES,
    )
    _add_output_arguments(stretch_parser)
    stretch_parser.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="rows kept as they are (default 20)")
    stretch_parser.add_argument("--ratio", type=int, default=DEFAULT_RATIO, help="stretch factor (default 4)")

    generate_parser = commands.add_parser(
        "generate", help="generate with Long-CLIP (and, with --compare, beside vanilla CLIP on the same seed)"
    )
    generate_parser.add_argument(
        "--pipeline",
        required=True,
        help="stock SD 1.x/2.x, SDXL, SD 3 or Flux.1 pipeline: Hub id or folder (the family is read from its "
        "model_index.json)",
    )
    generate_parser.add_argument("--long-encoder", required=True, help="Long-CLIP checkpoint (any SRC above)")
    generate_parser.add_argument("--prompt", required=True)
    generate_parser.add_argument("--negative", help="negative prompt (not for Flux.1)")
    side_requirement = f"a multiple of 8 from 8 to {MAX_IMAGE_SIDE} (e.g. 512, 768, 1024)"
    side = integer(8, MAX_IMAGE_SIDE, multiple_of=8, requirement=side_requirement)
    generate_parser.add_argument(
        "--steps",
        type=integer(1, MAX_STEPS, requirement=f"a whole number of steps from 1 to {MAX_STEPS}"),
        default=30,
        help="denoising steps (default 30)",
    )
    generate_parser.add_argument(
        "--seed", type=integer(0, 2**64 - 1, requirement="a seed from 0 to 2**64 - 1"), default=0, help="(default 0)"
    )
    generate_parser.add_argument(
        "--guidance",
        type=real(
            0,
            MAX_GUIDANCE,
            requirement=f"a guidance scale from 0 to {MAX_GUIDANCE:g} (Stable Diffusion usually runs at 5 to 9; "
            "1 or less turns classifier-free guidance off)",
        ),
        help="guidance scale (default: the pipeline's; Flux.1-dev: its distilled guidance, 3.5)",
    )
    generate_parser.add_argument("--width", type=side, help="pixels, with --height (default: the pipeline's size)")
    generate_parser.add_argument("--height", type=side, help="pixels, with --width")
    generate_parser.add_argument(
        "--strategy", choices=("chunk", "stretch"), help="SDXL and SD 3: how bigG reads long prompts (default chunk)"
    )
    generate_parser.add_argument(
        "--compare", action="store_true", help="write a grid: vanilla CLIP | Long-CLIP, same seed, captioned"
    )
    generate_parser.add_argument("--out", required=True, help="image file to write (.png, .webp, .jpg, ...)")
    generate_parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    from longclip_diffusers.training.train import add_train_arguments

    add_train_arguments(
        commands.add_parser("train", help="fine-tune a Long-CLIP (stretching + primary component matching)")
    )

    from longclip_diffusers.training.features import add_cache_arguments

    add_cache_arguments(
        commands.add_parser(
            "cache-features", help="compute a dataset's image features once, for `train --image-features`"
        )
    )

    from .comfy_export import add_comfy_export_arguments

    add_comfy_export_arguments(
        commands.add_parser("comfy-export", help="write the ComfyUI custom nodes and Long-CLIP text encoder files")
    )

    from longclip_diffusers.training.evaluate import add_eval_arguments

    add_eval_arguments(
        commands.add_parser("eval", help="retrieval R@1/5/10 and zero-shot accuracy on long-caption benchmarks")
    )

    from longclip_diffusers.demo.app import add_demo_arguments

    add_demo_arguments(commands.add_parser("demo", help="the Gradio app: vanilla CLIP | Long-CLIP, same seed"))

    tiny_parser = commands.add_parser("tiny", help="write tiny random pipelines and Long-CLIP encoders (offline)")
    tiny_parser.add_argument("out", metavar="OUT", help="output folder")
    tiny_parser.add_argument("--seed", type=int, default=0)
    tiny_parser.add_argument("--overwrite", action="store_true")
    return parser


def run(args: argparse.Namespace) -> str:
    """Carry out one parsed command; return the line to print."""
    if args.command == "tiny":
        from .tiny import TINY_PIPELINES, first_training_command, write_tiny_components

        out = write_tiny_components(args.out, seed=args.seed, overwrite=args.overwrite)
        return (
            f"wrote tiny components to {out}: {', '.join(f'{name}/' for name in TINY_PIPELINES)}, "
            f"{', '.join(f'longclip-{name}/' for name in TINY_PIPELINES)}, longclip-l/, train/\n"
            f"a first training run on {out / 'train'}: {first_training_command(out)}"
        )
    if args.command == "generate":
        return _generate(args)
    if args.command == "demo":
        from longclip_diffusers.demo.app import run_demo

        return run_demo(args)
    if args.command == "comfy-export":
        from .comfy_export import run_comfy_export

        return run_comfy_export(args)
    if args.command == "eval":
        from longclip_diffusers.training.evaluate import run_eval

        return run_eval(args)
    if args.command == "train":
        from longclip_diffusers.training.train import run_train

        return run_train(args)
    if args.command == "cache-features":
        from longclip_diffusers.training.features import run_cache_features

        return run_cache_features(args)
    out = convert(
        args.source,
        args.out,
        to=args.to,
        subfolder=args.subfolder,
        revision=args.revision,
        open_clip_model=args.open_clip_model,
        stretch=(args.keep, args.ratio) if args.command == "stretch" else None,
        with_projection=args.with_projection,
        dtype=args.dtype,
        pad_token=args.pad_token,
        sd2=args.sd2,
        overwrite=args.overwrite,
    )
    return f"wrote {out} ({args.to} layout)"


def _generate(args: argparse.Namespace) -> str:
    # The one place the library reaches into its pipelines: the command line is their front end too.
    from longclip_diffusers.pipelines import generate as generation

    from .prompts import parse_weighted_prompt

    # Everything that can be checked without the models, before they load.
    generation.image_format(args.out)
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: already exists; choose another --out or pass --overwrite to replace it.")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError; FileNotFoundError an OSError
        print(f"longclip: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("longclip: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
