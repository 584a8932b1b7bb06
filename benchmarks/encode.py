"""Benchmark: encoding one long (~230-token) prompt, ours (one Long-CLIP pass) against compel (77-token chunks).

What is measured
- The prompt: a realistic, detailed SD prompt of about 230 CLIP tokens, no weighting syntax (the two tools
  write weights differently), so both take their unweighted path.
- Ours: `encode_prompts([prompt], [TextEncoderSpec(long_encoder, long_tokenizer)])` with a Long-CLIP-L-sized
  `CLIPTextModel` (12 layers, width 768, 248 positions) and `LongCLIPTokenizer.from_clip_bpe(248)`: one
  248-token pass.
- Compel (what users pick for long prompts today): `compel.Compel(tokenizer, text_encoder,
  truncate_long_prompts=False)(prompt)` with the stock 77-position CLIP-L-sized encoder and a stock
  `CLIPTokenizer`: the prompt split into 75-token chunks, each encoded on its own with BOS/EOS.
- Also the bare encoder forwards behind each (no tokenization, no bookkeeping): one [1, 248] pass, and compel's
  chunks as it runs them (one [1, 77] pass per chunk, in sequence), and compel's prompt parsing alone
  (`Compel.parse_prompt_string`, pyparsing), which is most of the rest of its time.

How
- Random fp32 weights built from configs (nothing downloaded), CPU, torch's default thread count, `torch.no_grad()`.
- Each measurement is warmed up once, then timed `--repeats` times (default 10), interleaved (one call of each
  per round, so load from other processes falls on all alike); the median is reported.
- Text-encoder forward tokens are counted with a forward pre-hook on each encoder (batch x sequence length of
  every call), conditioning tokens from the returned tensors' shapes.

The last stdout line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import interleaved_medians
from transformers import CLIPTextConfig, CLIPTextModel

from longclip_diffusers import LongCLIPTokenizer
from longclip_diffusers.prompts import TextEncoderSpec, encode_prompts
from longclip_diffusers.tiny import tiny_clip_tokenizer

PROMPT = (
    "a highly detailed cinematic photograph of an elderly fisherman with a weathered face and a thick grey beard, "
    "wearing a faded yellow raincoat and a knitted wool cap, standing on a wooden pier at dawn, holding a coil of "
    "wet rope in his calloused hands, small red and blue fishing boats moored behind him, gentle fog rolling over "
    "the calm harbour water, seagulls circling above the masts, a lighthouse on a rocky headland in the distance, "
    "soft golden light breaking through low clouds and reflecting on the ripples, stacked lobster traps and "
    "tangled green nets at his feet, peeling paint on the weathered planks, a rusty lantern hanging from a post, "
    "shot on a medium format camera with an 80mm lens at f/2.8, shallow depth of field, natural skin texture, fine "
    "film grain, muted teal and orange colour grading, rule of thirds composition, volumetric light, crisp focus "
    "on the eyes, subtle rim light on the beard, documentary style, national geographic cover, award winning "
    "photography, ultra realistic, 8k resolution, intricate details, sharp textures, high dynamic range, moody "
    "atmosphere, quiet and contemplative mood"
)


def clip_l_text_encoder(positions: int, seed: int = 0) -> CLIPTextModel:
    """A CLIP-L-sized text tower (SD 1.5's encoder) with `positions` positions and random weights."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=positions,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(config).eval()


class TokenCounter:
    """Counts the tokens (batch x length) every forward of a module reads."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.tokens = 0
        self.calls = 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = args[0] if args else kwargs["input_ids"]
        self.tokens += input_ids.numel()
        self.calls += 1

    def reset(self) -> None:
        self.tokens = self.calls = 0


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement; median reported")
    args = parser.parse_args()

    from compel import Compel
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # compel tokenizes the whole prompt with the 77-token tokenizer

    long_tokenizer = LongCLIPTokenizer.from_clip_bpe(model_max_length=248)
    stock_tokenizer = tiny_clip_tokenizer()
    long_encoder, stock_encoder = clip_l_text_encoder(248), clip_l_text_encoder(77)
    long_count, stock_count = TokenCounter(long_encoder), TokenCounter(stock_encoder)
    prompt_tokens = len(long_tokenizer(PROMPT).input_ids)
    assert prompt_tokens == len(stock_tokenizer(PROMPT, verbose=False).input_ids)
    print(f"prompt: {prompt_tokens} CLIP tokens with BOS/EOS; torch threads: {torch.get_num_threads()}", flush=True)

    spec = TextEncoderSpec(long_encoder, long_tokenizer)
    compel = Compel(tokenizer=stock_tokenizer, text_encoder=stock_encoder, truncate_long_prompts=False)

    def ours() -> torch.Tensor:
        return encode_prompts([PROMPT], [spec])[0]

    def theirs() -> torch.Tensor:
        return compel(PROMPT)

    # One call each, counted: conditioning shapes and the encoder forwards behind them.
    long_count.reset(), stock_count.reset()
    ours_conditioning, compel_conditioning = ours(), theirs()
    ours_forward_tokens, ours_calls = long_count.tokens, long_count.calls
    compel_forward_tokens, compel_calls = stock_count.tokens, stock_count.calls
    assert ours_conditioning.shape[-1] == compel_conditioning.shape[-1] == 768
    chunks = compel_conditioning.shape[1] // 77

    long_ids = long_tokenizer(PROMPT, padding="max_length", max_length=248, return_tensors="pt").input_ids
    chunk_ids = torch.randint(0, 49407, (chunks, 1, 77))  # only shapes matter for timing

    timings = interleaved_medians(
        {
            "ours": ours,
            "compel": theirs,
            "forward_248": lambda: long_encoder(long_ids),
            "forward_chunks_77": lambda: [stock_encoder(ids) for ids in chunk_ids],
            "compel_parse": lambda: Compel.parse_prompt_string(PROMPT),
        },
        args.repeats,
    )

    rows = [
        ("ours (1 x 248)", timings["ours"], ours_conditioning.shape[1], ours_forward_tokens, ours_calls),
        (
            f"compel ({chunks} x 77)",
            timings["compel"],
            compel_conditioning.shape[1],
            compel_forward_tokens,
            compel_calls,
        ),
        ("bare forward 1 x 248", timings["forward_248"], 248, 248, 1),
        (f"bare forward {chunks} x 77", timings["forward_chunks_77"], chunks * 77, chunks * 77, chunks),
        ("compel prompt parse only", timings["compel_parse"], "-", "-", "-"),
    ]
    print(f"\n{'encoding':<24}{'median ms':>10}{'cond tokens':>13}{'fwd tokens':>12}{'fwd calls':>11}")
    for name, ms, cond, forward, calls in rows:
        print(f"{name:<24}{ms:>10.0f}{cond:>13}{forward:>12}{calls:>11}")
    ratio = timings["ours"] / timings["compel"]
    print(f"ours / compel: {ratio:.2f}\n")

    figures: dict[str, float | int | str] = {
        "prompt_tokens": prompt_tokens,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "ours_ms": round(timings["ours"], 1),
        "compel_ms": round(timings["compel"], 1),
        "time_ratio_ours_vs_compel": round(ratio, 3),
        "ours_conditioning_tokens": ours_conditioning.shape[1],
        "compel_conditioning_tokens": compel_conditioning.shape[1],
        "compel_chunks": chunks,
        "ours_forward_tokens": ours_forward_tokens,
        "compel_forward_tokens": compel_forward_tokens,
        "ours_forward_calls": ours_calls,
        "compel_forward_calls": compel_calls,
        "bare_forward_248_ms": round(timings["forward_248"], 1),
        "bare_forward_chunks_77_ms": round(timings["forward_chunks_77"], 1),
        "compel_parse_ms": round(timings["compel_parse"], 1),
        "compel_version": _version("compel"),
    }
    print(json.dumps(figures))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
