"""Benchmark: one Long-CLIP training step against a plain open_clip contrastive step, same model and batch.

What is measured
- Model: an open_clip `CLIP` from a config dict (embed_dim 256; text width 256, 4 layers, 4 heads, vocab 49408;
  ViT 64 px, patch 16, width 256, 4 layers, 4 heads), built by the trainer's own `build_model` (random weights,
  text tower stretched to 248 positions, `logit_scale` = ln(100)) from the same seed for every variant, so all
  start from identical weights. AdamW with the trainer's defaults (lr 1e-6, weight decay 0.01).
- Batch: 64 random 64 px images; 248-token texts of random ids with BOS, EOT at realistic positions (long
  captions 150-230 tokens, short ones 15-30, EOT included) and pads (id 0) after, as the trainer's tokenizer
  writes them. All variants read the same tensors.
- `plain`: open_clip's contrastive step: `model(images, long_text)`, `open_clip.loss.ClipLoss`, backward,
  AdamW step, zero_grad.
- `ours`: the trainer's step (`training.train`), its objects (`training.model`): `TrainingModel(clip)` forward (image
  features, then each text batch cut after its last end-of-text token by `encode_text_cut` and encoded
  separately: 64 x longest-long + 64 x longest-short text tokens),
  `LongCLIPLoss(pca_components=32, pca_scope="local")(*features)` (PCA of the image features, gathered losses -
  one process, so the gather is the identity), backward, AdamW step, zero_grad, `FrozenRows.restore()` (with
  its gradient hook on the position table).
- `ours_ckpt`: `ours` with gradient checkpointing (`--grad-checkpointing`, `model.set_grad_checkpointing(True)`).
- `ours_preserve`: `ours` with `--preserve-conditioning 1` (`training.preserve.ConditioningKeeper`, default layers
  `final` and `-2`): the live states read by hooks during the same forward, the frozen starting tower run without
  gradients on the short captions and the first 77 tokens of the long ones, the term added to the loss
  (`*_preserve_vs_ours`; target <= 1.25x time, <= 1.15x memory). Its frozen copy is built with the model, so it is
  in the RSS before the first step: `preserve_frozen_copy_mb` gives its size, and `memory_ratio_preserve_vs_ours_total`
  counts it (RSS before the first step plus the peak over the steps).
- `uncut`: the reference-equivalent step, as the trainer ran before the cut: one `clip(images, cat(long,
  short))` call (128 x 248 text tokens), the same loss, backward, AdamW, zero_grad and `FrozenRows.restore()`.
  It shows what the cut saves (`*_ours_vs_uncut`).
- Exactness: on one model, `TrainingModel`'s features against `uncut`'s (max abs difference per output) and
  the two losses; the cut is exact because attention is causal and pooling reads the end-of-text token.

How
- Time: every variant has its own model and optimizer in this process; each is warmed up with one step (which
  also allocates AdamW's state), then `--repeats` rounds (default 10) run one step of each per round, so load
  from other processes falls on all alike; the median is reported (headline ratios: ratio of medians), with
  the fastest step and the paired ratio (median over rounds of the ratio within a round) beside it, since
  other work on a shared 2-core machine slows 2-thread steps a lot and unevenly. fp32, CPU, torch's default
  thread count.
- Memory: every variant runs in its own fresh subprocess, twice, once per method:
  `rss`: build the model, optimizer and batch, `malloc_trim(0)`, reset the kernel's peak-RSS mark (write 5 to
  /proc/self/clear_refs), read VmRSS, run `--memory-steps` steps (default 2), read VmHWM: the peak RSS over
  the steps minus the RSS before the first step (so AdamW's state and the gradients count, the weights and
  the batch do not).
  `alloc`: the same steps under `torch.profiler` (`profile_memory=True`); every CPU allocation and free from
  the profiler's event tree, in time order, summed: the peak of live allocated bytes over the steps relative
  to before the first (allocator-level: no heap fragmentation, no allocator caching).
  Both methods also give the steady-state figure: the same peak over one more step, measured from just before
  it (optimizer state already there, gradients freed by zero_grad): activations + gradients + temporaries.

The last stdout line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from timing import interleaved_times

VARIANTS = ("plain", "uncut", "ours", "ours_ckpt", "ours_preserve")
MB = 1e6
BATCH = 64
IMAGE_SIZE = 64
CONTEXT = 248
BOS, EOT = 49406, 49407
LONG_LENGTHS = (150, 230)  # tokens including BOS and EOT
SHORT_LENGTHS = (15, 30)
MODEL_CONFIG = {
    "embed_dim": 256,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}
CONFIG_NAME = "longclip-bench-train-step"


# ----------------------------------------------------------------------------------------------------------
# Model, batch and the steps
# ----------------------------------------------------------------------------------------------------------


def captions(lengths: list[int], generator: torch.Generator) -> torch.Tensor:
    """248-token ids as the trainer's tokenizer writes them: BOS, random ids, EOT ending each caption (`lengths`
    include both), then pads ("!" = id 0)."""
    ids = torch.zeros(len(lengths), CONTEXT, dtype=torch.long)
    for row, length in zip(ids, lengths, strict=True):
        row[:length] = torch.randint(1, BOS, (length,), generator=generator)
        row[0], row[length - 1] = BOS, EOT
    return ids


def make_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def lengths(low: int, high: int) -> list[int]:
        return torch.randint(low, high + 1, (BATCH,), generator=generator).tolist()

    return {
        "image": torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "long_text": captions(lengths(*LONG_LENGTHS), generator),
        "short_text": captions(lengths(*SHORT_LENGTHS), generator),
    }


def build(variant: str, config_dir: Path):
    """The model (from seed 0, via the trainer's `build_model`) and the trainer's config for `variant`."""
    from longclip_diffusers.training.config import TrainConfig
    from longclip_diffusers.training.model import build_model

    config_file = config_dir / f"{CONFIG_NAME}.json"
    if not config_file.is_file():
        config_file.write_text(json.dumps(MODEL_CONFIG))
    config = TrainConfig(model=str(config_file), pretrained=None, grad_checkpointing=variant == "ours_ckpt")
    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded ... initialized randomly."
    try:
        model, _, _ = build_model(config)
    finally:
        logging.disable(logging.NOTSET)
    return model.train(), config


def cut_length(text: torch.Tensor) -> int:
    """Text tokens per caption that `encode_text_cut` reads: through the batch's last end-of-text token."""
    return int((text == EOT).int().argmax(dim=-1).max()) + 1


def uncut_forward(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
    """The reference-equivalent forward (the trainer's before the cut): one model call, images and long + short
    captions concatenated at full length; the same outputs as `TrainingModel`."""
    texts = torch.cat([batch["long_text"], batch["short_text"]])
    image_features, text_features, logit_scale = model(batch["image"], texts)[:3]
    return image_features, *text_features.chunk(2), logit_scale


def make_step(variant: str, batch: dict, config_dir: Path) -> Callable[[], float]:
    """One training step of `variant` on its own model and optimizer; returns the loss."""
    from open_clip.loss import ClipLoss

    from longclip_diffusers.training.loss import LongCLIPLoss
    from longclip_diffusers.training.model import FrozenRows, TrainingModel
    from longclip_diffusers.training.preserve import ConditioningKeeper

    clip, config = build(variant, config_dir)
    keeper = ConditioningKeeper(clip) if variant == "ours_preserve" else None
    parameters = [p for p in clip.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )

    if variant == "plain":
        clip_loss = ClipLoss()

        def plain_step() -> float:
            image_features, text_features, logit_scale = clip(batch["image"], batch["long_text"])[:3]
            loss = clip_loss(image_features, text_features, logit_scale)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()

        return plain_step

    frozen = FrozenRows(clip, config.keep)
    criterion = LongCLIPLoss(pca_components=32, pca_scope="local")
    model = TrainingModel(clip)

    def forward() -> tuple[torch.Tensor, ...]:
        if variant == "uncut":
            return uncut_forward(clip, batch)
        return model(batch["image"], batch["long_text"], batch["short_text"])

    def ours_step() -> float:
        if keeper is None:
            losses = criterion(*forward())
        else:
            with keeper.capture(clip):
                losses = criterion(*forward())
            losses["loss"] = losses["loss"] + keeper.loss(batch["long_text"], batch["short_text"])[0]
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        frozen.restore()
        return losses["loss"].item()

    return ours_step


@torch.no_grad()
def check_cut(batch: dict, config_dir: Path) -> dict[str, float | int]:
    """`TrainingModel` (cut) against the uncut forward on one model: feature and loss differences, text
    tokens read."""
    from longclip_diffusers.training.loss import LongCLIPLoss
    from longclip_diffusers.training.model import TrainingModel

    clip, _ = build("ours", config_dir)
    criterion = LongCLIPLoss(pca_components=32, pca_scope="local")
    uncut = uncut_forward(clip, batch)
    cut = TrainingModel(clip)(batch["image"], batch["long_text"], batch["short_text"])
    losses = [criterion(*features)["loss"] for features in (uncut, cut)]
    diffs = [float((a - b).abs().max()) for a, b in zip(uncut, cut, strict=True)]
    return {
        "cut_max_abs_diff_image_features": diffs[0],
        "cut_max_abs_diff_long_features": diffs[1],
        "cut_max_abs_diff_short_features": diffs[2],
        "cut_max_abs_diff_logit_scale": diffs[3],
        "cut_max_abs_diff_text_features": max(diffs[1:3]),
        "cut_abs_diff_loss": float((losses[0] - losses[1]).abs()),
        "cut_long_length": cut_length(batch["long_text"]),
        "cut_short_length": cut_length(batch["short_text"]),
    }


def frozen_copy_mb(config_dir: Path) -> float:
    """The size of `--preserve-conditioning`'s frozen starting tower (parameters and buffers)."""
    from longclip_diffusers.training.preserve import ConditioningKeeper

    frozen = ConditioningKeeper(build("ours", config_dir)[0]).frozen
    return sum(t.numel() * t.element_size() for t in itertools.chain(frozen.parameters(), frozen.buffers())) / MB


# ----------------------------------------------------------------------------------------------------------
# Memory (in a fresh child process per variant and method)
# ----------------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _release_free_heap() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_peak(step: Callable[[], float], steps: int) -> tuple[float, float, float]:
    """(RSS before the first step, peak RSS over all steps minus it, peak over the last step minus the RSS
    before it), in MB."""

    def run(count: int) -> tuple[float, float]:
        _release_free_heap()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
        for _ in range(count):
            step()
        return before * 1024 / MB, (_status_kib("VmHWM") - before) * 1024 / MB

    before, over_all = run(steps)  # from a fresh state: AdamW's state and gradients are allocated here
    _, over_last = run(1)  # steady state, one more step
    return before, over_all, over_last


def alloc_peak(step: Callable[[], float], steps: int) -> tuple[float, float, float]:
    """(0, peak of live CPU allocations over all steps relative to before the first, the same over one more
    step), in MB, from torch.profiler's allocation events."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    def run(count: int) -> float:
        _release_free_heap()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(count):
                step()
        sizes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        return max([0, *itertools.accumulate(size for _, size in sorted(sizes))]) / MB

    over_all = run(steps)  # from a fresh state: AdamW's state and gradients are allocated here
    over_last = run(1)  # steady state, one more step
    return 0.0, over_all, over_last


def memory_child(variant: str, method: str, steps: int) -> None:
    config_dir = Path(tempfile.mkdtemp(prefix="longclip-train-step-"))
    step = make_step(variant, make_batch(), config_dir)
    before, over_all, over_last = (rss_peak if method == "rss" else alloc_peak)(step, steps)
    print(json.dumps({"before_mb": before, "peak_mb": over_all, "steady_peak_mb": over_last}))


def measure_memory(variant: str, method: str, steps: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", variant, method, "--memory-steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant; median reported")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per memory measurement from a fresh state")
    parser.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, args.memory_steps)

    batch = make_batch()
    config_dir = Path(tempfile.mkdtemp(prefix="longclip-train-step-"))
    cut = check_cut(batch, config_dir)
    tokens = {
        "plain": BATCH * CONTEXT,
        "uncut": 2 * BATCH * CONTEXT,
        "ours": BATCH * (cut["cut_long_length"] + cut["cut_short_length"]),
        "ours_ckpt": BATCH * (cut["cut_long_length"] + cut["cut_short_length"]),
        "ours_preserve": BATCH * (cut["cut_long_length"] + cut["cut_short_length"]),
    }
    print(
        f"torch threads: {torch.get_num_threads()}; batch {BATCH}; longest long caption {cut['cut_long_length']}, "
        f"longest short caption {cut['cut_short_length']} tokens; TrainingModel (cut) vs uncut: max abs diff "
        f"image {cut['cut_max_abs_diff_image_features']:.2e}, long {cut['cut_max_abs_diff_long_features']:.2e}, "
        f"short {cut['cut_max_abs_diff_short_features']:.2e}, loss abs diff {cut['cut_abs_diff_loss']:.2e}",
        flush=True,
    )

    memory: dict[str, dict[str, dict[str, float]]] = {}
    for variant in VARIANTS:
        memory[variant] = {method: measure_memory(variant, method, args.memory_steps) for method in ("rss", "alloc")}
        rss, alloc = memory[variant]["rss"], memory[variant]["alloc"]
        print(
            f"  memory {variant}: peak RSS +{rss['peak_mb']:.0f} MB (steady step +{rss['steady_peak_mb']:.0f}), "
            f"peak live alloc +{alloc['peak_mb']:.0f} MB (steady step +{alloc['steady_peak_mb']:.0f})",
            flush=True,
        )

    steps = {variant: make_step(variant, batch, config_dir) for variant in VARIANTS}
    samples = interleaved_times(steps, args.repeats)
    timings = {variant: statistics.median(values) for variant, values in samples.items()}
    fastest = {variant: min(values) for variant, values in samples.items()}

    def paired_ratio(variant: str, baseline: str = "plain") -> float:
        """Median over rounds of variant / baseline within the round: robust to load changing between rounds."""
        return statistics.median(a / b for a, b in zip(samples[variant], samples[baseline], strict=True))

    paired = {variant: paired_ratio(variant) for variant in VARIANTS}

    print(
        f"\n{'step':<11}{'median ms':>10}{'x plain':>8}{'paired':>8}{'min ms':>8}{'x plain':>8}{'text tokens':>12}"
        f"{'peak RSS MB':>12}{'x plain':>8}{'peak alloc MB':>14}{'x plain':>8}"
    )
    for variant in VARIANTS:
        rss, alloc = memory[variant]["rss"]["peak_mb"], memory[variant]["alloc"]["peak_mb"]
        print(
            f"{variant:<11}{timings[variant]:>10.0f}{timings[variant] / timings['plain']:>8.2f}{paired[variant]:>8.2f}"
            f"{fastest[variant]:>8.0f}{fastest[variant] / fastest['plain']:>8.2f}{tokens[variant]:>12}"
            f"{rss:>12.0f}{rss / memory['plain']['rss']['peak_mb']:>8.2f}"
            f"{alloc:>14.0f}{alloc / memory['plain']['alloc']['peak_mb']:>8.2f}"
        )
    print(
        "(paired: median over rounds of the ratio within a round; memory peak: over the first steps from a fresh "
        "optimizer, minus the memory before them)\n"
    )

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3)

    figures: dict[str, float | int | str] = {
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "batch": BATCH,
        "context_length": CONTEXT,
        "memory_steps": args.memory_steps,
    }
    for variant in VARIANTS:
        figures[f"{variant}_ms"] = round(timings[variant], 1)
    for variant in VARIANTS:
        figures[f"{variant}_min_ms"] = round(fastest[variant], 1)
    for variant in VARIANTS:
        figures[f"{variant}_text_tokens"] = tokens[variant]
    for variant in VARIANTS:
        for method in ("rss", "alloc"):
            figures[f"{variant}_peak_{method}_mb"] = round(memory[variant][method]["peak_mb"], 1)
            figures[f"{variant}_steady_peak_{method}_mb"] = round(memory[variant][method]["steady_peak_mb"], 1)
    peak = {variant: memory[variant]["rss"]["peak_mb"] for variant in VARIANTS}
    alloc = {variant: memory[variant]["alloc"]["peak_mb"] for variant in VARIANTS}
    figures.update(
        {
            "time_ratio_ours_vs_plain": ratio(timings["ours"], timings["plain"]),
            "time_ratio_ours_vs_plain_paired": round(paired["ours"], 3),
            "time_ratio_ours_vs_plain_min": ratio(fastest["ours"], fastest["plain"]),
            "memory_ratio_ours_vs_plain": ratio(peak["ours"], peak["plain"]),
            "memory_ratio_ours_vs_plain_alloc": ratio(alloc["ours"], alloc["plain"]),
            "memory_ratio_ours_vs_plain_steady_rss": ratio(
                memory["ours"]["rss"]["steady_peak_mb"], memory["plain"]["rss"]["steady_peak_mb"]
            ),
            "memory_method": "rss: fresh subprocess per variant, VmHWM (reset via /proc/self/clear_refs after "
            "malloc_trim) minus VmRSS before the first step; alloc: torch.profiler profile_memory, peak of summed "
            "live CPU allocations over the same steps; steady: the same over one later step",
            "grad_ckpt_memory_ratio": ratio(peak["ours_ckpt"], peak["ours"]),
            "grad_ckpt_saved_mb": round(peak["ours"] - peak["ours_ckpt"], 1),
            "grad_ckpt_memory_ratio_alloc": ratio(alloc["ours_ckpt"], alloc["ours"]),
            "grad_ckpt_saved_mb_alloc": round(alloc["ours"] - alloc["ours_ckpt"], 1),
            "grad_ckpt_time_ratio": ratio(timings["ours_ckpt"], timings["ours"]),
            "grad_ckpt_time_ratio_paired": round(paired_ratio("ours_ckpt", "ours"), 3),
            "grad_ckpt_extra_ms": round(timings["ours_ckpt"] - timings["ours"], 1),
            "time_ratio_ours_vs_uncut": ratio(timings["ours"], timings["uncut"]),
            "time_ratio_ours_vs_uncut_paired": round(paired_ratio("ours", "uncut"), 3),
            "time_ratio_ours_vs_uncut_min": ratio(fastest["ours"], fastest["uncut"]),
            "memory_ratio_ours_vs_uncut": ratio(peak["ours"], peak["uncut"]),
            "memory_ratio_ours_vs_uncut_alloc": ratio(alloc["ours"], alloc["uncut"]),
            "memory_ratio_ours_vs_uncut_steady_rss": ratio(
                memory["ours"]["rss"]["steady_peak_mb"], memory["uncut"]["rss"]["steady_peak_mb"]
            ),
            "time_ratio_preserve_vs_ours": ratio(timings["ours_preserve"], timings["ours"]),
            "time_ratio_preserve_vs_ours_paired": round(paired_ratio("ours_preserve", "ours"), 3),
            "time_ratio_preserve_vs_ours_min": ratio(fastest["ours_preserve"], fastest["ours"]),
            "memory_ratio_preserve_vs_ours": ratio(peak["ours_preserve"], peak["ours"]),
            "memory_ratio_preserve_vs_ours_alloc": ratio(alloc["ours_preserve"], alloc["ours"]),
            "memory_ratio_preserve_vs_ours_total": ratio(
                memory["ours_preserve"]["rss"]["before_mb"] + peak["ours_preserve"],
                memory["ours"]["rss"]["before_mb"] + peak["ours"],
            ),
            "preserve_frozen_copy_mb": round(frozen_copy_mb(config_dir), 1),
            "time_ratio_uncut_vs_plain": ratio(timings["uncut"], timings["plain"]),
            "time_ratio_uncut_vs_plain_paired": round(paired["uncut"], 3),
            "memory_ratio_uncut_vs_plain": ratio(peak["uncut"], peak["plain"]),
            "memory_ratio_uncut_vs_plain_alloc": ratio(alloc["uncut"], alloc["plain"]),
            **{key: round(value, 9) if isinstance(value, float) else value for key, value in cut.items()},
            "reference_time_ratio_from_facts": 2.1,
        }
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
