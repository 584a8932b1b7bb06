"""Benchmark: loading a Long-CLIP-L inside ComfyUI, the "Load Long-CLIP" node against ComfyUI core's CLIPLoader.

What is measured
- Source: a random Long-CLIP-L at CLIP-L's real shape (12 layers of width 768, 248 positions, text projection),
  fp32, in the single-file layout `longclip comfy-export` writes (about 493 MB), in a temporary ComfyUI base folder.
- Core: `nodes.CLIPLoader().load_clip(name, "stable_diffusion")` (ComfyUI detects the 248 positions).
- Ours: `LongCLIPLoader().load(name, "clip_l")`, the node as ComfyUI calls it.

How
- Each load runs in a fresh subprocess that imports ComfyUI (`--cpu --fp32-text-enc`, ComfyUI's source from
  `--comfyui` or COMFYUI_DIR), then times the load call alone. The child reports the bytes it wrote during the load
  (`wchar` of /proc/self/io: every write system call, temporary files included) and its resident memory before and
  after (VmHWM, the peak). `--repeats` runs of each, alternating; the best time is reported with that run's figures.

The last stdout line is one JSON object with all figures (ratios are ours / core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from longclip_diffusers.tiny_comfy import write_random_long_clip_l

ENCODER = "LongCLIP-L-bench.safetensors"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _written() -> int:
    return int(
        next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("wchar")).split()[1]
    )


def child(variant: str, comfyui: str, base: str) -> None:
    """Import ComfyUI, load the encoder the `variant` way, print one JSON line."""
    sys.path.insert(0, comfyui)
    sys.argv = ["main.py", "--cpu", "--fp32-text-enc", "--base-directory", base]
    import comfy.options

    comfy.options.enable_args_parsing()
    import nodes

    from longclip_diffusers.comfyui import LongCLIPLoader

    rss_before, peak_before, written_before = _status_kib("VmRSS"), _status_kib("VmHWM"), _written()
    start = time.perf_counter()
    if variant == "core":
        (model,) = nodes.CLIPLoader().load_clip(ENCODER, type="stable_diffusion")
    else:
        (model,) = LongCLIPLoader().load(ENCODER, "clip_l")
    seconds = time.perf_counter() - start
    figures = {
        "seconds": seconds,
        "bytes_written": _written() - written_before,
        "peak_rss_mb": _status_kib("VmHWM") / 1024,
        "rss_growth_mb": (_status_kib("VmRSS") - rss_before) / 1024,
        "peak_growth_mb": (_status_kib("VmHWM") - peak_before) / 1024,
    }
    print(json.dumps(figures), file=sys.__stdout__, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR", "../shared/ComfyUI"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], str(Path(args.comfyui).resolve()), args.child[1])
        return
    with tempfile.TemporaryDirectory(prefix="longclip-bench-comfyui-") as base:
        encoders = Path(base) / "models" / "text_encoders"
        encoders.mkdir(parents=True)
        write_random_long_clip_l(encoders / ENCODER)
        size_mb = (encoders / ENCODER).stat().st_size / 1e6
        runs: dict[str, list[dict]] = {"core": [], "ours": []}
        for _ in range(args.repeats):
            for variant in runs:
                command = [sys.executable, __file__, "--comfyui", args.comfyui, "--child", variant, base]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                runs[variant].append(json.loads(output.strip().splitlines()[-1]))
                print(variant, runs[variant][-1], flush=True)
    best = {variant: min(results, key=lambda result: result["seconds"]) for variant, results in runs.items()}
    figures = {
        "file_mb": round(size_mb, 1),
        **{f"{variant}_{key}": value for variant, result in best.items() for key, value in result.items()},
        "time_ratio": best["ours"]["seconds"] / best["core"]["seconds"],
        "peak_rss_ratio": best["ours"]["peak_rss_mb"] / best["core"]["peak_rss_mb"],
        "rss_growth_ratio": best["ours"]["rss_growth_mb"] / max(best["core"]["rss_growth_mb"], 1e-9),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
