"""Image features cached once (`longclip cache-features`) and text-only training on them (`--image-features`).

Exactness against the live, frozen image tower, and the mistakes a user can make with a cache. Real runs on the
CPU: tiny open_clip models, synthetic images, real accelerate, real safetensors files, real processes killed.
"""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import open_clip
import pytest
import torch
from helpers.training import (
    TINY_CONFIG,
    command_line,
    config_for,
    deadline,
    losses_of,
    on_a_nearly_full_disk,
    one_line_error,
    run_cli,
    save_pretrained,
    snapshot,
    train_args,
    write_dataset,
)
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from longclip_diffusers.cli import main
from longclip_diffusers.training import cache_features as cache_features_module
from longclip_diffusers.training import feature_cache
from longclip_diffusers.training import model as model_module
from longclip_diffusers.training.feature_cache import FeatureCache
from longclip_diffusers.training.images import UnusableSample
from longclip_diffusers.training.model import TextCLIP, build_model
from longclip_diffusers.training.train import train

# AdamW turns the float noise in the gradient of a parameter the loss does not depend on (the attention key
# biases: softmax ignores a shift shared by all keys) into full steps of size lr with eps 1e-8, so two runs whose
# image features differ in the last bit drift apart there (by 9e-5 after 8 steps at lr 1e-3). A larger eps keeps
# those steps at the size of their gradients; every other parameter trains as with the recipe's eps.
EXACT = dict(epochs=2, pca_components=4, eps=1e-3, report_to="none")
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def cache_args(folder: Path, output: Path, **flags) -> list[str]:
    values = {
        "model": folder / "tiny.json", "pretrained": folder / "pretrained.safetensors",
        "train-data": folder / "train.jsonl", "output": output, "shard-size": 8, "batch-size": 8, "workers": 0,
    }  # fmt: skip
    return command_line("cache-features", values, flags)


def cached_flags(folder: Path, cache: Path) -> list[str]:
    """The `train` flags of `cached_run(folder, ..., cache, **EXACT)` beyond `train_args`."""
    return [
        "--pretrained", str(folder / "pretrained.safetensors"), "--image-features", str(cache), "--epochs", "2",
        "--pca-components", "4", "--eps", "1e-3", "--report-to", "none",
    ]  # fmt: skip


def assert_same_losses(cached: dict[int, float], live: dict[int, float]) -> None:
    """Each step's loss to 1e-5, or to 2e-6 of it: float32 rounding, which the cached and the live image features
    (computed in other batches) differ by in their last bits, grows over the steps (torch 2.14 on 2 CPU threads:
    1.05e-5 at a loss of 13, 1.19e-5 at 6.6 in a 2-process run)."""
    for step, loss in live.items():
        assert abs(cached[step] - loss) <= max(1e-5, 2e-6 * abs(loss)), (step, cached[step], loss)


def cached_run(folder: Path, output: Path, cache: Path, **overrides):
    return config_for(
        folder, output, pretrained=str(folder / "pretrained.safetensors"), image_features=str(cache), **overrides
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 rows, one image unreadable and one missing; a pretrained tiny checkpoint beside them."""
    folder = write_dataset(tmp_path_factory.mktemp("data"), count=32, corrupt=(3,), missing=(12,))
    save_pretrained(folder / "pretrained.safetensors", seed=5)
    return folder


@pytest.fixture(scope="module")
def cache(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("cache") / "features"
    assert main(cache_args(data, output)) == 0
    return output


@pytest.fixture
def cache_copy(cache, tmp_path):
    return Path(shutil.copytree(cache, tmp_path / "features"))


def shards_of(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {path.name: load_file(path) for path in sorted(cache.glob("features-*.safetensors"))}


# ----------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------


def test_the_cache_holds_the_image_towers_own_normalised_features_and_lists_unreadable_images(data, cache, capsys):
    open_clip.add_model_config(data / "tiny.json")
    model, _, preprocess = open_clip.create_model_and_transforms("tiny", pretrained=None)
    model.load_state_dict(load_file(data / "pretrained.safetensors"))
    opened = FeatureCache(cache)
    for row in (0, 7, 8, 31):
        pixels = preprocess(Image.open(data / f"img{row}.png")).unsqueeze(0)
        with torch.no_grad():
            expected = model.encode_image(pixels, normalize=True)[0]  # open_clip's own forward and preprocessing
        torch.testing.assert_close(opened.features(row), expected, atol=1e-6, rtol=0)
    stored = json.loads((cache / "cache.json").read_text())
    assert (stored["complete"], stored["records"], stored["features"], stored["skipped"]) == (True, 32, 30, 2)
    assert sorted(stored["shards"]) == [f"features-{n:05d}.safetensors" for n in range(4)]
    assert (cache / "skipped_images.txt").read_text().splitlines() == [
        f"{data / 'img12.png'}: missing",
        f"{data / 'img3.png'}: unreadable",
    ]
    with pytest.raises(UnusableSample, match="unreadable"):  # skipped as training skips an unreadable image
        opened.features(3)


def test_no_image_tower_is_built_or_kept_for_a_text_only_run(data, cache, monkeypatch):
    read_towers = []
    check = model_module.check_image_tower

    def watched_check(config, stored, image_tower):
        read_towers.append([weakref.ref(tensor) for tensor in image_tower.values()])
        check(config, stored, image_tower)

    monkeypatch.setattr(model_module, "check_image_tower", watched_check)
    model, _, _ = build_model(cached_run(data, Path("unused"), cache))
    gc.collect()
    assert isinstance(model, TextCLIP)
    assert read_towers and read_towers[0] and all(ref() is None for ref in read_towers[0])  # read, checked, freed
    full, _, _ = build_model(config_for(data, Path("unused"), pretrained=str(data / "pretrained.safetensors")))
    text_only = {name: p.shape for name, p in full.named_parameters() if not name.startswith("visual.")}
    assert {name: p.shape for name, p in model.named_parameters()} == text_only
    for name, parameter in model.named_parameters():  # the same starting weights as the full model's text tower
        assert torch.equal(parameter, full.get_parameter(name)), name


def test_an_open_clip_pretrained_tag_gives_the_same_image_tower_to_both_loaders(data, tmp_path, monkeypatch, capsys):
    """A tag's weights reach the cache through open_clip's loader and a text-only run through ours; both must see
    the same image tower. The tag is an entry of open_clip's registry naming a local file (what the Hub download
    would give: the Hub is what this mocks)."""
    import open_clip.pretrained

    open_clip.add_model_config(data / "tiny.json")
    tag = open_clip.pretrained._pcfg(file=str(data / "pretrained.safetensors"))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny", {"local": tag})
    assert main(cache_args(data, tmp_path / "features", model="tiny", pretrained="local")) == 0
    assert json.loads((tmp_path / "features/cache.json").read_text())["pretrained"] == "local"
    train(
        config_for(
            data, tmp_path / "run", model="tiny", pretrained="local", image_features=str(tmp_path / "features"), **EXACT
        )
    )
    assert sorted(losses_of(tmp_path / "run")) == list(range(1, 9))
    by_path = [*train_args(data, tmp_path / "by_path"), *cached_flags(data, tmp_path / "features")]
    code, _, err = run_cli(capsys, by_path)  # the same config and weights, named by their files: the same cache
    assert code == 0, err


# ----------------------------------------------------------------------------------------------------------
# Exactness: cached features train the text tower as the live, frozen image tower does
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [{}, {"pca_scope": "global", "short_captions": "debias", "grad_accum": 2, "grad_checkpointing": True}],
    ids=["recipe", "global-pca-debias-accumulation-checkpointing"],
)
def test_training_on_cached_features_matches_the_live_frozen_image_tower(data, cache, tmp_path, flags):
    live, cached = tmp_path / "live", tmp_path / "cached"
    pretrained = str(data / "pretrained.safetensors")
    train(config_for(data, live, pretrained=pretrained, freeze=["vision"], **EXACT, **flags))
    train(cached_run(data, cached, cache, **EXACT, **flags))

    live_losses, cached_losses = losses_of(live), losses_of(cached)
    assert sorted(cached_losses) == sorted(live_losses) and len(live_losses) >= 4
    assert_same_losses(cached_losses, live_losses)
    last = f"checkpoints/step_{max(live_losses)}/model.safetensors"
    live_weights, cached_weights = load_file(live / last), load_file(cached / last)
    assert not any(key.startswith("clip.visual.") for key in cached_weights)
    assert set(cached_weights) == {key for key in live_weights if not key.startswith("clip.visual.")}
    for key, value in cached_weights.items():
        torch.testing.assert_close(value, live_weights[key], atol=1e-5, rtol=0, msg=key)
    initial = load_file(data / "pretrained.safetensors")
    moved = (cached_weights["clip.ln_final.weight"] - initial["ln_final.weight"]).abs().max()
    assert moved > 1e-3  # the weights compared have trained, far beyond the tolerance
    assert (cached / "skipped_images.txt").read_text() == (live / "skipped_images.txt").read_text() != ""


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process, its mixed precision included: runs in another precision need a new
    one (a private accelerate function: what accelerate's own tests use)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_mixed_precision_bf16_on_a_cache_made_in_bf16_matches_the_live_tower(data, tmp_path, fresh_accelerate_state):
    bf16_cache = tmp_path / "features"
    assert main(cache_args(data, bf16_cache, mixed_precision="bf16")) == 0
    live, cached = tmp_path / "live", tmp_path / "cached"
    flags = dict(EXACT, mixed_precision="bf16", epochs=1)
    train(config_for(data, live, pretrained=str(data / "pretrained.safetensors"), freeze=["vision"], **flags))
    train(cached_run(data, cached, bf16_cache, **flags))
    live_losses, cached_losses = losses_of(live), losses_of(cached)
    assert sorted(cached_losses) == sorted(live_losses)
    assert_same_losses(cached_losses, live_losses)


def test_a_text_only_run_reads_its_cache_description_once(data, cache, tmp_path, monkeypatch):
    reads = []
    read = feature_cache.read_cache_file

    def counted(folder):
        reads.append(folder)
        return read(folder)

    monkeypatch.setattr(feature_cache, "read_cache_file", counted)
    train(cached_run(data, tmp_path / "run", cache, **dict(EXACT, epochs=1)))
    assert reads == [cache]
    assert sorted(losses_of(tmp_path / "run")) == [1, 2, 3, 4]


def test_a_text_only_run_resumes_exactly(data, cache, tmp_path, capsys):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(cached_run(data, full, cache, **EXACT))
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints/step_8")
    shutil.rmtree(resumed / "final")
    code, out, err = run_cli(capsys, [*train_args(data, resumed, resume="auto"), *cached_flags(data, cache)])
    assert code == 0, err
    assert f"trained: {resumed / 'final'} (text encoder + tokenizer)" in out
    assert losses_of(resumed) == losses_of(full)  # steps 5..8 again from step 4, bit for bit


def test_two_processes_cache_and_train_as_the_live_tower_does(data, cache, tmp_path):
    """Real 2-process gloo runs (`torch.distributed.run`): each process caches shards of its own, and a 2-process
    text-only run gives the 2-process live run's losses."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")  # gloo talks over the loopback interface

    def launch(args: list[str]) -> None:
        result = subprocess.run(
            [*TWO_PROCESSES, "-m", "longclip_diffusers", *map(str, args)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    launch(cache_args(data, tmp_path / "features"))
    assert json.loads((tmp_path / "features/cache.json").read_text())["complete"]
    for name, tensors in shards_of(cache).items():  # the same rows, the same batches: the same features
        shard = load_file(tmp_path / "features" / name)
        assert torch.equal(shard["indices"], tensors["indices"])
        torch.testing.assert_close(shard["features"], tensors["features"], atol=1e-6, rtol=0)

    flags = ["--batch-size", "4", "--pca-components", "2"]  # 4 per process: the global batch of 8
    cached_args = [*train_args(data, tmp_path / "cached"), *cached_flags(data, tmp_path / "features"), *flags]
    live_args = [*cached_args[: cached_args.index("--image-features")], "--freeze", "vision"]
    live_args[live_args.index(str(tmp_path / "cached"))] = str(tmp_path / "live")
    launch([*live_args, *cached_args[cached_args.index("--image-features") + 2 :]])
    launch(cached_args)
    live_losses, cached_losses = losses_of(tmp_path / "live"), losses_of(tmp_path / "cached")
    assert sorted(cached_losses) == sorted(live_losses) == list(range(1, 9))
    assert_same_losses(cached_losses, live_losses)


# ----------------------------------------------------------------------------------------------------------
# Mistakes: each gets one line, and nothing of the user's is lost
# ----------------------------------------------------------------------------------------------------------


def start_cache_run_blocked_at_row_13(data: Path, tmp_path: Path) -> tuple[Path, Path, subprocess.Popen]:
    """A `longclip cache-features` process on a copy of `data` whose image of row 13 is a named pipe: reading it
    blocks, after the shard of rows 0..7 is written (waited for here, 120 s at most). Returns the data folder, the
    cache folder and the process."""
    folder = Path(shutil.copytree(data, tmp_path / "data"))
    (folder / "img13.png").unlink()
    os.mkfifo(folder / "img13.png")
    output = tmp_path / "features"
    command = [sys.executable, "-m", "longclip_diffusers", *map(str, cache_args(folder, output))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline_at = time.time() + 120
    while not (output / "features-00000.safetensors").exists() and time.time() < deadline_at:
        time.sleep(0.05)
    return folder, output, process


def test_a_cache_killed_halfway_resumes_with_its_finished_shards(data, cache, tmp_path, capsys):
    """The image of row 13 is a named pipe: reading it blocks (after the shard of rows 0..7 is written) until the
    process is killed (SIGKILL). The same command, once the image is back, computes only the rest."""
    folder, output, process = start_cache_run_blocked_at_row_13(data, tmp_path)
    time.sleep(0.5)  # the next batch, rows 8..15, waits on the pipe
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = snapshot(output)
    assert sorted(name for name in kept if name.startswith("features-")) == ["features-00000.safetensors"]
    assert json.loads((output / "cache.json").read_text())["complete"] is False

    code, _, err = run_cli(capsys, [*train_args(folder, tmp_path / "run"), *cached_flags(folder, output)])
    one_line_error(code, err, "incomplete (1 of 4 shards)", "the same `longclip cache-features` command again")

    (folder / "img13.png").unlink()
    shutil.copy(data / "img13.png", folder / "img13.png")
    staging = output / ".features-00001.safetensors.k1ll3d.tmp"  # what a kill during a write leaves
    staging.mkdir()
    (staging / "features-00001.safetensors").write_bytes(b"half a shard")
    code, out, err = run_cli(capsys, cache_args(folder, output))
    assert code == 0, err
    assert not staging.exists()
    assert snapshot(output)["features-00000.safetensors"] == kept["features-00000.safetensors"]  # kept, not redone
    finished = {name: shard["features"] for name, shard in shards_of(output).items()}
    uninterrupted = {name: shard["features"] for name, shard in shards_of(cache).items()}
    assert finished.keys() == uninterrupted.keys()
    for name, features in finished.items():
        torch.testing.assert_close(features, uninterrupted[name], atol=1e-6, rtol=0)


def test_a_second_cache_run_into_a_folder_being_written_is_refused_before_it_writes(data, tmp_path, capsys):
    """A first run waits on the image of row 13, a named pipe, after writing shard 0. A second one with another
    --dtype and --overwrite (which would set the first run's files aside while it goes on writing fp32 shards
    among its own fp16 ones) is refused, and changes nothing. Killed, the first run is finished by its command."""
    folder, output, first = start_cache_run_blocked_at_row_13(data, tmp_path)
    try:
        before = snapshot(output)
        for flags in ({"dtype": "fp16", "overwrite": True}, {"dtype": "fp16"}, {}):
            code, _, err = run_cli(capsys, cache_args(folder, output, **flags))
            one_line_error(code, err, "another `longclip cache-features` is writing it", "wait until it ends")
        assert snapshot(output) == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (folder / "img13.png").unlink()
    shutil.copy(data / "img13.png", folder / "img13.png")
    assert main(cache_args(folder, output)) == 0
    assert all(shard["features"].dtype == torch.float32 for shard in shards_of(output).values())
    assert not list(tmp_path.glob(".*.lock"))


def test_a_folder_holding_another_cache_is_refused_and_replaced_only_with_overwrite(data, cache_copy, capsys):
    before = snapshot(cache_copy)
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, dtype="fp16"))
    one_line_error(code, err, "holds another image-feature cache", "differs in --dtype", "--overwrite")
    assert snapshot(cache_copy) == before
    (cache_copy / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, dtype="fp16", overwrite=True))
    assert code == 0, err
    assert json.loads((cache_copy / "cache.json").read_text())["dtype"] == "fp16"
    assert all(shard["features"].dtype == torch.float16 for shard in shards_of(cache_copy).values())
    assert (cache_copy / "notes.txt").read_text() == "mine"


def test_an_overwrite_that_fails_keeps_the_earlier_cache(data, cache_copy, capsys, monkeypatch):
    before = snapshot(cache_copy)
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, pretrained=data / "typo.safetensors", overwrite=True))
    assert code == 1 and "typo.safetensors" in err, err
    assert snapshot(cache_copy) == before

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_features_module, "_finish", disk_full)  # every new shard written, then a failure
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, dtype="fp16", overwrite=True))
    assert code == 1 and "No space left" in err, err
    assert snapshot(cache_copy) == before
    assert not [p for p in cache_copy.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda stored: stored.pop("shard_size"), "lacks 'shard_size'"),
        (lambda stored: stored.pop("records"), "lacks 'records'"),
        (lambda stored: stored.update(records="32"), "'records' holds \"32\", not a whole number"),
        (lambda stored: stored.update(shard_size=0), "'shard_size' is 0, not a count"),
        (lambda stored: stored.pop("shards"), "lacks 'shards'"),
    ],
    ids=["no-shard-size", "no-records", "records-as-text", "shard-size-0", "no-shards"],
)
def test_a_hand_edited_cache_description_is_a_one_line_error(data, cache_copy, tmp_path, capsys, edit, problem):
    description = cache_copy / "cache.json"
    stored = json.loads(description.read_text())
    edit(stored)
    description.write_text(json.dumps(stored))
    code, _, err = run_cli(capsys, [*train_args(data, tmp_path / "run"), *cached_flags(data, cache_copy)])
    one_line_error(code, err, f"{description}: {problem}", "--overwrite")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, cache_args(data, cache_copy))
    one_line_error(code, err, f"{description}: {problem}", "--overwrite")
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, overwrite=True))  # what the message advises
    assert code == 0, err
    assert FeatureCache(cache_copy).identity["shard_size"] == 8


def test_a_cache_first_run_with_a_wrong_images_root_is_finished_from_the_right_one(data, cache, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for row in range(32):
        (wrong / f"img{row}.png").write_bytes(b"not a png")  # every image there unreadable
    output = tmp_path / "features"
    code, _, err = run_cli(capsys, cache_args(data, output, images_root=wrong))
    one_line_error(code, err, "none of its 32 images can be read", f"{wrong / 'img0.png'}: unreadable", "--images-root")
    code, _, err = run_cli(capsys, cache_args(data, output, images_root=data))  # the same command, the right root
    assert code == 0, err
    assert (output / "skipped_images.txt").read_text() == (cache / "skipped_images.txt").read_text()
    uninterrupted = shards_of(cache)
    for name, shard in shards_of(output).items():
        assert torch.equal(shard["indices"], uninterrupted[name]["indices"]), name
        torch.testing.assert_close(shard["features"], uninterrupted[name]["features"], atol=1e-6, rtol=0)


def test_a_rerun_after_fixing_images_caches_them_and_drops_them_from_the_skipped_list(data, tmp_path, capsys):
    folder = Path(shutil.copytree(data, tmp_path / "data"))
    output = tmp_path / "features"
    assert main(cache_args(folder, output)) == 0
    before = snapshot(output)
    shutil.copy(folder / "img4.png", folder / "img3.png")  # the unreadable image of shard 0 fixed
    code, _, err = run_cli(capsys, cache_args(folder, output))
    assert code == 0, err
    assert (output / "skipped_images.txt").read_text() == f"{folder / 'img12.png'}: missing\n"
    stored = json.loads((output / "cache.json").read_text())
    assert (stored["complete"], stored["features"], stored["skipped"]) == (True, 31, 1)
    after = snapshot(output)
    assert [name for name in before if name.startswith("features-") and after[name] != before[name]] == [
        "features-00000.safetensors"  # only the shard of the fixed image was computed again
    ]
    opened = FeatureCache(output)
    torch.testing.assert_close(opened.features(3), opened.features(4), atol=0, rtol=0)  # the same image now


def test_a_complete_cache_of_the_images_under_another_root_is_replaced_only_with_overwrite(data, cache_copy, capsys):
    elsewhere = Path(shutil.copytree(data, cache_copy.parent / "moved"))
    before = snapshot(cache_copy)
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, images_root=elsewhere))
    one_line_error(code, err, f"holds the features of the images under {data}", "(--images-root)", "--overwrite")
    assert snapshot(cache_copy) == before
    code, _, err = run_cli(capsys, cache_args(data, cache_copy, images_root=elsewhere, overwrite=True))
    assert code == 0, err
    assert json.loads((cache_copy / "cache.json").read_text())["images_root"] == str(elsewhere)


def test_a_full_disk_is_one_line_and_the_cache_is_finished_once_space_is_freed(data, cache, tmp_path):
    """A real full disk (a tmpfs with 8 KiB left): safetensors fails with `SafetensorError: Error while
    serializing: I/O error: No space left on device`; the user must read disk space. The same command, once space
    is freed, finishes the cache as an uninterrupted run makes it."""
    output = tmp_path / "disk/features"
    result = on_a_nearly_full_disk(tmp_path, 8192, cache_args(data, output), cache_args(data, output), keep=output)
    one_line_error(result["first_rc"], result["first_err"], f"No space left on the disk of {output}")
    one_line_error(result["first_rc"], result["first_err"], "free some disk space, then run the same command again")
    assert result["then_rc"] == 0, result["then_err"]
    kept = tmp_path / "kept"
    assert (kept / "skipped_images.txt").read_text() == (cache / "skipped_images.txt").read_text()
    uninterrupted = shards_of(cache)
    assert shards_of(kept).keys() == uninterrupted.keys()
    for name, shard in shards_of(kept).items():
        assert torch.equal(shard["indices"], uninterrupted[name]["indices"]), name
        torch.testing.assert_close(shard["features"], uninterrupted[name]["features"], atol=1e-6, rtol=0)


def test_a_shard_write_failing_for_disk_space_is_one_line(data, tmp_path, capsys, monkeypatch):
    """The same failure where no tmpfs can be mounted: the shard writer raises what safetensors raises on a full
    disk (its message copied from a real one)."""

    def full(*_, **__):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(feature_cache, "save_file", full)
    code, _, err = run_cli(capsys, cache_args(data, tmp_path / "features"))
    one_line_error(code, err, f"No space left on the disk of {tmp_path / 'features'}", "run the same command again")


def test_a_training_run_into_a_cache_folder_is_refused_as_such(data, cache_copy, capsys):
    before = snapshot(cache_copy)
    for flags in ({}, {"overwrite": True}):
        code, _, err = run_cli(capsys, train_args(data, cache_copy, **flags))
        one_line_error(code, err, "an image-feature cache (cache.json), not a training run", "--image-features")
        assert "earlier training run" not in err
    assert snapshot(cache_copy) == before


def test_a_folder_of_other_files_or_a_file_is_not_made_a_cache(data, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/holiday.jpg").write_bytes(b"mine")
    code, _, err = run_cli(capsys, cache_args(data, tmp_path / "photos", overwrite=True))
    one_line_error(code, err, "a folder of other files, not an image-feature cache")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["holiday.jpg"]
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, cache_args(data, tmp_path / "file"))
    one_line_error(code, err, "is a file; the cache is a folder")


def test_a_truncated_shard_is_named_and_computed_again(data, cache_copy, tmp_path, capsys, caplog):
    shard = cache_copy / "features-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    code, _, err = run_cli(capsys, [*train_args(data, tmp_path / "run"), *cached_flags(data, cache_copy)])
    one_line_error(code, err, "features-00001.safetensors holds", "were written", "cache-features")
    assert not (tmp_path / "run").exists()

    others = {name: stat for name, stat in snapshot(cache_copy).items() if name.startswith("features-")}
    del others["features-00001.safetensors"]
    code, _, err = run_cli(capsys, cache_args(data, cache_copy))
    assert code == 0, err
    assert any("features-00001.safetensors" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    assert {name: snapshot(cache_copy)[name] for name in others} == others  # only the damaged shard was redone
    with deadline(120):
        train(cached_run(data, tmp_path / "run", cache_copy, **dict(EXACT, epochs=1)))
    assert sorted(losses_of(tmp_path / "run")) == [1, 2, 3, 4]


def test_training_refuses_a_cache_of_another_model(data, cache, tmp_path, capsys):
    other = dict(TINY_CONFIG, text_cfg=dict(TINY_CONFIG["text_cfg"], layers=3))
    (tmp_path / "deeper.json").write_text(json.dumps(other))
    args = [*train_args(data, tmp_path / "run", model=tmp_path / "deeper.json"), *cached_flags(data, cache)]
    code, _, err = run_cli(capsys, args)
    one_line_error(code, err, f"--model {data / 'tiny.json'}, not of --model {tmp_path / 'deeper.json'}")
    assert not (tmp_path / "run").exists()


def test_training_refuses_a_cache_of_other_image_tower_weights(data, cache, tmp_path, capsys):
    other = save_pretrained(tmp_path / "other.safetensors", seed=6)
    cached = [*train_args(data, tmp_path / "run"), *cached_flags(data, cache)]
    code, _, err = run_cli(capsys, [*cached, "--pretrained", other])
    one_line_error(code, err, "features of another image tower", f"--pretrained {data / 'pretrained.safetensors'}")
    assert not (tmp_path / "run/checkpoints").exists()

    text_only = {key: value for key, value in load_file(other).items() if not key.startswith("visual.")}
    save_file(text_only, tmp_path / "text_only.safetensors")
    code, _, err = run_cli(capsys, [*cached, "--pretrained", tmp_path / "text_only.safetensors"])
    one_line_error(code, err, "has no image tower to check", "pass the checkpoint the cache was made from")

    code, _, err = run_cli(capsys, [*cached, "--pretrained", "none"])
    one_line_error(code, err, "features of another image tower", "random weights (--seed 0)")


def test_training_refuses_a_cache_whose_annotation_file_changed(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data", count=16)
    save_pretrained(folder / "pretrained.safetensors", seed=5)
    assert main(cache_args(folder, tmp_path / "features")) == 0
    annotations = folder / "train.jsonl"
    annotations.write_text(annotations.read_text().replace("red square", "crimson square", 1))
    args = [*train_args(folder, tmp_path / "run"), *cached_flags(folder, tmp_path / "features")]
    code, _, err = run_cli(capsys, args)
    one_line_error(code, err, "another version of --train-data", "content changed since", "--overwrite")


def test_an_empty_or_unreadable_dataset_is_refused(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data", count=4, corrupt=(0, 1, 2, 3))
    save_pretrained(folder / "pretrained.safetensors", seed=5)
    code, _, err = run_cli(capsys, cache_args(folder, tmp_path / "features"))
    one_line_error(code, err, "none of its 4 images can be read", "img0.png: unreadable")
    (folder / "train.jsonl").write_text("")
    code, _, err = run_cli(capsys, cache_args(folder, tmp_path / "empty"))
    one_line_error(code, err, "train.jsonl: the file is empty")
    assert not (tmp_path / "empty").exists()


def test_text_only_settings_that_cannot_work_are_refused(data, cache, tmp_path, capsys):
    args = [*train_args(data, tmp_path / "run", freeze="text"), *cached_flags(data, cache)]
    code, _, err = run_cli(capsys, args)
    one_line_error(code, err, "--freeze text with --image-features", "nothing would be trained")
    code, _, err = run_cli(capsys, [*train_args(data, tmp_path / "run"), "--image-features", tmp_path / "nowhere"])
    one_line_error(code, err, "no such folder", "longclip cache-features")
    code, _, err = run_cli(capsys, [*train_args(data, tmp_path / "run"), "--image-features", data])
    one_line_error(code, err, "not an image-feature cache (no cache.json)")
