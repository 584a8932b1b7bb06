"""The report of `longclip eval`: `results.json`, a markdown table (`results.md`) and a bar chart (`results.png`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longclip_diffusers.atomic import atomic_write
from longclip_diffusers.drift import SUMMARY_KEYS

_TABLE_COLUMNS = (
    ("I2T R@1", "i2t_R@1"),
    ("I2T R@5", "i2t_R@5"),
    ("I2T R@10", "i2t_R@10"),
    ("T2I R@1", "t2i_R@1"),
    ("T2I R@5", "t2i_R@5"),
    ("T2I R@10", "t2i_R@10"),
    ("top-1", "top1"),
    ("top-5", "top5"),
)


def results_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table: one row per model and benchmark; recall and accuracy in percent."""
    header = ["model", "tokens", "benchmark", *(title for title, _ in _TABLE_COLUMNS)]
    lines = [
        "# Evaluation results",
        "",
        "Recall@k (image to text, text to image) and zero-shot accuracy, in percent.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(_TABLE_COLUMNS)) + "|",
    ]
    for name, scores in report["results"].items():
        tokens = report["models"][name]["max_length"]
        for benchmark, values in scores.items():
            cells = [f"{values[key]:.1f}" if key in values else "–" for _, key in _TABLE_COLUMNS]
            lines.append("| " + " | ".join([name, str(tokens), benchmark, *cells]) + " |")
    lines += drift_markdown(report)
    lines += ["", "Models:", ""]
    lines += [f"- {name}: `{model['source']}`" for name, model in report["models"].items()]
    lines += ["", "Benchmarks:", ""]
    for name, about in report["benchmarks"].items():
        counts = ", ".join(f"{value} {key}" for key, value in about.items() if key != "kind")
        lines.append(f"- {name} ({about['kind']}): {counts}")
    return "\n".join(lines) + "\n"


def drift_markdown(report: Mapping[str, Any]) -> list[str]:
    """The conditioning-drift table (`eval --drift-reference`): one row per model and Stable Diffusion family."""
    if "drift" not in report:
        return []
    lines = [
        "",
        f"Conditioning drift against `{report['drift']['reference']}` (0 and 1.000: the reference's own conditioning):",
        "",
        "| model | family | real tokens rel L2 | real tokens cosine | padding rel L2 | pooled cosine |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, families in report["drift"]["models"].items():
        for family, summary in families.items():
            cells = ["–" if summary[key] is None else f"{summary[key]:.4f}" for key in SUMMARY_KEYS]
            lines.append("| " + " | ".join([name, family, *cells]) + " |")
    return lines


def results_figure(report: Mapping[str, Any]) -> Any:
    """A bar chart of R@1 (I2T and T2I) and zero-shot top-1 per benchmark, one bar per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves the global backend alone
    from matplotlib.figure import Figure

    groups: list[tuple[str, str, str]] = []  # (label, benchmark, metric)
    for benchmark, about in report["benchmarks"].items():
        if about["kind"] == "retrieval":
            groups += [(f"{benchmark}\nI2T R@1", benchmark, "i2t_R@1"), (f"{benchmark}\nT2I R@1", benchmark, "t2i_R@1")]
        else:
            groups.append((f"{benchmark}\ntop-1", benchmark, "top1"))
    names = list(report["results"])
    figure = Figure(figsize=(min(24.0, 3.0 + len(groups) * (0.4 + 0.3 * len(names))), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(names))
    for offset, name in enumerate(names):
        scores = report["results"][name]
        values = [scores.get(benchmark, {}).get(metric, float("nan")) for _, benchmark, metric in groups]
        positions = [index + (offset - (len(names) - 1) / 2) * width for index in range(len(groups))]
        bars = axes.bar(positions, values, width, label=name)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(groups)), [label for label, _, _ in groups], fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("R@1 / top-1 (%)")
    axes.set_title("Retrieval R@1 and zero-shot top-1")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return figure


RESULT_FILES = ("results.json", "results.md", "results.png")


def write_results(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write `results.json`, `results.md` and `results.png` into `out_dir`, each atomically."""
    paths = [Path(out_dir) / name for name in RESULT_FILES]  # `atomic_write` makes the folder
    atomic_write(paths[0], json.dumps(report, indent=2) + "\n")
    atomic_write(paths[1], results_markdown(report))
    atomic_write(paths[2], lambda f: results_figure(report).savefig(f, format="png", dpi=120))
    return paths
