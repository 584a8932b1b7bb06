"""Benchmark: how much `train --preserve-conditioning W` holds the conditioning drift down, on the tiny training set.

What is measured
- Data and model: `longclip tiny`'s training set (48 synthetic images, captions of about 100 tokens) and its tiny
  open_clip model (text width 64, 2 layers; random weights), the settings of `first_training_command` (batch 16,
  lr 1e-3, 5 warm-up steps, 4 primary components), `--steps` steps (default 30), seed 0.
- Runs: the same start trained for the same steps with W = 0, 0.1 and 1 (`--preserve-conditioning`, default
  layers `final` and `-2`).
- Drift: `longclip_diffusers.drift.measure_drift` of each run's final model against the starting model (exported
  the same way, from the same seed), on the 240 built-in prompts, read as SD 1.5, SD 2.x, SDXL / SD 3 read it:
  mean relative L2 distance over real tokens. Retrieval: the logged fine + coarse loss, first and last step.
- Headline: the drift ratio W=1 / W=0 per family (below 1: the term holds the states), and the retrieval loss
  ratio last / first step of each run (below 1: training still learns).

The last stdout line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

from longclip_diffusers.drift import load_drift_encoder, measure_drift
from longclip_diffusers.tiny import write_tiny_training_set
from longclip_diffusers.training.config import TrainConfig
from longclip_diffusers.training.model import build_model
from longclip_diffusers.training.run_folder import export_final, metrics_rows
from longclip_diffusers.training.train import train

WEIGHTS = (0.0, 0.1, 1.0)
FAMILIES = ("sd15", "sd2", "sdxl")  # SD 3 reads the same states as SDXL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded ... initialized randomly."
    root = Path(tempfile.mkdtemp(prefix="longclip-drift-bench-"))
    write_tiny_training_set(root / "data")

    settings = dict(
        train_data=str(root / "data/train.jsonl"),
        model=str(root / "data/model.json"),
        pretrained=None,
        batch_size=16,
        max_steps=args.steps,
        lr=1e-3,
        warmup_steps=5,
        pca_components=4,
        workers=0,
        log_every=1,
        save_every=args.steps,
        report_to="none",
    )

    def config(weight: float) -> TrainConfig:
        return TrainConfig(**settings, output=str(root / f"w{weight}"), preserve_conditioning=weight)

    torch.manual_seed(0)  # as training seeds itself before building the model
    start, _, model_cfg = build_model(config(0.0))
    export_final(start, model_cfg, root / "start")
    reference = load_drift_encoder(root / "start")

    drift: dict[float, dict[str, float]] = {}
    retrieval: dict[float, tuple[float, float]] = {}
    for weight in WEIGHTS:
        output = train(config(weight))
        rows = metrics_rows(output / "metrics.jsonl")
        retrieval[weight] = tuple(row["fine_loss"] + row["coarse_loss"] for row in (rows[0], rows[-1]))
        results = measure_drift(reference, load_drift_encoder(output / "final"), families=FAMILIES, progress=False)
        drift[weight] = {family: result.summary()["real_tokens_rel_l2"] for family, result in results.items()}

    print(f"\n{args.steps} steps on the tiny training set; drift: mean relative L2 over real tokens, 240 prompts")
    print(f"{'W':>5}" + "".join(f"{family:>10}" for family in FAMILIES) + f"{'retrieval loss first -> last':>32}")
    for weight in WEIGHTS:
        first, last = retrieval[weight]
        cells = "".join(f"{drift[weight][family]:>10.4f}" for family in FAMILIES)
        print(f"{weight:>5g}{cells}{first:>22.3f} -> {last:.3f}")
    figures = {"steps": args.steps, "prompts": 240}
    for family in FAMILIES:
        figures[f"drift_ratio_w1_vs_w0_{family}"] = round(drift[1.0][family] / drift[0.0][family], 3)
        figures[f"drift_ratio_w0.1_vs_w0_{family}"] = round(drift[0.1][family] / drift[0.0][family], 3)
    for weight in WEIGHTS:
        figures[f"drift_w{weight:g}"] = {family: round(value, 4) for family, value in drift[weight].items()}
        figures[f"retrieval_loss_ratio_last_vs_first_w{weight:g}"] = round(
            retrieval[weight][1] / retrieval[weight][0], 3
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
