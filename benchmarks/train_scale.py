"""Benchmark: the text tower trained on cached image features, against the reference step and the live frozen
image tower, at the real sizes of ViT-L/14, ViT-H/14 and ViT-bigG/14.

What is measured
- Models: open_clip's `ViT-L-14`, `ViT-H-14` and `ViT-bigG-14` configs with random weights, the text tower stretched
  to 248 positions and the logit scale at ln(100), built by the trainer's `build_model`; the text-only model is the
  one `build_model` makes for `--image-features` (`TextCLIP`, stretched likewise).
- Batch: `--batch` (default 4) 224 px images; long captions of 118, 142, 156 and 212 tokens (BOS and EOT included:
  mean 157, one past 200, ShareGPT4V-like), short ones of 18 to 31, random ids padded to 248 as the trainer
  tokenizes (`train_step.captions`); image features: the [batch, embed_dim] the cache holds.
- Steps, each with AdamW at the trainer's defaults and `LongCLIPLoss` (32 components, local PCA):
  (a) `reference`: both towers trained; one `clip(images, cat(long, short))` call with the captions padded to 248
      (`train_step.uncut_forward`: the reference's forward), AdamW over every parameter;
  (b) `live`: the trainer's step with `--freeze vision`: `TrainingModel` (image features from the frozen tower,
      each text batch cut after its last end token), AdamW over the text tower and the logit scale;
  (c) `cached`: the trainer's step with `--image-features`: `TrainingModel(TextCLIP)` on cached features; the same
      text work and optimizer as (b), no image tower in memory.
  and the one-time cache cost: one image-tower forward per image without gradients (what `cache-features` runs),
  per image, and the bytes per image on disk (`--dtype` fp32 / fp16 or bf16, plus the row index).
- Measured (`--measure`, default ViT-L, in fp32; CPU, torch's thread count). ViT-H's fp32 reference step (24 GB
  counted) does not fit this 24 GB machine, and ViT-bigG's does not even in bf16: both are counted. `--measure L,H`
  measures ViT-H in bf16 (weights, gradients, AdamW state, activations), but on a CPU that says more about the CPU
  than about the step: torch's `MultiheadAttention(batch_first=True)` feeds its in-projection a non-contiguous
  input, which without gradients (a frozen tower) runs as a batched matmul over a weight copied per sample, 10x
  slower in bf16 than with gradients (1.5x in fp32: the ViT-L live step and cache pass carry it too), and oneDNN
  keeps reordered copies of bf16 weights.
  Memory: each variant in a fresh subprocess: the peak RSS from before its model is built over building it and
  `--steps` steps (weights, gradients, AdamW state, activations: all the step needs), with glibc's mmap threshold
  fixed at 64 KiB so that freed tensors go back to the system and RSS follows the live tensors, not the heap's
  history (it varied by 0.3 GB between identical runs otherwise). Time: the three steps in one process, sharing
  one copy of the weights (each with its own AdamW; the image tower's `requires_grad` set for each), with the
  cache's image-tower pass beside them; one warm-up call each, then `--repeats` rounds of one call of each
  (`timing.interleaved_times`, so load from other processes falls on all alike); the median, the fastest, and the
  paired ratio (median over rounds of the ratio within a round).
- Counted (every size, the only figures for bigG), on the meta device (no weights, no compute), fp32: FLOPs of one
  forward and backward (`torch.utils.flop_counter.FlopCounterMode`: matmuls and attention, 2 per multiply-add;
  AdamW's elementwise work left out), and bytes: parameters + gradients and AdamW's two moments of the trained ones
  + the tensors autograd saves for backward (distinct storages, parameters excluded). The frozen tower's forward
  keeps no tensors for backward; its transient working set (about one layer's activations) is left out. Counted
  also at larger batches (`--count-batches`): what a run needs per device, for the README.
Ratios: time from the measured medians where measured, else from the counted FLOPs; memory from the measured peak
RSS where measured, else from the counted bytes. `S_method` says which. `S_cached_vs_live_memory_floor`: the memory
ratio with no activations at all (weights, gradients and AdamW state only), the lowest any batch gives.

The last stdout line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from timing import interleaved_times
from torch.utils.flop_counter import FlopCounterMode
from train_step import _release_free_heap, _status_kib, captions, uncut_forward

SIZES = {"L": "ViT-L-14", "H": "ViT-H-14", "bigG": "ViT-bigG-14"}
MEASURED = {"L": torch.float32, "H": torch.bfloat16}  # bigG: counted only
VARIANTS = ("reference", "live", "cached")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
IMAGE_SIZE = 224
LONG_LENGTHS = [118, 142, 156, 212]
SHORT_LENGTHS = [18, 23, 27, 31]
MB, GB = 1e6, 1e9
INDEX_BYTES = 8  # a cached row's index (int64) beside its features


# ----------------------------------------------------------------------------------------------------------
# Models, batch and steps
# ----------------------------------------------------------------------------------------------------------


def make_batch(batch: int, embed_dim: int, dtype: torch.dtype, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    repeat = -(-batch // len(LONG_LENGTHS))
    image = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    features = torch.nn.functional.normalize(torch.randn(batch, embed_dim, generator=generator), dim=-1)
    return {
        "image": image.to(dtype),
        "features": features.to(dtype),
        "long_text": captions((LONG_LENGTHS * repeat)[:batch], generator),
        "short_text": captions((SHORT_LENGTHS * repeat)[:batch], generator),
    }


def build(size: str, variant: str) -> torch.nn.Module:
    """The model of `variant` as the trainer builds it (random weights, in the default dtype)."""
    import open_clip

    from longclip_diffusers.stretch import stretch_model
    from longclip_diffusers.training.config import TrainConfig
    from longclip_diffusers.training.model import TextCLIP, build_model

    if variant == "cached":  # build_model's --image-features branch, without a cache to check weights against
        model = stretch_model(TextCLIP(open_clip.get_model_config(SIZES[size])))
    else:
        freeze = ["vision"] if variant == "live" else []
        logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded ... initialized randomly."
        try:
            model, _, _ = build_model(TrainConfig(model=SIZES[size], pretrained=None, freeze=freeze))
        finally:
            logging.disable(logging.NOTSET)
    return model.train()


def make_step(model: torch.nn.Module, variant: str, batch: dict) -> Callable[[], torch.Tensor]:
    """One training step of `variant` on `model` with its own AdamW; returns the loss."""
    from longclip_diffusers.training.config import TrainConfig
    from longclip_diffusers.training.loss import LongCLIPLoss
    from longclip_diffusers.training.model import FrozenRows, TrainingModel

    defaults = TrainConfig()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=defaults.lr, betas=defaults.betas, eps=defaults.eps, weight_decay=defaults.weight_decay
    )
    frozen = FrozenRows(model, defaults.keep)
    criterion = LongCLIPLoss(defaults.pca_components, defaults.pca_scope)
    training_model = TrainingModel(model)
    images = batch["features"] if variant == "cached" else batch["image"]

    def forward() -> tuple[torch.Tensor, ...]:
        if variant == "reference":
            return uncut_forward(model, batch)
        return training_model(images, batch["long_text"], batch["short_text"])

    def step() -> torch.Tensor:
        losses = criterion(*forward())
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        frozen.restore()
        return losses["loss"].detach()

    return step


# ----------------------------------------------------------------------------------------------------------
# Measured: a fresh process per (size, variant)
# ----------------------------------------------------------------------------------------------------------


def memory_child(size: str, variant: str, steps: int, batch_size: int) -> None:
    """Prints the peak RSS (MB) from before the model is built over building it and `steps` steps."""
    warnings.simplefilter("ignore")  # LongCLIPLoss: PCA over a small batch
    torch.set_default_dtype(MEASURED[size])  # built in the measured precision: no transient fp32 copy
    import open_clip

    import longclip_diffusers.training.train  # noqa: F401  (its imports are the interpreter's, not the step's)

    batch = make_batch(batch_size, open_clip.get_model_config(SIZES[size])["embed_dim"], MEASURED[size])
    _release_free_heap()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step = make_step(build(size, variant), variant, batch)
    for _ in range(steps):
        step()
    print(json.dumps({"peak_mb": (_status_kib("VmHWM") - before) * 1024 / MB}))


def measure_memory(size: str, variant: str, steps: int, batch_size: int) -> float:
    command = [sys.executable, __file__, "--child", size, variant, "--steps", str(steps), "--batch", str(batch_size)]
    # freed tensors go straight back to the system, so RSS follows the live tensors rather than the heap's history
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def text_only_view(clip: torch.nn.Module) -> torch.nn.Module:
    """`TextCLIP` holding `clip`'s own text tower and logit scale: one copy of the weights for the timed variants."""
    import open_clip

    from longclip_diffusers.training.model import TextCLIP

    text = TextCLIP(open_clip.get_model_config("ViT-B-32"))  # small; its modules are replaced by clip's
    shared = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection", "logit_scale")
    for name in shared:
        setattr(text, name, getattr(clip, name))
    text.register_buffer("attn_mask", clip.attn_mask, persistent=False)
    return text


def measure_time(size: str, batch_size: int, repeats: int) -> dict[str, list[float]]:
    """Step times (ms) of the three variants and of the cache's image-tower pass, in one process, alternating."""
    torch.set_default_dtype(MEASURED[size])
    import open_clip

    batch = make_batch(batch_size, open_clip.get_model_config(SIZES[size])["embed_dim"], MEASURED[size])
    clip = build(size, "reference")
    reference = make_step(clip, "reference", batch)
    clip.visual.requires_grad_(False)
    live = make_step(clip, "live", batch)
    cached = make_step(text_only_view(clip), "cached", batch)

    def with_image_tower_trained(trained: bool, step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            clip.visual.requires_grad_(trained)
            return step()

        return run

    @torch.no_grad()
    def cache_pass() -> torch.Tensor:
        return clip.encode_image(batch["image"], normalize=True)

    functions = {
        "reference": with_image_tower_trained(True, reference),
        "live": with_image_tower_trained(False, live),
        "cached": cached,
        "cache_pass": cache_pass,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LongCLIPLoss: PCA over a small batch
        times = interleaved_times(functions, repeats)
    torch.set_default_dtype(torch.float32)
    return times


# ----------------------------------------------------------------------------------------------------------
# Counted: on the meta device
# ----------------------------------------------------------------------------------------------------------


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def count(size: str, variant: str, batch_size: int) -> dict[str, float]:
    """FLOPs of one forward + backward and the bytes a step holds at its peak (fp32), from shapes alone."""
    import open_clip
    from open_clip.model import CLIP

    from longclip_diffusers.stretch import stretch_model
    from longclip_diffusers.training.model import TextCLIP

    config = open_clip.get_model_config(SIZES[size])
    batch = make_batch(batch_size, config["embed_dim"], torch.float32)
    batch.update(image=batch["image"].to("meta"), features=batch["features"].to("meta"))  # token ids stay real: the
    # trainer cuts each text batch after its last end token, which it reads from them
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LongCLIPLoss: PCA over a small batch
        # build_model's models, without open_clip's factory (which moves a model to the CPU)
        model = stretch_model(TextCLIP(config) if variant == "cached" else CLIP(**config))
        if variant == "live":
            model.visual.requires_grad_(False)
        step = make_step(model, variant, batch)
        parameters = {_storage(p) for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if _storage(tensor) not in parameters:
                saved[_storage(tensor)] = tensor.untyped_storage().nbytes()
            return tensor

        with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() for p in model.parameters())
    activations = sum(saved.values())
    return {
        "gflops": counter.get_total_flops() / 1e9,
        "weights_gb": weights * 4 / GB,
        "gradients_and_adamw_gb": trained * 12 / GB,
        "activations_gb": activations / GB,
        "total_gb": (weights * 4 + trained * 12 + activations) / GB,
    }


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="L,H,bigG", help="sizes to report (L, H, bigG)")
    parser.add_argument("--measure", default="L", help="sizes to measure as well as count (L fp32, H bf16)")
    parser.add_argument("--batch", type=int, default=4, help="images (and caption pairs) per step")
    parser.add_argument("--steps", type=int, default=2, help="steps per memory-measuring process")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds (one step of each variant a round)")
    parser.add_argument("--count-batches", default="32,128", help="larger batches to count, for the README")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return memory_child(*args.child, args.steps, args.batch)
    import open_clip

    sizes = args.sizes.split(",")
    measured_sizes = [size for size in args.measure.split(",") if size in sizes]
    figures: dict[str, float | int | str] = {
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "long_caption_tokens": (LONG_LENGTHS * args.batch)[: args.batch],
        "short_caption_tokens": (SHORT_LENGTHS * args.batch)[: args.batch],
        "memory_steps": args.steps,
        "repeats": args.repeats,
    }
    rows = []
    for size in sizes:
        embed_dim = open_clip.get_model_config(SIZES[size])["embed_dim"]
        counted = {variant: count(size, variant, args.batch) for variant in VARIANTS}
        for variant, values in counted.items():
            for key, value in values.items():
                figures[f"{size}_{variant}_counted_{key}"] = round(value, 3)
        for batch in [int(b) for b in args.count_batches.split(",") if b]:
            for variant in VARIANTS:
                figures[f"{size}_{variant}_counted_total_gb_batch_{batch}"] = round(
                    count(size, variant, batch)["total_gb"], 2
                )
        time_of = {variant: counted[variant]["gflops"] for variant in VARIANTS}
        memory_of = {variant: counted[variant]["total_gb"] for variant in VARIANTS}
        method = "counted: FLOPs and bytes on the meta device, fp32"
        if size in measured_sizes:
            memory_of = {variant: measure_memory(size, variant, args.steps, args.batch) / 1e3 for variant in VARIANTS}
            print(f"  {size} peak RSS GB: {memory_of}", flush=True)
            samples = measure_time(size, args.batch, args.repeats)
            print(f"  {size} step ms: {samples}", flush=True)
            time_of = {variant: statistics.median(samples[variant]) for variant in VARIANTS}
            for variant in VARIANTS:
                figures[f"{size}_{variant}_ms"] = round(time_of[variant], 1)
                figures[f"{size}_{variant}_min_ms"] = round(min(samples[variant]), 1)
                figures[f"{size}_{variant}_peak_rss_gb"] = round(memory_of[variant], 3)
            for other in ("reference", "live"):  # median over rounds of the ratio within a round
                paired = statistics.median(c / o for c, o in zip(samples["cached"], samples[other], strict=True))
                figures[f"{size}_cached_vs_{other}_time_paired"] = round(paired, 3)
            figures[f"{size}_cache_ms_per_image"] = round(statistics.median(samples["cache_pass"]) / args.batch, 1)
            method = (
                f"measured in {DTYPE_NAMES[MEASURED[size]]}: median step time (alternating, one process), peak RSS "
                "(a fresh process per variant)"
            )
        figures[f"{size}_method"] = method
        for other in ("reference", "live"):
            figures[f"{size}_cached_vs_{other}_time"] = round(time_of["cached"] / time_of[other], 3)
            figures[f"{size}_cached_vs_{other}_memory"] = round(memory_of["cached"] / memory_of[other], 3)
            counted_time = counted["cached"]["gflops"] / counted[other]["gflops"]
            figures[f"{size}_cached_vs_{other}_time_counted"] = round(counted_time, 3)
            figures[f"{size}_cached_vs_{other}_memory_counted"] = round(
                counted["cached"]["total_gb"] / counted[other]["total_gb"], 3
            )
        fixed = {v: counted[v]["weights_gb"] + counted[v]["gradients_and_adamw_gb"] for v in VARIANTS}
        figures[f"{size}_cached_vs_live_memory_floor"] = round(fixed["cached"] / fixed["live"], 3)  # no activations
        cache_gflops = counted["live"]["gflops"] - counted["cached"]["gflops"]  # the frozen tower's forward
        figures[f"{size}_cache_gflops_per_image"] = round(cache_gflops / args.batch, 1)
        for dtype, width in (("fp32", 4), ("fp16", 2)):
            per_image = embed_dim * width + INDEX_BYTES
            figures[f"{size}_cache_bytes_per_image_{dtype}"] = per_image
            figures[f"{size}_cache_gb_sharegpt4v_{dtype}"] = round(per_image * 1.2e6 / GB, 2)
        rows.append((size, method, time_of, memory_of, counted))

    print(
        f"\n{'size':<6}{'variant':<11}{'GFLOP':>9}{'counted GB':>12}{'time':>12}{'memory GB':>11}"
        f"{'time x ref':>12}{'mem x ref':>11}{'time x live':>13}{'mem x live':>12}"
    )
    for size, method, time_of, memory_of, counted in rows:
        unit = "ms" if size in measured_sizes else "GFLOP"
        for variant in VARIANTS:
            print(
                f"{size:<6}{variant:<11}{counted[variant]['gflops']:>9.0f}{counted[variant]['total_gb']:>12.2f}"
                f"{time_of[variant]:>9.0f} {unit:<2}{memory_of[variant]:>11.2f}"
                f"{time_of[variant] / time_of['reference']:>12.3f}{memory_of[variant] / memory_of['reference']:>11.3f}"
                f"{time_of[variant] / time_of['live']:>13.3f}{memory_of[variant] / memory_of['live']:>12.3f}"
            )
        print(f"      ({method})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
