"""Long-CLIP in the stock diffusers StableDiffusionPipeline: a prompt far past 77 tokens, all of it reaching the UNet.

    python examples/dropin.py                      # SD 1.5 + LongCLIP-L from the Hub
    python examples/dropin.py --tiny               # offline: tiny random components (noise-like images)

Without Hub access it falls back to the tiny components and says so.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
from longclip_diffusers.tiny import write_tiny_components

PROMPT = (
    "A highly detailed oil painting of an old stone lighthouse on a rugged cliff at dusk, waves crashing against "
    "black rocks, seagulls circling in a sky streaked with orange and violet clouds, warm light glowing from the "
    "lantern room, moss on the weathered walls, a wooden staircase winding down to a small pier. Beyond the "
    "harbour a red fishing boat with patched sails rocks at anchor, its crew hauling nets full of silver fish, "
    "lanterns swinging from the mast, a dog barking on the deck, the first stars shimmering on the calm water, "
    "mountains fading into mist on the horizon, thick impasto brush strokes, nineteenth century romanticism."
)


def load(pipeline: str, long_encoder: str) -> StableDiffusionPipeline:
    text_encoder = LongCLIPTextEncoder.from_pretrained(long_encoder)
    tokenizer = LongCLIPTokenizer.from_pretrained(long_encoder)
    pipe = StableDiffusionPipeline.from_pretrained(pipeline, text_encoder=text_encoder, tokenizer=tokenizer)
    if torch.cuda.is_available():
        return pipe.to("cuda", torch.float16)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    parser.add_argument("--long-encoder", default="BeichenZhang/LongCLIP-L")
    parser.add_argument("--tiny", action="store_true", help="use tiny random offline components")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("outputs/dropin.png"))
    args = parser.parse_args()

    pipe = None
    if not args.tiny:
        try:
            pipe = load(args.pipeline, args.long_encoder)
        except OSError as error:  # FileNotFoundError: no Hub access and nothing cached
            print(f"Could not load the real models ({error}).")
    if pipe is None:
        print("Using TINY RANDOM components: the image is noise-like; token counts and shapes are real.")
        tiny = write_tiny_components(Path(tempfile.mkdtemp()) / "tiny")
        pipe = load(str(tiny / "sd15"), str(tiny / "longclip-sd15"))
        args.steps = min(args.steps, 4)

    n_tokens = len(pipe.tokenizer(PROMPT).input_ids)
    prompt_embeds, _ = pipe.encode_prompt(PROMPT, pipe.device, 1, False)
    print(f"prompt: {n_tokens} tokens (stock CLIP reads 77); conditioning: {tuple(prompt_embeds.shape)}")
    image = pipe(PROMPT, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0)).images[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
