"""The nodes inside the real ComfyUI engine (0.3.64 source in ../shared/ComfyUI, or COMFYUI_DIR).

ComfyUI's imports are process-wide (sys.argv, folder_paths, its node registry), so it runs in one subprocess for
this module (`comfy_engine.py`): the test process never imports it. Its model folders are a temporary BASE:
the tiny files `longclip tiny` writes for ComfyUI, plus real-shape random CLIP-L and T5-base files where ComfyUI
core's own text encoders (built at those sizes only) must read the same weights. Missing ComfyUI skips these
tests locally and fails them in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.comfy_fakes import LONG, SHORT
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel

from longclip_diffusers.comfy_export import NODE_PACKAGE, WORKFLOW_FAMILIES, example_workflow, export_comfyui
from longclip_diffusers.tiny_comfy import (
    SD15_CHECKPOINT,
    SDXL_CHECKPOINT,
    TAESD_VAE,
    TINY_CLIP_G,
    TINY_CLIP_L,
    TINY_T5,
    write_random_long_clip_l,
    write_random_wide_clip_g,
)

COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", Path(__file__).resolve().parents[3] / "shared" / "ComfyUI"))
ENGINE = Path(__file__).with_name("comfy_engine.py")
REPLY_TIMEOUT = 300  # seconds for one check; the whole module takes about two minutes on two cores
LONG_CLIP_L = "LongCLIP-L-random.safetensors"  # CLIP-L's real shape, 248 positions, random weights
T5_BASE = "t5-base-random.safetensors"  # T5-base's real shape (ComfyUI's t5base), random weights
T5_BASE_FP8 = "t5-base-random-fp8_e4m3fn.safetensors"  # the same weights stored in float8_e4m3fn
WIDE_CLIP_G = "clip-g-width-1280-random.safetensors"  # bigG's width, 2 layers: SDXL's 768 + 1280 context features
BAKED = "sd15-with-long-clip.safetensors"
PROMPT_150 = (
    "A highly detailed oil painting of an old stone lighthouse on a rugged cliff at dusk, waves crashing on the "
    "black rocks below, seagulls circling in a sky streaked with orange and violet, a warm light glowing in the "
    "lantern room, a narrow staircase winding down to a small pier where fishermen mend their nets, and far "
    "away a village of white houses with blue doors under the first stars of the evening, painted with thick "
    "brush strokes in the style of the old masters, warm and cold colours side by side"
)

if not COMFYUI_DIR.joinpath("comfyui_version.py").is_file():
    message = f"ComfyUI's source is not at {COMFYUI_DIR} (set COMFYUI_DIR)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def _t5_base(path: Path) -> None:
    """A random T5-base encoder (ComfyUI's t5_config_base.json) in Hugging Face's layout, fp16, and beside it the
    same weights in float8_e4m3fn (`T5_BASE_FP8`), as ComfyUI's fp8 text encoder files store them."""
    torch.manual_seed(1)
    config = T5Config(vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12,
                      feed_forward_proj="relu", tie_word_embeddings=False)  # fmt: skip
    with torch.device("meta"):
        model = T5EncoderModel(config)
    weights = {key: (torch.randn(value.shape) * 0.05).half() for key, value in model.state_dict().items()}
    for key in weights:
        if "layer_norm" in key:
            weights[key] = torch.ones_like(weights[key])
    weights.pop("encoder.embed_tokens.weight")
    save_file(weights, path)
    save_file({key: value.to(torch.float8_e4m3fn) for key, value in weights.items()}, path.with_name(T5_BASE_FP8))


def _bake(checkpoint: Path, encoder: Path, out: Path) -> None:
    """An SD 1.5 single file with `encoder` baked in as its CLIP (SD 1.5's key names, 248 position rows)."""
    tensors = load_file(checkpoint)
    for key, value in load_file(encoder).items():
        if key.startswith("text_model."):
            tensors[f"cond_stage_model.transformer.{key}"] = value
    save_file(tensors, out)


@pytest.fixture(scope="module")
def base(tiny_components: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ComfyUI's base folder: the exported node package and the tiny ComfyUI files (hard links), plus the
    real-shape text encoders."""
    base = tmp_path_factory.mktemp("comfyui-base")
    export_comfyui(base)
    for path in (tiny_components / "comfyui" / "models").rglob("*"):
        if path.is_file():
            target = base / "models" / path.relative_to(tiny_components / "comfyui" / "models")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    encoders = base / "models" / "text_encoders"
    write_random_long_clip_l(encoders / LONG_CLIP_L, torch.float16)  # both sides compute in fp32 from these values
    write_random_wide_clip_g(encoders / WIDE_CLIP_G, dtype=torch.float16)
    _t5_base(encoders / T5_BASE)
    _bake(
        base / "models" / "checkpoints" / SD15_CHECKPOINT,
        encoders / LONG_CLIP_L,
        base / "models" / "checkpoints" / BAKED,
    )
    return base


class Engine:
    def __init__(self, base: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        self.process = subprocess.Popen(
            [sys.executable, str(ENGINE), str(COMFYUI_DIR), str(base)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        self.hello = self._reply()

    def _reply(self) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], REPLY_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"ComfyUI's engine process gave no answer (exit code {self.process.poll()}).")
        return json.loads(line)

    def __call__(self, check: str, **args) -> dict:
        self.process.stdin.write(json.dumps({"check": check, "args": args}) + "\n")
        self.process.stdin.flush()
        result = self._reply()
        assert "exception" not in result, result["exception"]
        return result

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def engine(base: Path):
    engine = Engine(base)
    engine.package = engine("load_package")
    yield engine
    engine.close()


TINY_MODELS = {
    # validation checks that each name is listed in its model folder; the SD 1.5 and SDXL workflows run
    "sd15": SD15_CHECKPOINT,
    "sdxl": SDXL_CHECKPOINT,
    "sd3": SD15_CHECKPOINT,
    "flux": SD15_CHECKPOINT,
    "vae": TAESD_VAE,
    "clip_g": TINY_CLIP_G,
    "t5": TINY_T5,
}


def test_the_exported_package_loads_through_comfyuis_own_loader(engine):
    assert engine.hello["device"] == "cpu"
    result = engine.package
    assert result["loaded"] is True
    assert result["nodes"] == sorted(
        ["LongCLIPLoader", "LongCLIPTextEncode", "LongCLIPTextEncodeSDXL", "LongCLIPTextEncodeSD3",
         "LongCLIPTextEncodeFlux", "LongCLIPT5FromCLIP", "LongCLIPStretch", "LongCLIPCheckpointLoader"]
    )  # fmt: skip
    assert result["display"]["LongCLIPCheckpointLoader"] == "Load Checkpoint (Long-CLIP)"


@pytest.mark.parametrize("family", WORKFLOW_FAMILIES)
def test_every_example_workflow_passes_comfyuis_prompt_validation(engine, family):
    result = engine("validate", workflow=example_workflow(TINY_CLIP_L, family, TINY_MODELS))
    assert result["valid"], (result["error"], result["node_errors"])
    assert result["outputs"] == ["9"]  # SaveImage


def test_a_misnamed_model_fails_comfyuis_validation(engine):
    result = engine("validate", workflow=example_workflow("missing.safetensors", "sd15", TINY_MODELS))
    assert not result["valid"] and "2" in result["node_errors"]  # our loader's text_encoder input


def test_an_sd15_workflow_runs_end_to_end_in_comfyuis_executor(engine, base):
    """Our loader and encode nodes, ComfyUI's CheckpointLoaderSimple (a checkpoint its detection takes as SD 1.5),
    KSampler, VAEDecode and SaveImage: a PNG in ComfyUI's output folder."""
    workflow = example_workflow(LONG_CLIP_L, "sd15", TINY_MODELS)
    workflow["6"]["inputs"].update(width=64, height=64)
    workflow["7"]["inputs"].update(steps=2)
    workflow["4"]["inputs"]["text"] = LONG  # past 248 tokens: two windows, lined up with the negative by ComfyUI
    result = engine("run", workflow=workflow)
    assert result["success"], result["errors"]
    assert result["images"] == ["output/longclip_00001_.png"]
    from PIL import Image

    assert Image.open(base / result["images"][0]).size == (64, 64)


def test_an_sdxl_workflow_runs_end_to_end_in_comfyuis_executor(engine, base):
    """The SDXL example workflow on `longclip tiny`'s SDXL-family checkpoint (which ComfyUI detects as KOALA-700M:
    an SDXL model, SDXL's 2048 context features and 2816-wide pooled vector): our loader for clip_l (CLIP-L's real
    width) and for clip_g, our SDXL encode node on a prompt past 77 tokens (positive and negative),
    CheckpointLoaderSimple, KSampler, VAEDecode and SaveImage: a PNG.

    The example takes clip_g from the checkpoint (LongCLIPStretch of Load Checkpoint's CLIP); ComfyUI core builds
    that CLIP at bigG's full size (32 layers, 694 M parameters, 2.8 GB in fp32) whatever the file holds, so here
    clip_g is a file of bigG's width with 2 layers, read by our loader."""
    workflow = example_workflow(LONG_CLIP_L, "sdxl", TINY_MODELS)
    workflow["3"] = {"class_type": "LongCLIPLoader", "inputs": {"text_encoder": WIDE_CLIP_G, "clip_type": "clip_g"}}
    workflow["6"]["inputs"].update(width=64, height=64)
    workflow["7"]["inputs"].update(steps=2)
    workflow["4"]["inputs"]["text"] = PROMPT_150
    workflow["9"]["inputs"]["filename_prefix"] = "longclip-sdxl"
    result = engine("run", workflow=workflow, sampler_inputs=True)
    assert result["success"], result["errors"]
    assert result["model_config"] == "KOALA_700M" and result["model"] == "SDXL"
    assert result["context"] == [1, 248, 2048]  # 248 rows: Long-CLIP-L and bigG (in 77-token chunks) side by side
    assert result["adm"] == [1, 2816]  # what the UNet's label embedding reads: pooled 1280 + 6 size embeddings
    assert "output/longclip-sdxl_00001_.png" in result["images"]
    from PIL import Image

    assert Image.open(base / "output/longclip-sdxl_00001_.png").size == (64, 64)


@pytest.mark.parametrize("prompt", [SHORT, PROMPT_150], ids=["short", "150-tokens"])
def test_sd15_conditioning_equals_comfyui_cores(engine, prompt):
    """Core's CLIPLoader + CLIPTextEncode and Load Long-CLIP + Long-CLIP Text Encode (SD 1.5), same file, fp32."""
    result = engine("parity_sd", encoder=LONG_CLIP_L, prompt=prompt)
    assert result["shape"] == result["core_shape"] == [1, 248, 768]
    assert result["cond"] < 1e-5


CORE_WEIGHTED = "a lighthouse at dusk, a (red:1.3) boat near ((rocks)), (seagulls:0.8), \\(detailed\\)"


def test_core_weighting_as_an_option_gives_cores_conditioning(engine):
    """weight_style="comfyui": core's formula, (z - z_empty) * w + z_empty; the default (A1111's, the pipelines')
    differs from core by design on the same weighted prompt."""
    core_style = engine("parity_sd", encoder=LONG_CLIP_L, prompt=CORE_WEIGHTED, weight_style="comfyui")
    assert core_style["shape"] == core_style["core_shape"] == [1, 248, 768]
    assert core_style["cond"] < 1e-5
    assert engine("parity_sd", encoder=LONG_CLIP_L, prompt=CORE_WEIGHTED)["cond"] > 1e-3


def test_past_248_tokens_the_windows_match_cores_with_its_weighting(engine):
    """Past 248 tokens core also encodes 248-token windows, splitting between words as the nodes do here: with
    core's weighting the two windows equal core's; with the default weighting (the prompt has weights) they do
    not."""
    result = engine("parity_sd", encoder=LONG_CLIP_L, prompt=LONG, weight_style="comfyui")
    assert result["shape"] == result["core_shape"] == [1, 2 * 248, 768]
    assert result["cond"] < 1e-5
    assert engine("parity_sd", encoder=LONG_CLIP_L, prompt=LONG)["cond"] > 1e-3


def test_sdxl_clip_l_part_equals_comfyui_cores(engine):
    result = engine("parity_sdxl_clip_l", encoder=LONG_CLIP_L, clip_g=TINY_CLIP_G, prompt=PROMPT_150)
    assert result["core_shape"] == [1, 248, 768]
    assert result["cond"] < 1e-5


WEIGHTED_150 = f"{CORE_WEIGHTED}, {PROMPT_150}"  # weighted, past 77 tokens (about 190), one window


@pytest.mark.parametrize("prompt", [WEIGHTED_150, LONG], ids=["weighted-past-77", "past-248"])
def test_sdxl_core_weighting_as_an_option_gives_cores_clip_l_part(engine, prompt):
    """The SDXL node's weight_style="comfyui": its clip_l part is core's SDXL clip_l, weights included; the default
    (A1111's) differs from it by design."""
    args = dict(encoder=LONG_CLIP_L, clip_g=TINY_CLIP_G, prompt=prompt)
    result = engine("parity_sdxl_clip_l", **args, weight_style="comfyui")
    assert result["core_shape"] == [1, (1 if prompt == WEIGHTED_150 else 2) * 248, 768]
    assert result["cond"] < 1e-5
    assert engine("parity_sdxl_clip_l", **args)["cond"] > 1e-3


def test_flux_core_weighting_as_an_option_gives_cores_t5_and_pooled(engine):
    """The Flux node's weight_style="comfyui", on the T5 of a core CLIP read in place (T5-base in fp32, read as Flux's
    T5: 256 tokens, no attention mask): T5's states equal core's encode of the same CLIP, weights included; the
    pooled vector equals core's Flux clip_l (weights never touch it). The default (A1111's) differs by design."""
    result = engine("flux_parity", encoder=LONG_CLIP_L, t5_file=T5_BASE, prompt=WEIGHTED_150)
    assert result["shared"] is True and result["matrix_dtypes"] == ["torch.float32"]
    assert result["shape"] == result["core_shape"] == [1, 256, 768]
    assert result["t5"] < 1e-5
    assert result["default_t5"] > 1e-3
    assert result["pooled"] < 1e-5


def test_flux_runs_an_fp8_t5_in_place_as_core_does(engine):
    """A T5 file stored in float8_e4m3fn, loaded by core's CLIPLoader as `--fp8_e4m3fn-text-enc` loads it: ComfyUI
    keeps its weights in fp8 on the CPU and casts each layer to float32 as it runs (comfy.ops.manual_cast). The node
    runs that module in place (its parameters are the CLIP's fp8 tensors, 1 byte a weight, no second copy) and
    gives core's T5 conditioning: both read the same fp8 weights through the same cast, so only the batch (core
    encodes the prompt and the empty prompt together) can move the last bits; < 1e-5 as for fp32."""
    result = engine("flux_parity", encoder=LONG_CLIP_L, t5_file=T5_BASE_FP8, prompt=WEIGHTED_150, fp8=True)
    assert result["shared"] is True and result["matrix_dtypes"] == ["torch.float8_e4m3fn"]
    assert result["bytes"] < 120_000_000  # T5-base's 110 M weights in fp8 (fp32: 440 MB)
    assert result["shape"] == result["core_shape"] == [1, 256, 768]
    assert result["t5"] < 1e-5
    assert result["pooled"] < 1e-5


def test_flux_reads_t5_in_place_from_a_comfyui_clip(engine):
    """T5-base (the largest ComfyUI T5 a CPU test holds): the node runs the CLIP's own T5 module, whose parameters
    are the CLIP's tensors (no copy), and gives what a transformers T5EncoderModel of the same file gives; the
    pooled vector is core's Flux clip_l pooled vector (unprojected, first window)."""
    result = engine("t5_in_place", encoder=LONG_CLIP_L, t5_file=T5_BASE, prompt=PROMPT_150)
    assert result["shared"] is True and result["parameters"] > 100_000_000
    assert result["t5"] < 1e-4  # relative to the largest state: fp32 rounding of two T5 implementations, 12 layers
    assert result["pooled"] < 1e-5
    assert result["guidance"] == 3.5


def test_a_checkpoint_with_a_long_clip_baked_in_loads_with_our_checkpoint_loader(engine):
    result = engine("long_clip_checkpoint", checkpoint=BAKED, encoder=LONG_CLIP_L, prompt=PROMPT_150)
    assert "torch.Size([248, 768])" in result["core_error"] and "torch.Size([77, 768])" in result["core_error"]
    assert result["types"] == ["ModelPatcher", "CLIP", "VAE"]
    assert result["cond"] < 1e-5


def test_nothing_of_comfyui_leaks_into_the_test_process():
    assert "folder_paths" not in sys.modules and NODE_PACKAGE not in sys.modules
