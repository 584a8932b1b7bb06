"""Benchmark: loading a Long-CLIP text encoder, `LongCLIPTextEncoder.from_pretrained` against transformers' plain
`from_pretrained` of the same weights.

What is measured
- Source: a Hugging Face text-encoder folder (config.json + model.safetensors) with random fp32 weights at real
  size, 248 positions: Long-CLIP-L (CLIPTextModel, 123 M parameters, 0.49 GB), and with `--big-g` also a long
  OpenCLIP-bigG (CLIPTextModelWithProjection, 695 M parameters, 2.8 GB). Built once in the work folder.
- plain: `CLIPTextModel.from_pretrained(folder)` (`CLIPTextModelWithProjection` for bigG).
- ours: `LongCLIPTextEncoder.from_pretrained(folder)`: reads the checkpoint (any layout), checks its shapes, and
  assigns its memory-mapped tensors to a model built on the meta device. Its scan refusing NaN or infinite
  weights reads every weight (the whole file, where a forward pass reads only the rows of the tokens it
  embeds), so it runs at the first forward pass, inside "to first encoding".
- ours, unscanned (for reference): the same without that scan: the difference between the two is the scan.
- folder route (for reference): what loading did before, write the model to a temporary folder and
  `from_pretrained` it (reproduced here with `writing.write_text_encoder`).

How
- Every load runs in a fresh subprocess that imports the same modules (torch, transformers, longclip_diffusers)
  before it starts the clock, so imports weigh the same in every variant. Time: wall time of the load call, and
  of the load and a first 248-token forward pass.
  Peak RSS: of the load, the child's VmHWM read just after it; and of the load and first encoding, the child's
  `ru_maxrss` (from `os.wait4`; this script never imports torch, so a child's figure is its own). CPU time: the
  child's `process_time` across the load call (all its threads; the figure least moved by other work on the
  machine). Written: the child's `/proc/self/io` write_bytes (bytes sent towards storage, counted as pages are
  dirtied) across the load call, and the files left in or passed through its own empty TMPDIR.
- The source is read once beforehand (a warm page cache for every run); the variants alternate for `--repeats`
  rounds (default 3) and the median time and peak RSS are reported.

The last stdout line is one JSON object: per size, the ratios ours/plain of time and peak RSS and the bytes ours
writes (targets: <= 1.05, <= 1.05, 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "longclip-load-bench"
SIZES = {
    "clip-l": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "big-g": dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280
    ),
}
MODEL_CLASSES = {"clip-l": "CLIPTextModel", "big-g": "CLIPTextModelWithProjection"}

BUILD = """
import sys, torch, transformers
size, folder, model_class = sys.argv[1], sys.argv[2], sys.argv[3]
config = transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=248, hidden_act="quick_gelu"
    if size == "clip-l" else "gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, {sizes})
torch.manual_seed(0)
getattr(transformers, model_class)(config).save_pretrained(folder)
"""

LOAD = """
import json, os, sys, tempfile, time
import torch, transformers
import longclip_diffusers
from longclip_diffusers import LongCLIPTextEncoder
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.writing import write_text_encoder

variant, folder, model_class = sys.argv[1], sys.argv[2], getattr(transformers, sys.argv[3])

def folder_route():
    checkpoint = load_checkpoint(folder)
    with tempfile.TemporaryDirectory(prefix="longclip-") as tmp:
        write_text_encoder(checkpoint, __import__("pathlib").Path(tmp))
        return model_class.from_pretrained(tmp).eval()

if variant == "ours_unscanned":  # without the scan refusing NaN / infinite weights, which reads every weight
    import longclip_diffusers.text_encoder
    longclip_diffusers.text_encoder.refuse_non_finite_at_first_use = lambda model, source: None

load = {
    "plain": lambda: model_class.from_pretrained(folder),
    "ours": lambda: LongCLIPTextEncoder.from_pretrained(folder),
    "ours_unscanned": lambda: LongCLIPTextEncoder.from_pretrained(folder),
    "folder_route": folder_route,
}[variant]

def write_bytes():
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())["write_bytes"])

written, start, cpu_start = write_bytes(), time.perf_counter(), time.process_time()
model = load()
seconds, cpu_seconds, written = time.perf_counter() - start, time.process_time() - cpu_start, write_bytes() - written
load_peak_rss = 1024 * int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
with torch.no_grad():
    model(torch.arange(248).unsqueeze(0) % 49408)
to_first_encoding = time.perf_counter() - start
parameters = sum(p.numel() for p in model.parameters())
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "load_peak_rss": load_peak_rss,
                  "to_first_encoding": to_first_encoding, "written": written, "parameters": parameters}))
"""


def run_child(code: str, *args: str, tmpdir: Path | None = None) -> tuple[str, int]:
    """Run `code` in a fresh interpreter; return its stdout and its peak RSS in bytes."""
    env = dict(os.environ, TMPDIR=str(tmpdir)) if tmpdir else None
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {args} failed with status {status}")
    return stdout, usage.ru_maxrss * 1024


def ensure_source(workdir: Path, size: str) -> Path:
    folder = workdir / size
    if not (folder / "model.safetensors").is_file():
        print(f"building a random {size} text encoder in {folder} ...", flush=True)
        sizes = ", ".join(f"{key}={value}" for key, value in SIZES[size].items())
        run_child(BUILD.replace("{sizes}", sizes), size, str(folder), MODEL_CLASSES[size])
    with open(folder / "model.safetensors", "rb") as handle:  # warm the page cache
        while handle.read(1 << 24):
            pass
    return folder


def measure(workdir: Path, size: str, repeats: int, variants: tuple[str, ...]) -> dict:
    folder = ensure_source(workdir, size)
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            with tempfile.TemporaryDirectory(prefix="load-bench-tmp-") as tmpdir:
                watched = Path(tmpdir)
                stdout, peak = run_child(LOAD, variant, str(folder), MODEL_CLASSES[size], tmpdir=watched)
                left = sum(1 for path in watched.rglob("*") if not path.is_dir())
            figures = json.loads(stdout.strip().splitlines()[-1])
            runs[variant].append({**figures, "peak_rss": peak, "files_left_in_tmpdir": left})
    result = {}
    for variant, measured in runs.items():
        result[variant] = {
            "seconds": statistics.median(run["seconds"] for run in measured),
            "cpu_seconds": statistics.median(run["cpu_seconds"] for run in measured),
            "to_first_encoding": statistics.median(run["to_first_encoding"] for run in measured),
            "load_peak_rss_gb": statistics.median(run["load_peak_rss"] for run in measured) / 1e9,
            "peak_rss_gb": statistics.median(run["peak_rss"] for run in measured) / 1e9,
            "written_bytes": max(run["written"] for run in measured),
            "files_left_in_tmpdir": max(run["files_left_in_tmpdir"] for run in measured),
            "parameters": measured[0]["parameters"],
        }
        figures = result[variant]
        print(
            f"{size:7s} {variant:14s} load {figures['seconds']:6.2f} s (CPU {figures['cpu_seconds']:6.2f} s), "
            f"to first encoding {figures['to_first_encoding']:6.2f} s  peak RSS {figures['load_peak_rss_gb']:5.2f} GB "
            f"(to first encoding {figures['peak_rss_gb']:5.2f} GB)  written {figures['written_bytes'] / 1e6:8.1f} MB",
            flush=True,
        )
    ours, plain = result["ours"], result["plain"]
    result["ratios"] = {
        "time": ours["seconds"] / plain["seconds"],
        "cpu_time": ours["cpu_seconds"] / plain["cpu_seconds"],
        "time_to_first_encoding": ours["to_first_encoding"] / plain["to_first_encoding"],
        "peak_rss": ours["load_peak_rss_gb"] / plain["load_peak_rss_gb"],
        "peak_rss_to_first_encoding": ours["peak_rss_gb"] / plain["peak_rss_gb"],
        "written_bytes": ours["written_bytes"],
    }
    unscanned = result["ours_unscanned"]
    result["ratios"]["unscanned_time"] = unscanned["seconds"] / plain["seconds"]
    result["ratios"]["unscanned_time_to_first_encoding"] = unscanned["to_first_encoding"] / plain["to_first_encoding"]
    result["ratios"]["unscanned_peak_rss_to_first_encoding"] = unscanned["peak_rss_gb"] / plain["peak_rss_gb"]
    if "folder_route" in result:
        route = result["folder_route"]
        result["ratios"]["folder_route_time"] = route["seconds"] / plain["seconds"]
        first = route["to_first_encoding"] / plain["to_first_encoding"]
        result["ratios"]["folder_route_time_to_first_encoding"] = first
        result["ratios"]["folder_route_peak_rss"] = route["peak_rss_gb"] / plain["peak_rss_gb"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-g", action="store_true", help="also measure a bigG-size encoder (2.8 GB, ~12 GB RAM)")
    parser.add_argument("--no-folder-route", action="store_true", help="leave out the earlier folder route")
    args = parser.parse_args()
    variants = ("plain", "ours", "ours_unscanned") + (() if args.no_folder_route else ("folder_route",))
    sizes = ("clip-l", "big-g") if args.big_g else ("clip-l",)
    results = {size: measure(args.workdir, size, args.repeats, variants) for size in sizes}
    summary = {size: result["ratios"] for size, result in results.items()}
    print(json.dumps({"ratios": summary, "details": results}, sort_keys=True))


if __name__ == "__main__":
    main()
