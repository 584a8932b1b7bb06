"""Gradio app: vanilla CLIP and Long-CLIP side by side on the same seed (`longclip demo`)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from longclip_diffusers.families import FAMILIES, Family
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.hub import looks_local
from longclip_diffusers.pipelines.generate import (
    PipelinePair,
    T5Reading,
    generate,
    load_pipelines,
    pipeline_family,
    windows_limit,
    windows_read,
)
from longclip_diffusers.prompts import parse_weighted_prompt

from .tokens import DROPPED, LONG_ONLY, VANILLA_ONLY, prompt_coverage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Base:
    """A base the demo offers: a family of the table, its default Hub id, and the `longclip demo` flag and
    environment variable that replace it; the flag also names the `longclip tiny` folder that stands in for it."""

    spec: Family

    @property
    def family(self) -> str:
        return self.spec.name

    @property
    def default(self) -> str:
        return self.spec.default_pipeline

    @property
    def flag(self) -> str:
        return self.spec.key

    @property
    def environment(self) -> str:
        return f"LONGCLIP_{self.spec.key.upper()}"

    @property
    def encoder_setting(self) -> str:
        """The setting that names its Long-CLIP (a key of `ENVIRONMENT`), by the CLIP that Long-CLIP replaces."""
        return ENCODER_SETTINGS[self.spec.long_encoder.role]


BASES = {family.name: Base(family) for family in FAMILIES.values()}
FIRST_BASE = FAMILIES["sd15"].name  # loaded at start: when its default models cannot load, the demo goes tiny
DEFAULT_ENCODER = "BeichenZhang/LongCLIP-L"  # Long-CLIP-L: SD 1.5's, SDXL's and SD 3's first encoder, Flux's CLIP
# The Long-CLIP a base is given, by the CLIP it replaces (the family's `long_encoder.role`): Long-CLIP-L, or for
# SD 2.x's OpenCLIP-H a long H of its own (no published one; `longclip stretch`). Each is a setting of `longclip demo`:
# a keyword of `Sources.from_settings`, a flag and an environment variable.
ENCODER_SETTINGS = {"clip_l": "encoder", "clip_h": "sd2_encoder"}
ENCODER_FLAGS = {"encoder": "long-encoder", "sd2_encoder": "sd2-encoder"}
ENVIRONMENT = {"encoder": "LONGCLIP_ENCODER", "sd2_encoder": "LONGCLIP_SD2_ENCODER"}
MAX_PROMPT_CHARS = 4000  # the prompt and the negative prompt each
# What one request may cost, so that no prompt stalls the queue for everyone (requests run one at a time): each
# Long-CLIP window adds 248 tokens to what the UNet or transformer attends to at every step (`"BREAK " * 666`, inside
# the character limit, made 666 windows: 337 s a step on the tiny SD 3.5), and steps x pixels is the denoising work.
MAX_WINDOWS = 8  # per prompt, and per negative prompt
MAX_STEPS = 100
MAX_SIZE = 1024
MAX_PIXEL_STEPS = 50 * 1024 * 1024  # 50 steps at 1024 x 1024; more steps at smaller sizes
MAX_GUIDANCE = 30
MAX_SEED = 2**53 - 1  # the largest whole number a browser's number field keeps exact
# Gradio's highlighted text breaks lines inside words (`word-break: break-all`) and lays each span out as a flex
# item. Let the spans flow as one inline text that wraps between words only. Gradio's markup has whitespace between
# the spans, which would show as a space where a span starts mid-word ("dog ,"): font-size 0 hides it, and each
# span's text takes its size and its highlight colour back.
CSS = """
#highlighted .textfield { display: block; word-break: normal; overflow-wrap: break-word; font-size: 0; }
#highlighted .token-container, #highlighted .token { display: inline; }
#highlighted .token.highlighted { margin: 0; padding: 0; }
#highlighted .text { font-size: var(--body-text-size); background-color: inherit; padding: var(--size-0-5) 0; }
#highlighted .label { font-size: calc(0.7 * var(--body-text-size)); }
#message p { color: var(--error-text-color); font-weight: 600; }
"""
TINY_BANNER = (
    "**Offline mode: tiny random models.** The images come from tiny random weights and look like noise; "
    "token counts and highlighting are real. Run with real models (Hub access) to compare images."
)
EXAMPLES = [
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, "
    "a warm yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden "
    "staircase winding down to a small pier. Beyond the harbour a red fishing boat with patched sails rocks at "
    "anchor, its crew hauling nets full of silver fish, lanterns swinging from the mast, a dog barking on deck.",
    "A cozy reading nook in a Victorian library: a deep green velvet armchair beside a tall arched window with "
    "rain streaking down the glass, shelves of leather-bound books reaching the ceiling, a brass floor lamp "
    "casting warm light, a steaming cup of tea on a small walnut side table, a sleeping ginger cat curled on a "
    "knitted blanket, a globe and a stack of maps on the floor, dust motes floating in the light, and outside the "
    "window a misty garden with a stone fountain and a wrought-iron bench under a blossoming cherry tree.",
    "Studio product photo of a vintage mechanical wristwatch on a slab of dark slate, the dial cream-coloured "
    "with blued steel hands and roman numerals, a brown crocodile leather strap with contrast stitching, soft "
    "diffused light from the left, a thin rim light on the polished steel case, a sprig of rosemary and two "
    "coffee beans beside it, shallow depth of field, a small water droplet on the crystal, and a faint "
    "reflection of a window on the slate, shot on a 100 mm macro lens, ultra sharp.",
]


@dataclass
class Sources:
    """Where the models come from: a pipeline and a Long-CLIP encoder per base offered."""

    pipelines: dict[str, str]
    encoders: dict[str, str]
    tiny: bool = False

    @property
    def bases(self) -> list[str]:
        return list(self.pipelines)

    @classmethod
    def from_settings(
        cls, pipelines: dict[str, str | None], encoder: str | None = None, sd2_encoder: str | None = None
    ) -> Sources:
        """Flags (`pipelines`, by base), then environment variables, then the real models on the Hub.

        SD 2.x is offered only with a long OpenCLIP-H (`sd2_encoder`), as none is published.
        """
        chosen = {
            name: pipelines.get(name) or os.environ.get(base.environment) or base.default
            for name, base in BASES.items()
        }
        given = {
            "encoder": encoder or os.environ.get(ENVIRONMENT["encoder"]) or DEFAULT_ENCODER,
            "sd2_encoder": sd2_encoder or os.environ.get(ENVIRONMENT["sd2_encoder"]),
        }
        encoders = {name: given[base.encoder_setting] for name, base in BASES.items()}
        return cls({name: chosen[name] for name in BASES if encoders[name]}, encoders)

    @classmethod
    def tiny_components(cls, folder: Path) -> Sources:
        """Every base on the tiny random components (written under `folder`), each with the tiny Long-CLIP shaped
        like its CLIP encoder."""
        from longclip_diffusers.tiny import write_tiny_components

        folder = write_tiny_components(folder / "tiny")
        pipelines = {name: str(folder / base.flag) for name, base in BASES.items()}
        encoders = {name: str(folder / f"longclip-{base.flag}") for name, base in BASES.items()}
        return cls(pipelines, encoders, tiny=True)

    def loadable(self) -> Sources:
        """The bases whose pipeline's model_index.json can be read here (cached or from the Hub) and names the
        base's family; the others are left out with a warning saying why."""
        offered = {}
        for name, source in self.pipelines.items():
            try:
                family = pipeline_family(source)
            except (OSError, ValueError) as error:
                logger.warning("Leaving %s out: %s", name, error)
                continue
            if family.name != BASES[name].family:
                logger.warning("Leaving %s out: %s is a %s pipeline.", name, source, family.name)
                continue
            offered[name] = source
        return Sources(offered, self.encoders, self.tiny)

    def check_local_paths(self) -> None:
        """Refuse at once a source that can only be a local path and is not there (a typo): no Hub retries, no
        falling back to other models."""
        for name, pipeline in self.pipelines.items():
            base = BASES[name]
            encoder = base.encoder_setting
            settings = [(pipeline, base.flag, base.environment, "pipeline")]
            settings += [(self.encoders[name], ENCODER_FLAGS[encoder], ENVIRONMENT[encoder], "Long-CLIP encoder")]
            for source, flag, environment, what in settings:
                if looks_local(source) and not Path(source).expanduser().exists():
                    raise FileNotFoundError(
                        f"{source}: no such file or folder (the {name} {what}, from --{flag} or {environment})."
                    )


@dataclass
class Models:
    """Pipelines loaded once per base (stock and Long-CLIP sharing UNet, VAE and scheduler) and the scorer."""

    sources: Sources
    pairs: dict[str, PipelinePair] = field(default_factory=dict)
    scorer: object | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pair(self, base: str) -> PipelinePair:
        with self.lock:
            if base not in self.pairs:
                self.pairs[base] = load_pipelines(self.sources.pipelines[base], self.sources.encoders[base])
                for pipe in (self.pairs[base].stock, self.pairs[base].long):
                    pipe.set_progress_bar_config(disable=False)
            if self.scorer is None:
                self.scorer = AlignmentScorer.load(self.sources.encoders[base]) or False
            return self.pairs[base]


class AlignmentScorer:
    """Long-CLIP image-text similarity (x100) of an image against the whole prompt, when the checkpoint has
    its vision tower (the published `.pt` files do)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    @classmethod
    def load(cls, source: str) -> AlignmentScorer | None:
        from longclip_diffusers.text_encoder import build_clip_model
        from longclip_diffusers.writing import clip_image_processor, tokenizer_for

        checkpoint = load_checkpoint(source)
        if not checkpoint.has_vision:
            return None
        image_processor = clip_image_processor(checkpoint.vision_config.image_size)
        return cls(build_clip_model(checkpoint), (image_processor, tokenizer_for(checkpoint)))

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompt: str) -> list[float]:
        image_processor, tokenizer = self.processor
        pixels = image_processor(images=images, return_tensors="pt").pixel_values
        ids = tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt").input_ids
        output = self.model(input_ids=ids, pixel_values=pixels)
        return [round(100 * float(s), 2) for s in (output.image_embeds @ output.text_embeds.T).squeeze(-1)]


def validate(base: str, prompt: str, negative: str | None, seed: float, steps: float, guidance: float, width: float,
             height: float, bases: Sequence[str] = tuple(BASES)) -> dict:  # fmt: skip
    """Every bound the app enforces, as a message the user can act on; the generation options when all hold.

    The API can send what the widgets never would (NaN, 1e30, 2.5 steps, null), so each value is checked here, and
    the prompts' weighting syntax before any model runs.
    """
    if base not in bases:
        raise ValueError(f"Choose a base among {', '.join(bases)}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("Type a prompt first.")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"The negative prompt must be text, got {type(negative).__name__}.")
    for name, text in (("prompt", prompt), ("negative prompt", negative or "")):
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"The {name} has {len(text)} characters; the demo takes at most {MAX_PROMPT_CHARS}.")
        try:
            parse_weighted_prompt(text)
        except ValueError as error:
            raise ValueError(f"In the {name}: {error}") from None
    options = {
        "seed": _whole_number("Seed", seed, 0, MAX_SEED),
        "steps": _whole_number("Steps", steps, 1, MAX_STEPS),
        "width": _whole_number("Width", width, 64, MAX_SIZE, multiple_of=8),
        "height": _whole_number("Height", height, 64, MAX_SIZE, multiple_of=8),
    }
    if not _is_number(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"Guidance must be a number between 0 and {MAX_GUIDANCE}, got {guidance!r}.")
    pixels, full_size = options["width"] * options["height"], MAX_PIXEL_STEPS // MAX_SIZE**2
    if options["steps"] * pixels > MAX_PIXEL_STEPS:
        raise ValueError(
            f"{options['steps']} steps at {options['width']}x{options['height']} is more than one request may cost: "
            f"at that size the demo runs at most {MAX_PIXEL_STEPS // pixels} steps ({full_size} at "
            f"{MAX_SIZE}x{MAX_SIZE}). Lower the steps or the size."
        )
    return {**options, "guidance_scale": float(guidance)}


def check_windows(pair: PipelinePair, prompt: str, negative: str | None) -> None:
    """Refuse a prompt Long-CLIP would read in more than `MAX_WINDOWS` windows (the cost of a step grows with
    them), and a prompt that holds no words for it (only `BREAK`s, say)."""
    long = pair.long
    capacity = long.tokenizer.model_max_length - 2
    for name, text in (("prompt", prompt), ("negative prompt", negative or "")):
        read = windows_read(long.tokenizer, text, long.config.prompt_weighting, windows_limit(long))
        if read.windows > MAX_WINDOWS:
            breaks = "BREAK" in text  # each one starts a window
            raise ValueError(
                f"The {name} makes {read.windows} windows of {capacity} tokens for Long-CLIP ({read.tokens} tokens"
                f"{', and each BREAK starts a window' if breaks else ''}); the demo encodes at most {MAX_WINDOWS}. "
                f"Shorten it{' or use fewer BREAKs' if breaks else ''}."
            )
        if name == "prompt" and read.tokens == 0:
            raise ValueError("The prompt holds no words once BREAK and the weighting syntax are taken out.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole_number(name: str, value: object, low: int, high: int, multiple_of: int = 1) -> int:
    if not _is_number(value) or value != int(value) or not low <= value <= high or int(value) % multiple_of:
        kind = "a whole number" if multiple_of == 1 else f"a multiple of {multiple_of}"
        raise ValueError(f"{name} must be {kind} between {low} and {high}, got {value!r}.")
    return int(value)


def compare(models: Models, base: str, prompt: str, negative: str, seed: int, steps: int, guidance: float,
            width: int, height: int):  # fmt: skip
    """One request: both images on the same seed, what each read of the prompt, and alignment scores."""
    import gradio as gr

    try:
        options = validate(base, prompt, negative, seed, steps, guidance, width, height, models.sources.bases)
        pair = models.pair(base)
        ignored_negative = bool(negative) and not pair.family.reads_negative
        negative = None if ignored_negative else negative or None
        check_windows(pair, prompt, negative)
        vanilla = generate(pair.stock, prompt, negative, **options)
        long = generate(pair.long, prompt, negative, **options)
        coverage = prompt_coverage(
            prompt,
            pair.stock.tokenizer,
            pair.long.tokenizer,
            weighting=pair.long.config.prompt_weighting,
            max_windows=windows_limit(pair.long),
            pooled_only=pair.family.long_encoder.layer is None,
            t5=T5Reading.of(pair),
        )
        summary = coverage.summary
        if ignored_negative:
            summary += f" {pair.family.name} reads no negative prompt (its guidance is distilled): it was left out."
        if models.scorer:
            scores = models.scorer([vanilla, long], prompt)
            score_text = f"Long-CLIP alignment with the full prompt: vanilla **{scores[0]}**, Long-CLIP **{scores[1]}**"
        else:
            score_text = "Alignment scores need a Long-CLIP checkpoint with its vision tower (e.g. the published .pt)."
        return vanilla, long, summary, coverage.spans, score_text
    except ValueError as error:
        raise gr.Error(str(error)) from None
    except Exception as error:  # one failing request never takes the app down
        logger.exception("generation failed")
        raise gr.Error(f"Generation failed: {type(error).__name__}: {error}") from None


def respond(models: Models, *inputs) -> tuple:
    """`compare` for the page, with one more output, the message: a refused or failed request shows only its
    message (no error pills over every output, no toast besides) and clears the previous result, which no longer
    matches the inputs. API clients get the same: empty results and the message."""
    import gradio as gr

    try:
        return *compare(models, *inputs), ""
    except gr.Error as error:
        return None, None, "", None, "", error.message


def build_app(models: Models):
    """The Blocks app (not launched)."""
    import gradio as gr

    tiny = models.sources.tiny
    default_size = 64 if tiny else 512
    with gr.Blocks(title="Long-CLIP vs CLIP") as app:
        gr.Markdown(
            "# Long-CLIP vs vanilla CLIP\nThe same seed, the same UNet or transformer: only the CLIP text encoder "
            "differs."
        )
        if tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=6, max_lines=20, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value="blurry, low quality", elem_id="negative")
            with gr.Column(scale=1):
                bases = models.sources.bases
                base = gr.Radio(bases, value=bases[0], label="Base", elem_id="base")
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
                steps = gr.Slider(1, MAX_STEPS, value=4 if tiny else 30, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=7.5, step=0.5, label="Guidance")
                width = gr.Slider(64, MAX_SIZE, value=default_size, step=8, label="Width")
                height = gr.Slider(64, MAX_SIZE, value=default_size, step=8, label="Height")
        gr.Examples(EXAMPLES, inputs=[prompt])
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            vanilla = gr.Image(label="vanilla CLIP (77 tokens)", type="pil", elem_id="vanilla")
            long = gr.Image(label="Long-CLIP (248 tokens per window)", type="pil", elem_id="long")
        count = gr.Markdown(elem_id="token-count")
        highlighted = gr.HighlightedText(
            label="What vanilla CLIP never sees",
            color_map={LONG_ONLY: "orange", VANILLA_ONLY: "blue", DROPPED: "red"},
            combine_adjacent=True,
            elem_id="highlighted",
        )
        scores = gr.Markdown(elem_id="scores")
        button.click(
            lambda *inputs: respond(models, *inputs),
            inputs=[base, prompt, negative, seed, steps, guidance, width, height],
            outputs=[vanilla, long, count, highlighted, scores, message],
            concurrency_limit=1,
        )
    app.queue(max_size=32)
    return app


def load_models(args: argparse.Namespace) -> Models:
    """The real models (SD 1.5 loaded now, the other bases on first use; those whose model_index.json cannot be
    read are not offered), unless `--tiny` or the default SD 1.5 cannot be loaded (no Hub access and nothing
    cached): then the tiny random components, every base. A local path that is not there is refused at once, and
    an SD 1.5 or Long-CLIP-L named by a flag or variable that does not load is an error, not a reason to fall back.
    """
    if not args.tiny:
        pipelines = {name: getattr(args, base.flag) for name, base in BASES.items()}
        sources = Sources.from_settings(pipelines, args.long_encoder, args.sd2_encoder)
        sources.check_local_paths()
        models = Models(sources)
        try:
            models.pair(FIRST_BASE)
            models.sources = models.sources.loadable()
            return models
        except OSError as error:
            defaults = (BASES[FIRST_BASE].default, DEFAULT_ENCODER)
            if (sources.pipelines[FIRST_BASE], sources.encoders[FIRST_BASE]) != defaults:
                raise  # named by a flag or variable: the user wants those models
            logger.warning("Could not load the real models (%s); starting on tiny random components.", error)
    return load_tiny_models()


def load_tiny_models() -> Models:
    """Every base on the tiny random components, loaded into memory from a temporary folder that is then removed
    (it held 171 MB, left behind by every start)."""
    with tempfile.TemporaryDirectory(prefix="longclip-demo-") as folder:
        models = Models(Sources.tiny_components(Path(folder)))
        for base in models.sources.bases:
            models.pair(base)
    return models


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny random offline components (no downloads)")
    for name, base in BASES.items():
        parser.add_argument(
            f"--{base.flag}", help=f"{name} pipeline, Hub id or folder (env {base.environment}; default {base.default})"
        )
    parser.add_argument(
        "--long-encoder",
        help=f"Long-CLIP-L for SD 1.5, SDXL, SD 3 and Flux.1: Hub id, folder or .pt (env {ENVIRONMENT['encoder']}; "
        f"default {DEFAULT_ENCODER})",
    )
    parser.add_argument(
        "--sd2-encoder",
        help="long OpenCLIP-H for SD 2.x, e.g. from `longclip stretch stabilityai/stable-diffusion-2-1 OUT "
        f"--subfolder text_encoder --pad-token '!'` (env {ENVIRONMENT['sd2_encoder']}; without it SD 2.x is not "
        "offered)",
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the network)")
    parser.add_argument("--share", action="store_true", help="a public Gradio share link")


def run_demo(args: argparse.Namespace) -> str:
    app = build_app(load_models(args))
    app.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS)
    return "demo stopped"
