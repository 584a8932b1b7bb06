"""`train --preserve-conditioning W`: the term holds the conditioning where SD reads it, in every training mode."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.training import config_for, one_line_error, run_cli, train_args, write_dataset

from longclip_diffusers.drift import load_drift_encoder, measure_drift
from longclip_diffusers.drift_prompts import DRIFT_PROMPTS
from longclip_diffusers.training.model import build_model, encode_text_cut
from longclip_diffusers.training.preserve import ConditioningKeeper, block_index, default_preserve_layers
from longclip_diffusers.training.run_folder import export_final
from longclip_diffusers.training.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def rows_of(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_keeper_reads_the_layers_sd_reads_and_is_zero_at_the_start(tmp_path):
    from open_clip.model import CLIP
    from transformers import CLIPModel

    from longclip_diffusers.stretch import stretch_model

    model_cfg = {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    }
    torch.manual_seed(0)
    clip = stretch_model(CLIP(**model_cfg))
    assert default_preserve_layers(clip) == ["final", "-2"]
    assert [block_index(layer, 3) for layer in ("final", "-1", "-2", "-3")] == [2, 2, 1, 0]
    with pytest.raises(ValueError, match="--preserve-layers -4: give 'final' .* -1 to -3"):
        block_index("-4", 3)
    keeper = ConditioningKeeper(clip)
    long_text, short_text = torch.zeros(2, 248, dtype=torch.long), torch.zeros(2, 248, dtype=torch.long)
    long_text[:, :120], short_text[:, :30] = torch.randint(1, 49406, (2, 120)), torch.randint(1, 49406, (2, 30))
    long_text[:, 0] = short_text[:, 0] = 49406
    long_text[:, 119] = short_text[:, 29] = 49407

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        with keeper.capture(clip):
            encode_text_cut(clip, long_text), encode_text_cut(clip, short_text)  # as the training forward does
        return keeper.loss(long_text, short_text)

    term, drift = step()
    assert term.item() < 1e-10 and drift.item() < 1e-6  # the live states of the cut batches are the frozen ones
    # The frozen tower's states are the layers transformers (and so the SD pipelines) read: hidden_states[-2],
    # and last_hidden_state (the last layer through the final norm).
    export_final(clip, model_cfg, tmp_path / "hf")
    hf = CLIPModel.from_pretrained(tmp_path / "hf").text_model.eval()
    with torch.no_grad():
        expected = hf(long_text[:, :77], output_hidden_states=True)
    states = keeper.frozen(long_text[:, :77], {1, 2})
    torch.testing.assert_close(states[1], expected.hidden_states[-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(keeper.frozen.ln_final(states[2]), expected.last_hidden_state, atol=1e-5, rtol=0)
    with torch.no_grad():
        clip.transformer.resblocks[1].mlp.c_proj.weight.mul_(1.5)  # the live tower moves, the frozen one does not
    term, drift = step()
    assert term.item() > 0 and drift.item() > 0


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The tiny model trained from the same start for the same steps with W = 0, 0.1 and 1; its drift on the
    built-in prompts (SD 1.5 and SDXL readings) against the start."""
    root = tmp_path_factory.mktemp("runs")
    config = config_for(data, root / "start")
    torch.manual_seed(config.seed)  # as training seeds itself before building the model
    start, _, model_cfg = build_model(config)
    export_final(start, model_cfg, root / "start")
    reference = load_drift_encoder(root / "start")
    results = {}
    for weight in (0.0, 0.1, 1.0):
        output = root / f"w{weight}"
        train(config_for(data, output, preserve_conditioning=weight))
        drift = measure_drift(
            reference, load_drift_encoder(output / "final"), DRIFT_PROMPTS[:60], ("sd15", "sdxl"), progress=False
        )
        results[weight] = (output, {family: d.summary()["real_tokens_rel_l2"] for family, d in drift.items()})
    return results


def test_drift_falls_as_w_rises_and_retrieval_loss_still_falls(runs):
    for family in ("sd15", "sdxl"):
        drifts = [runs[weight][1][family] for weight in (0.0, 0.1, 1.0)]
        assert drifts[0] > drifts[1] > drifts[2] > 0, (family, drifts)
        assert drifts[2] < 0.6 * drifts[0], (family, drifts)
    for weight, (output, _) in runs.items():
        rows = rows_of(output)
        retrieval = [row["fine_loss"] + row["coarse_loss"] for row in rows]
        assert np.mean(retrieval[-3:]) < 0.6 * np.mean(retrieval[:3]), weight
        assert ("drift_rel_l2" in rows[-1]) == (weight > 0)  # logged every --log-every steps when W > 0
    rows = rows_of(runs[1.0][0])
    assert rows[0]["preserve_loss"] < 1e-10 and rows[0]["drift_rel_l2"] < 1e-6  # step 1 starts at the frozen tower
    assert all(row["drift_rel_l2"] > 0 for row in rows[1:])


def test_a_resumed_run_continues_exactly(runs, data, tmp_path):
    output, _ = runs[1.0]
    resumed = tmp_path / "resumed"
    shutil.copytree(output, resumed)
    shutil.rmtree(resumed / "checkpoints/step_12")  # as if killed after step 8
    train(config_for(data, resumed, preserve_conditioning=1.0, resume="auto"))
    assert rows_of(resumed) == rows_of(output)  # every step, the term included, bit for bit


def test_bf16_and_the_layers_option(data, tmp_path, capsys):
    output = tmp_path / "bf16"
    args = train_args(data, output, preserve_conditioning=1, mixed_precision="bf16", max_steps=3)
    # a process of its own: accelerate fixes the precision once per process
    result = subprocess.run(
        [sys.executable, "-m", "longclip_diffusers", *map(str, args)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(np.isfinite(row["preserve_loss"]) and np.isfinite(row["loss"]) for row in rows_of(output))
    output = tmp_path / "final-only"
    code, _, err = run_cli(
        capsys, train_args(data, output, preserve_conditioning=1, preserve_layers="final", max_steps=2)
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, train_args(data, tmp_path / "bad", preserve_conditioning=1, preserve_layers=-3))
    one_line_error(code, err, "--preserve-layers -3: give 'final'", "-1 to -2")
    code, _, err = run_cli(capsys, train_args(data, tmp_path / "no-w", preserve_layers="final"))
    one_line_error(code, err, "--preserve-layers chooses the layers of --preserve-conditioning W")


def test_two_processes_train_with_the_term(data, tmp_path):
    """A real 2-process gloo run (`torch.distributed.run`) with the term on."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = train_args(data, tmp_path / "two", batch_size=4, max_steps=3, pca_components=2, preserve_conditioning=1)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")  # gloo talks over the loopback interface
    result = subprocess.run(
        [*command, "-m", "longclip_diffusers", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = rows_of(tmp_path / "two")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert rows[0]["drift_rel_l2"] < 1e-6 < rows[2]["drift_rel_l2"] and all(np.isfinite(r["loss"]) for r in rows)


def test_on_cached_image_features_the_term_trains_as_with_the_live_frozen_image_tower(tmp_path):
    from helpers.training import save_pretrained
    from safetensors.torch import load_file

    from longclip_diffusers.cli import main

    data = write_dataset(tmp_path / "data", count=16)
    pretrained = str(save_pretrained(data / "pretrained.safetensors", seed=5))
    cache = tmp_path / "features"
    cache_args = [
        "cache-features", "--model", data / "tiny.json", "--pretrained", pretrained, "--train-data",
        data / "train.jsonl", "--output", cache, "--shard-size", 8, "--batch-size", 8, "--workers", 0,
    ]  # fmt: skip
    assert main([str(arg) for arg in cache_args]) == 0
    exact = dict(epochs=2, pca_components=4, eps=1e-3, report_to="none", preserve_conditioning=1.0)  # as test_features
    live, cached = tmp_path / "live", tmp_path / "cached"
    train(config_for(data, live, pretrained=pretrained, freeze=["vision"], **exact))
    train(config_for(data, cached, pretrained=pretrained, image_features=str(cache), **exact))
    live_rows, cached_rows = rows_of(live), rows_of(cached)
    assert len(live_rows) == len(cached_rows) == 4 and cached_rows[-1]["drift_rel_l2"] > 1e-3
    for live_row, cached_row in zip(live_rows, cached_rows, strict=True):
        for key in ("loss", "preserve_loss", "drift_rel_l2"):
            assert abs(cached_row[key] - live_row[key]) <= max(1e-5, 1e-6 * abs(live_row[key])), (key, live_row)
    last = "checkpoints/step_4/model.safetensors"
    live_weights, cached_weights = load_file(live / last), load_file(cached / last)
    for key, value in cached_weights.items():
        torch.testing.assert_close(value, live_weights[key], atol=1e-5, rtol=0, msg=key)
