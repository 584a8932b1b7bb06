"""Benchmark: converting a LongCLIP-L-sized checkpoint, ours against the naive load-everything script.

What is measured
- Source: a synthetic published-layout LongCLIP-L `.pt` (OpenAI-layout ViT-L/14 state dict, random fp32
  weights, real key names and shapes, `positional_embedding` and `positional_embedding_res` both [248, 768]),
  about 1.71 GB, built once and cached in the work folder.
- Ours: `python -m longclip_diffusers convert SRC OUT --to diffusers|clip|comfyui`.
- Naive (same output as `--to clip`): `torch.load` (no mmap), merge the position table, build a
  `transformers.CLIPModel` from its config, `load_state_dict`, `save_pretrained` - the pattern of transformers'
  `convert_clip_original_pytorch_to_hf.py`. Key mapping reuses `openai_to_canonical`, so only the memory
  strategy differs.

How
- Every conversion runs in a fresh subprocess; wall time is measured around it, peak RSS is the child's own
  `ru_maxrss` from `os.wait4` (kernel-recorded, includes file-backed mmap pages). Linux starts a child's
  ru_maxrss at its spawner's peak, so this script never imports torch itself (the checkpoint is built in a
  child too) and checks its own peak stays below every child's. While a child runs, /proc/PID/status is
  polled every 20 ms for the largest anonymous and file-backed RSS seen (approximate), to tell copied memory
  from memory-mapped source pages.
- The source is read once beforehand so every run sees a warm page cache. Each conversion runs `--repeats`
  times (default 2); the best time is reported, with the peak RSS of that same run.
- Afterwards, ours `--to clip` and the naive output are checked to hold identical tensors.

The last stdout line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "longclip-convert-bench"
CHECKPOINT_NAME = "longclip-L-synthetic.pt"


def build_checkpoint(path: Path) -> None:
    """A published-layout LongCLIP-L state dict with random weights (shapes from open_clip's ViT-L-14)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14")
    sd = {key: value.detach().clone() for key, value in model.state_dict().items() if key != "attn_mask"}
    del model
    width = sd["ln_final.weight"].shape[0]
    sd["positional_embedding"] = torch.randn(248, width) * 0.01
    sd["positional_embedding_res"] = torch.randn(248, width) * 0.01
    torch.save(sd, path)


def naive_convert(source: str, out: str) -> None:
    """What typical conversion scripts do: everything in RAM, a randomly initialised model, save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils.logging import disable_progress_bar

    from longclip_diffusers.layouts import openai_to_canonical

    disable_progress_bar()

    sd = torch.load(source, map_location="cpu", weights_only=True)
    text = dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=248,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))
    model.load_state_dict(openai_to_canonical(sd))
    model.save_pretrained(out)


@dataclass
class Run:
    seconds: float
    peak_rss_gb: float  # ru_maxrss of the child
    peak_anon_gb: float  # largest RssAnon polled
    peak_file_gb: float  # largest RssFile polled


def _status_kib(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("RssAnon", "RssFile")}


def measure(command: list[str]) -> Run:
    """Run `command` in a fresh process; its wall time and peak memory."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    anon = file = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        rss = _status_kib(process.pid)
        anon, file = max(anon, rss.get("RssAnon", 0)), max(file, rss.get("RssFile", 0))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    return Run(seconds, usage.ru_maxrss * 1024 / GB, anon * 1024 / GB, file * 1024 / GB)


def identical_tensors(ours: Path, naive: Path) -> tuple[int, int]:
    """(keys in both with torch.equal tensors, keys in both), over all safetensors files of two folders."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        with_keys = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, framework="pt") as handle:
                with_keys.update(dict.fromkeys(handle.keys(), file))
        return with_keys

    left, right = index(ours), index(naive)
    common = sorted(left.keys() & right.keys())
    equal = 0
    for key in common:
        with safe_open(left[key], framework="pt") as a, safe_open(right[key], framework="pt") as b:
            equal += torch.equal(a.get_tensor(key), b.get_tensor(key))
    return equal, len(common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
    parser.add_argument("--keep-files", action="store_true", help="keep the converted outputs")
    parser.add_argument("--repeats", type=int, default=2, help="runs per conversion; best time reported")
    parser.add_argument("--naive-child", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--build-child", type=Path, metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child:
        return naive_convert(*args.naive_child)
    if args.build_child:
        return build_checkpoint(args.build_child)

    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / CHECKPOINT_NAME
    if not source.is_file():
        print(f"building {source} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--build-child", str(source)], check=True)
    checkpoint_gb = source.stat().st_size / GB
    print(f"checkpoint: {source} ({checkpoint_gb:.2f} GB)", flush=True)
    with open(source, "rb") as handle:  # warm the page cache so every run reads it alike
        while handle.read(1 << 24):
            pass

    outputs = args.workdir / "out"
    shutil.rmtree(outputs, ignore_errors=True)
    ours = [sys.executable, "-m", "longclip_diffusers", "convert", str(source)]
    commands: dict[str, tuple[list[str], Path]] = {
        "import_only": ([sys.executable, "-c", "import longclip_diffusers.cli"], outputs / "none"),
        "naive_clip": ([sys.executable, __file__, "--naive-child", str(source)], outputs / "naive_clip"),
        "ours_diffusers": ([*ours, "--to", "diffusers"], outputs / "ours_diffusers"),
        "ours_clip": ([*ours, "--to", "clip"], outputs / "ours_clip"),
        "ours_comfyui": ([*ours, "--to", "comfyui"], outputs / "ours_comfyui.safetensors"),
    }
    best: dict[str, Run] = {}
    for repeat in range(args.repeats):
        for name, (command, out) in commands.items():
            if out.is_dir():
                shutil.rmtree(out)
            out.unlink(missing_ok=True)
            run = measure(command if name == "import_only" else [*command, str(out)])
            print(f"  {name} run {repeat + 1}: {run.seconds:.1f} s, peak RSS {run.peak_rss_gb:.2f} GB", flush=True)
            if name not in best or run.seconds < best[name].seconds:
                best[name] = run

    # A child's ru_maxrss starts at its spawner's peak (vfork + exec), so it is exact only while ours stays below.
    parent_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    assert parent_gb < min(run.peak_rss_gb for run in best.values()), f"parent peak RSS {parent_gb:.2f} GB too high"
    equal, common = identical_tensors(commands["ours_clip"][1], commands["naive_clip"][1])
    if not args.keep_files:
        shutil.rmtree(outputs, ignore_errors=True)

    print(f"\n{'conversion':<16}{'best s':>8}{'peak RSS GB':>13}{'~anon GB':>10}{'~file GB':>10}")
    for name, run in best.items():
        memory = f"{run.peak_rss_gb:>13.2f}{run.peak_anon_gb:>10.2f}{run.peak_file_gb:>10.2f}"
        print(f"{name:<16}{run.seconds:>8.1f}{memory}")
    print(f"ours --to clip vs naive: {equal}/{common} shared tensors identical\n")

    figures: dict[str, float | int | str] = {"checkpoint_gb": round(checkpoint_gb, 3)}
    for name, run in best.items():
        figures[f"{name}_s"] = round(run.seconds, 2)
        figures[f"{name}_peak_rss_gb"] = round(run.peak_rss_gb, 3)
        figures[f"{name}_peak_anon_gb"] = round(run.peak_anon_gb, 3)
        figures[f"{name}_peak_file_gb"] = round(run.peak_file_gb, 3)
    figures["rss_ratio_ours_vs_naive_clip"] = round(best["ours_clip"].peak_rss_gb / best["naive_clip"].peak_rss_gb, 3)
    figures["time_ratio_ours_vs_naive_clip"] = round(best["ours_clip"].seconds / best["naive_clip"].seconds, 3)
    figures["identical_tensors"], figures["common_tensors"] = equal, common
    figures["rss_method"] = "os.wait4 ru_maxrss per child; anon/file from /proc/PID/status polled every 20 ms"
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
