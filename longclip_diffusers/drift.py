"""How far a Long-CLIP's conditioning drifts from the 77-token CLIP it was stretched from (`longclip drift`).

Stable Diffusion reads a CLIP text encoder's per-token states, not its pooled embedding (except as SDXL's / SD 3's
pooled vector and Flux's only CLIP input), and Long-CLIP training supervises only the pooled embedding. This module
reads both encoders as each family's pipeline reads them, with the readers the pipelines use (the family table
and `prompts`):

- `sd15`: the last layer through the final layer norm;
- `sd2`: the penultimate layer through the final layer norm: the last one of a tower stored as SD 2.x stores it
  (23 of OpenCLIP-H's 24 layers, as `longclip convert --sd2` writes), the one before it of a full tower;
- `sdxl`: the penultimate layer without the norm, and the projected pooled vector of an encoder
  that has a projection (SDXL's `text_encoder_2`);
- `sd3`: the same states and the projected pooled vector (SD 3 reads both encoders' projections);
- `flux`: CLIP-L's `pooler_output` only (`encode_pooled_prompts`; Flux reads no per-token CLIP states).

Both encoders read the same short prompts (each fits REF's window). Attention is causal, so the first 77 states of a
248-position encoder do not depend on what follows: both are read in REF's window, position for position. Per token:
the relative L2 distance `|long - ref| / |ref|` and the cosine, averaged over real tokens (BOS, the prompt, EOS) and
over padding separately, and by position; per prompt: the cosine of the pooled vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from . import families
from .atomic import atomic_write
from .checkpoint import Checkpoint, CheckpointError
from .convert import SD2_LAYERS
from .drift_prompts import DRIFT_PROMPTS
from .formats import load_checkpoint
from .prompts import (
    PromptOptions,
    TextEncoderSpec,
    encode_pooled_prompts,
    encode_windows_direct,
    text_encoder_specs,
    tokenize_windows,
)
from .stretch import DEFAULT_KEEP
from .text_encoder import build_text_model
from .writing import tokenizer_for

FAMILIES: tuple[str, ...] = tuple(families.FAMILIES)  # every family, read as it reads prompts
DRIFT_FILES = ("drift.json", "drift.png")
SUMMARY_KEYS = ("real_tokens_rel_l2", "real_tokens_cosine", "padding_rel_l2", "pooled_cosine")


@dataclass
class DriftEncoder:
    """A loaded text encoder and its tokenizer, one side of a drift comparison."""

    text_encoder: nn.Module
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def num_positions(self) -> int:
        return self.text_encoder.config.max_position_embeddings


def drift_encoder(checkpoint: Checkpoint, dtype: torch.dtype | None = None) -> DriftEncoder:
    """The text tower of `checkpoint` (with its projection, if it has one) and the tokenizer shipped beside it."""
    text_encoder = build_text_model(checkpoint, with_projection=checkpoint.has_text_projection, dtype=dtype)
    return DriftEncoder(text_encoder, tokenizer_for(checkpoint), checkpoint.source)


def load_drift_encoder(source: str | os.PathLike, *, subfolder: str | None = None, **options: Any) -> DriftEncoder:
    """Any source `longclip convert` reads (Hub id, folder, `.pt` / `.safetensors` file) as a `DriftEncoder`."""
    return drift_encoder(load_checkpoint(source, subfolder=subfolder, **options))


def check_comparable(reference: DriftEncoder, model: DriftEncoder) -> None:
    """Refuse, in one line, a pair whose states cannot be compared token for token."""
    ref_config, config = reference.text_encoder.config, model.text_encoder.config
    where = f"{model.source} against {reference.source}"
    if ref_config.hidden_size != config.hidden_size:
        raise CheckpointError(
            f"{where}: widths differ ({config.hidden_size} against {ref_config.hidden_size}); compare a Long-CLIP "
            "with the CLIP it was stretched from (e.g. Long-CLIP-L with CLIP-L)."
        )
    if ref_config.num_hidden_layers != config.num_hidden_layers:
        raise CheckpointError(
            f"{where}: depths differ ({config.num_hidden_layers} against {ref_config.num_hidden_layers} layers), so "
            "no layer reads alike; for SD 2.x write the full tower as SD 2's text encoder first "
            "(`longclip convert --sd2`)."
        )
    if reference.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise CheckpointError(
            f"{where}: the tokenizers' vocabularies differ, so the same prompt is not the same tokens."
        )
    if model.num_positions < reference.num_positions:
        raise CheckpointError(
            f"{where}: --model has {model.num_positions} positions, fewer than the reference's "
            f"{reference.num_positions}; pass the 77-token CLIP as --reference and the Long-CLIP as --model."
        )


def family_spec(family: str, encoder: DriftEncoder) -> TextEncoderSpec | None:
    """How `family` reads `encoder`'s per-token states, as the family table says its first CLIP is read (None for
    Flux, which reads none). SDXL and SD 3 read their CLIP-L and bigG the same way."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {', '.join(FAMILIES)} or all.")
    spec = families.FAMILIES[family]
    if spec.long_encoder.layer is None:
        return None
    clip_skip = 0
    # SD 2.x's OpenCLIP-H: a tower stored as SD 2.x stores it ends at the layer SD 2.x reads; a full one a layer later
    if spec.long_encoder.role == "clip_h":
        config = encoder.text_encoder.config
        clip_skip = 0 if (config.num_hidden_layers, config.hidden_size) == (SD2_LAYERS, 1024) else 1
    return text_encoder_specs(spec, [(encoder.text_encoder, encoder.tokenizer)], clip_skip)[0]


def _has_projection(encoder: DriftEncoder) -> bool:
    return hasattr(encoder.text_encoder, "text_projection")


def _pooler_model(encoder: DriftEncoder) -> nn.Module:
    """The encoder whose `pooler_output` Flux reads: the tower without its projection."""
    return encoder.text_encoder.text_model if _has_projection(encoder) else encoder.text_encoder


def prompt_token_ids(prompts: Sequence[str], reference: DriftEncoder, model: DriftEncoder) -> list[list[int]]:
    """Each prompt's token ids (no special tokens), the same for both sides; a prompt longer than the reference's
    window is refused with its number."""
    capacity = reference.num_positions - 2
    token_ids = []
    for number, prompt in enumerate(prompts, 1):
        ids = [tokenize_windows(prompt, side.tokenizer, capacity, weighting=False) for side in (reference, model)]
        if len(ids[0].token_ids) > 1:
            raise ValueError(
                f"prompt {number} ({prompt[:40]!r}...) is longer than the {capacity} tokens the reference reads; "
                "drift is measured on prompts that fit both encoders: shorten or drop it."
            )
        if ids[0].token_ids != ids[1].token_ids:
            raise ValueError(f"prompt {number} ({prompt[:40]!r}) tokenizes differently for the two encoders.")
        token_ids.append(ids[0].token_ids[0])
    return token_ids


@dataclass
class FamilyDrift:
    """One family's drift: per prompt and position [P, T] (None where the family reads no token states)."""

    family: str
    rel_l2: torch.Tensor | None
    cosine: torch.Tensor | None
    real: torch.Tensor | None  # [P, T] bool: BOS, the prompt's tokens, EOS
    pooled_cosine: torch.Tensor | None  # [P]

    def summary(self) -> dict[str, Any]:
        """Means over real tokens and over padding, the pooled cosine and the by-position means (JSON-ready)."""

        def mean(values: torch.Tensor | None) -> float | None:
            return None if values is None or values.numel() == 0 else values.double().mean().item()

        if self.rel_l2 is None:
            tokens: dict[str, Any] = dict.fromkeys(("real_tokens_rel_l2", "real_tokens_cosine", "padding_rel_l2"))
            by_position = None
        else:
            tokens = {
                "real_tokens_rel_l2": mean(self.rel_l2[self.real]),
                "real_tokens_cosine": mean(self.cosine[self.real]),
                "padding_rel_l2": mean(self.rel_l2[~self.real]),
            }
            by_position = {
                "rel_l2": self.rel_l2.double().mean(0).tolist(),
                "cosine": self.cosine.double().mean(0).tolist(),
            }
        return {**tokens, "pooled_cosine": mean(self.pooled_cosine), "by_position": by_position}


@torch.no_grad()
def read_family(
    family: str,
    encoder: DriftEncoder,
    prompts: Sequence[str],
    token_ids: Sequence[list[int]],
    length: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`encoder`'s conditioning as `family` reads it: per-token states [N, length, D] (None for Flux) and the
    pooled vector [N, E] it reads (None where it reads none). `token_ids` are `prompts` tokenized (no specials)."""
    spec = family_spec(family, encoder)
    if spec is None:  # Flux: the pooled vector alone
        options = PromptOptions(weighting=False, device=device)
        return None, encode_pooled_prompts(prompts, _pooler_model(encoder), encoder.tokenizer, options)
    states, text_embeds = encode_windows_direct(spec, token_ids, length, device)
    reads_projection = any(role.pooled == "projection" for role in families.FAMILIES[family].clip_encoders)
    return states, text_embeds if reads_projection else None


@torch.no_grad()
def measure_drift(
    reference: DriftEncoder,
    model: DriftEncoder,
    prompts: Sequence[str] = DRIFT_PROMPTS,
    families: Sequence[str] = FAMILIES,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, FamilyDrift]:
    """`model`'s conditioning against `reference`'s on `prompts`, read as each of `families` reads it."""
    check_comparable(reference, model)
    for family in families:
        family_spec(family, reference)  # refuses an unknown family before any work
    token_ids = prompt_token_ids(prompts, reference, model)
    length = reference.num_positions
    real = torch.arange(length) < torch.tensor([len(ids) + 2 for ids in token_ids]).unsqueeze(1)
    batches = [range(start, min(start + batch_size, len(prompts))) for start in range(0, len(prompts), batch_size)]
    results = {}
    with tqdm(total=len(families) * len(prompts), desc="drift", unit="prompt", disable=not progress) as bar:
        for family in families:
            rel_l2, cosine, pooled_cosine = [], [], []
            for batch in batches:
                texts, ids = [prompts[i] for i in batch], [token_ids[i] for i in batch]
                (ref_states, ref_pooled), (states, pooled) = (
                    read_family(family, side, texts, ids, length, device) for side in (reference, model)
                )
                if states is not None:
                    ref_states, states = ref_states.float(), states.float()
                    distance = (states - ref_states).norm(dim=-1)
                    rel_l2.append((distance / ref_states.norm(dim=-1).clamp_min(1e-12)).cpu())
                    cosine.append(F.cosine_similarity(states, ref_states, dim=-1).cpu())
                if pooled is not None and ref_pooled is not None:
                    pooled_cosine.append(F.cosine_similarity(pooled.float(), ref_pooled.float(), dim=-1).cpu())
                bar.update(len(batch))
            results[family] = FamilyDrift(
                family,
                torch.cat(rel_l2) if rel_l2 else None,
                torch.cat(cosine) if cosine else None,
                real if rel_l2 else None,
                torch.cat(pooled_cosine) if pooled_cosine else None,
            )
    return results


def drift_summary(reference: DriftEncoder, model: DriftEncoder, **options: Any) -> dict[str, dict[str, float | None]]:
    """The headline numbers per family (`SUMMARY_KEYS`, no by-position curve), as `longclip eval` reports them;
    `options` as in `measure_drift`."""
    results = measure_drift(reference, model, **options)
    return {family: {key: drift.summary()[key] for key in SUMMARY_KEYS} for family, drift in results.items()}


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """One prompt per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt file; give a text file with one prompt per line.")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: holds no prompts; write one prompt per line.")
    return prompts


# ----------------------------------------------------------------------------------------------------------
# Report: drift.json, drift.png, one line per family
# ----------------------------------------------------------------------------------------------------------


def drift_report(results: dict[str, FamilyDrift], reference: str, model: str, prompts: int) -> dict[str, Any]:
    """What `drift.json` holds: the pair, the prompt count, and each family's summary."""
    return {
        "reference": reference,
        "model": model,
        "prompts": prompts,
        "families": {family: drift.summary() for family, drift in results.items()},
    }


def drift_figure(report: dict[str, Any]) -> Any:
    """Relative L2 drift by token position, one line per family (the kept positions of a stretch shaded)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves the global backend alone
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for family, summary in report["families"].items():
        if summary["by_position"] is not None:
            axes.plot(summary["by_position"]["rel_l2"], label=family)
    axes.axvspan(0, DEFAULT_KEEP - 1, color="grey", alpha=0.12, label=f"first {DEFAULT_KEEP} positions")
    axes.set_xlabel("token position")
    axes.set_ylabel("relative L2 drift |long - ref| / |ref|")
    axes.set_title(f"Conditioning drift on {report['prompts']} prompts")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def write_drift_report(report: dict[str, Any], out_dir: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write `drift.json` and `drift.png` into `out_dir`, each atomically; an earlier report is kept unless
    `overwrite`."""
    paths = [Path(out_dir) / name for name in DRIFT_FILES]
    earlier = [path.name for path in paths if path.exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{out_dir}: holds an earlier drift report ({', '.join(earlier)}); choose another --out or pass "
            "--overwrite to replace it."
        )
    atomic_write(paths[0], json.dumps(report, indent=2) + "\n")
    atomic_write(paths[1], lambda f: drift_figure(report).savefig(f, format="png", dpi=120))
    return paths


def summary_line(family: str, summary: dict[str, Any]) -> str:
    """`sd15: real tokens rel L2 0.0123, cosine 0.9990; padding rel L2 0.0456; pooled cosine -`."""

    def number(key: str) -> str:
        return "-" if summary[key] is None else f"{summary[key]:.4f}"

    return (
        f"{family}: real tokens rel L2 {number('real_tokens_rel_l2')}, cosine {number('real_tokens_cosine')}; "
        f"padding rel L2 {number('padding_rel_l2')}; pooled cosine {number('pooled_cosine')}"
    )


# ----------------------------------------------------------------------------------------------------------
# Command line (`longclip drift`)
# ----------------------------------------------------------------------------------------------------------


def add_drift_arguments(parser: Any) -> None:
    """The arguments of `longclip drift`."""
    parser.add_argument("--reference", required=True, metavar="REF", help="the 77-token CLIP LONG was stretched from")
    parser.add_argument("--model", required=True, metavar="LONG", help="the Long-CLIP to measure")
    parser.add_argument("--reference-subfolder", metavar="DIR", help="read REF/DIR (e.g. text_encoder_2 of SDXL)")
    parser.add_argument("--model-subfolder", metavar="DIR", help="read LONG/DIR")
    parser.add_argument(
        "--family", choices=(*FAMILIES, "all"), default="all", help="read as this family reads it (default all)"
    )
    parser.add_argument(
        "--prompts", metavar="FILE", help=f"more prompts, one a line (added to the built-in {len(DRIFT_PROMPTS)})"
    )
    parser.add_argument("--out", metavar="DIR", help="write drift.json and drift.png here")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu)")


def run_drift(args: Any) -> str:
    """Carry out `longclip drift`; return the lines to print."""
    prompts = list(DRIFT_PROMPTS) + (read_prompt_file(args.prompts) if args.prompts else [])
    if args.out and not args.overwrite and any((Path(args.out) / name).exists() for name in DRIFT_FILES):
        write_drift_report({}, args.out)  # refuses, before any model loads
    reference = load_drift_encoder(args.reference, subfolder=args.reference_subfolder)
    model = load_drift_encoder(args.model, subfolder=args.model_subfolder)
    device = torch.device(args.device or "cpu")
    for side in (reference, model):
        side.text_encoder.to(device)
    families = FAMILIES if args.family == "all" else (args.family,)
    results = measure_drift(reference, model, prompts, families, device=device)
    report = drift_report(results, str(args.reference), str(args.model), len(prompts))
    lines = [summary_line(family, summary) for family, summary in report["families"].items()]
    if args.out:
        write_drift_report(report, args.out, args.overwrite)
        lines.append(f"wrote {', '.join(DRIFT_FILES)} to {args.out}")
    return "\n".join(lines)
