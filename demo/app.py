"""Gradio app: vanilla CLIP and Long-CLIP side by side on the same seed (`longclip demo`)."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.pipelines.generate import PipelinePair, generate, load_pipelines

from .tokens import DROPPED, LONG_ONLY, prompt_coverage

logger = logging.getLogger(__name__)

BASES = ("SD 1.5", "SDXL")
DEFAULT_SOURCES = {
    "SD 1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "SDXL": "stabilityai/stable-diffusion-xl-base-1.0",
    "encoder": "BeichenZhang/LongCLIP-L",
}
ENVIRONMENT = {"SD 1.5": "LONGCLIP_SD15", "SDXL": "LONGCLIP_SDXL", "encoder": "LONGCLIP_ENCODER"}
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 100
MAX_SIZE = 1024
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
    """Where the models come from: a pipeline per base and the Long-CLIP encoder."""

    pipelines: dict[str, str]
    encoder: str
    tiny: bool = False

    @classmethod
    def from_settings(cls, sd15: str | None, sdxl: str | None, encoder: str | None) -> Sources:
        """Flags first, then environment variables, then the real models on the Hub."""
        chosen = {"SD 1.5": sd15, "SDXL": sdxl, "encoder": encoder}
        resolved = {key: chosen[key] or os.environ.get(ENVIRONMENT[key]) or DEFAULT_SOURCES[key] for key in chosen}
        return cls({base: resolved[base] for base in BASES}, resolved["encoder"])

    @classmethod
    def tiny_components(cls) -> Sources:
        from longclip_diffusers.tiny import write_tiny_components

        folder = write_tiny_components(Path(tempfile.mkdtemp(prefix="longclip-demo-")) / "tiny")
        pipelines = {"SD 1.5": str(folder / "sd15"), "SDXL": str(folder / "sdxl")}
        return cls(pipelines, str(folder / "longclip-sd15"), tiny=True)

    def encoder_for(self, base: str) -> str:
        if self.tiny:  # each tiny pipeline has its own tiny Long-CLIP, shaped like its CLIP-L
            return str(Path(self.encoder).parent / ("longclip-sdxl" if base == "SDXL" else "longclip-sd15"))
        return self.encoder


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
                self.pairs[base] = load_pipelines(self.sources.pipelines[base], self.sources.encoder_for(base))
                for pipe in (self.pairs[base].stock, self.pairs[base].long):
                    pipe.set_progress_bar_config(disable=False)
            if self.scorer is None:
                self.scorer = AlignmentScorer.load(self.sources.encoder_for(base)) or False
            return self.pairs[base]


class AlignmentScorer:
    """Long-CLIP image-text similarity (x100) of an image against the whole prompt, when the checkpoint has
    its vision tower (the published `.pt` files do)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    @classmethod
    def load(cls, source: str) -> AlignmentScorer | None:
        from longclip_diffusers.convert import clip_image_processor, tokenizer_for
        from longclip_diffusers.text_encoder import build_clip_model

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


def validate(prompt: str, steps: int, width: int, height: int, guidance: float) -> None:
    """Every bound the app enforces, as a message the user can act on."""
    if not prompt or not prompt.strip():
        raise ValueError("Type a prompt first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt has {len(prompt)} characters; the demo takes at most {MAX_PROMPT_CHARS}.")
    if not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"Steps must be between 1 and {MAX_STEPS}.")
    for name, value in (("Width", width), ("Height", height)):
        if not 64 <= int(value) <= MAX_SIZE or int(value) % 8:
            raise ValueError(f"{name} must be a multiple of 8 between 64 and {MAX_SIZE}, got {value}.")
    if not 0 <= float(guidance) <= 30:
        raise ValueError("Guidance must be between 0 and 30.")


def compare(models: Models, base: str, prompt: str, negative: str, seed: int, steps: int, guidance: float,
            width: int, height: int):  # fmt: skip
    """One request: both images on the same seed, what each read of the prompt, and alignment scores."""
    import gradio as gr

    try:
        if base not in BASES:
            raise ValueError(f"Choose a base among {', '.join(BASES)}.")
        validate(prompt, steps, width, height, guidance)
        pair = models.pair(base)
        options = dict(steps=int(steps), seed=int(seed), guidance_scale=float(guidance), width=int(width),
                       height=int(height))  # fmt: skip
        vanilla = generate(pair.stock, prompt, negative or None, **options)
        long = generate(pair.long, prompt, negative or None, **options)
        coverage = prompt_coverage(prompt, pair.stock.tokenizer, pair.long.tokenizer)
        if models.scorer:
            scores = models.scorer([vanilla, long], prompt)
            score_text = f"Long-CLIP alignment with the full prompt: vanilla **{scores[0]}**, Long-CLIP **{scores[1]}**"
        else:
            score_text = "Alignment scores need a Long-CLIP checkpoint with its vision tower (e.g. the published .pt)."
        return vanilla, long, coverage.summary, coverage.spans, score_text
    except ValueError as error:
        raise gr.Error(str(error)) from None
    except Exception as error:  # one failing request never takes the app down
        logger.exception("generation failed")
        raise gr.Error(f"Generation failed: {type(error).__name__}: {error}") from None


def build_app(models: Models):
    """The Blocks app (not launched)."""
    import gradio as gr

    tiny = models.sources.tiny
    default_size = 64 if tiny else 512
    with gr.Blocks(title="Long-CLIP vs CLIP") as app:
        gr.Markdown("# Long-CLIP vs vanilla CLIP\nThe same seed, the same UNet: only the text encoder differs.")
        if tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=6, max_lines=20, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value="blurry, low quality", elem_id="negative")
            with gr.Column(scale=1):
                base = gr.Radio(list(BASES), value="SD 1.5", label="Base")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                steps = gr.Slider(1, MAX_STEPS, value=4 if tiny else 30, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0, 30, value=7.5, step=0.5, label="Guidance")
                width = gr.Slider(64, MAX_SIZE, value=default_size, step=8, label="Width")
                height = gr.Slider(64, MAX_SIZE, value=default_size, step=8, label="Height")
        gr.Examples(EXAMPLES, inputs=[prompt])
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            vanilla = gr.Image(label="vanilla CLIP (77 tokens)", type="pil", elem_id="vanilla")
            long = gr.Image(label="Long-CLIP (248 tokens per window)", type="pil", elem_id="long")
        count = gr.Markdown(elem_id="token-count")
        highlighted = gr.HighlightedText(
            label="What vanilla CLIP never sees",
            color_map={LONG_ONLY: "orange", DROPPED: "red"},
            combine_adjacent=True,
            elem_id="highlighted",
        )
        scores = gr.Markdown(elem_id="scores")
        button.click(
            lambda *inputs: compare(models, *inputs),
            inputs=[base, prompt, negative, seed, steps, guidance, width, height],
            outputs=[vanilla, long, count, highlighted, scores],
            concurrency_limit=1,
        )
    app.queue(max_size=32)
    return app


def load_models(args: argparse.Namespace) -> Models:
    """The real models (SD 1.5 loaded now, SDXL on first use), unless `--tiny` or they cannot be loaded (no Hub
    access and nothing cached): then the tiny random components."""
    if not args.tiny:
        models = Models(Sources.from_settings(args.sd15, args.sdxl, args.long_encoder))
        try:
            models.pair("SD 1.5")
            return models
        except OSError as error:
            logger.warning("Could not load the real models (%s); starting on tiny random components.", error)
    models = Models(Sources.tiny_components())
    models.pair("SD 1.5")
    return models


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny random offline components (no downloads)")
    parser.add_argument("--sd15", help=f"SD 1.5 pipeline, Hub id or folder (env {ENVIRONMENT['SD 1.5']})")
    parser.add_argument("--sdxl", help=f"SDXL pipeline, Hub id or folder (env {ENVIRONMENT['SDXL']})")
    parser.add_argument(
        "--long-encoder", help=f"Long-CLIP checkpoint: Hub id, folder or .pt (env {ENVIRONMENT['encoder']})"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the network)")
    parser.add_argument("--share", action="store_true", help="a public Gradio share link")


def run_demo(args: argparse.Namespace) -> str:
    app = build_app(load_models(args))
    app.launch(server_name=args.host, server_port=args.port, share=args.share)
    return "demo stopped"
