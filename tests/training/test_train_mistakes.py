"""`longclip train` and the mistakes a user can make: each gets a one-line answer, and no run is lost.

Real runs on the CPU (tiny open_clip models, synthetic images, real accelerate), driven through the command line.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.training import (
    config_for,
    losses_of,
    on_a_nearly_full_disk,
    one_line_error,
    run_cli,
    snapshot,
    train_args,
    write_dataset,
    write_shards,
)
from safetensors.torch import load_file

from longclip_diffusers.cli import main
from longclip_diffusers.training import train as training_module
from longclip_diffusers.training.model import build_model
from longclip_diffusers.training.records import read_records
from longclip_diffusers.training.samples import SampleBuilder, collate
from longclip_diffusers.training.tar_shards import TarShardDataset, expand_shards
from longclip_diffusers.training.train import build_loader, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), count=16)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run: 2 steps an epoch, 2 epochs, checkpoints at steps 2 and 4."""
    output = tmp_path_factory.mktemp("finished") / "run"
    train(config_for(data, output, epochs=2, save_every=2))
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step_2", "step_4"]
    return output


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run, to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


# ----------------------------------------------------------------------------------------------------------
# 1. Data that cannot fill a batch is refused; an epoch without a batch stops the run
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, flags", [(11, {"batch_size": 16}), (5, {"batch_size": 128})])
def test_fewer_rows_than_one_batch_are_refused_at_start(tmp_path, capsys, rows, flags):
    folder = write_dataset(tmp_path / "data", count=rows)
    code, _, err = run_cli(capsys, train_args(folder, tmp_path / "run", **flags))
    one_line_error(code, err, f"{rows} rows", f"one batch of {flags['batch_size']}", "1 process", "--batch-size")
    assert not (tmp_path / "run").exists()


def test_rows_for_one_process_but_not_for_two_are_refused(data):
    config = config_for(data, "unused", batch_size=8)  # 16 rows: two batches of 8, one per process
    _, preprocess, _ = build_model(config)
    assert len(build_loader(config, preprocess, 248, rank=0, world_size=2)) == 2
    with pytest.raises(ValueError, match="16 rows do not fill one batch of 12 .* in each of 2 process"):
        build_loader(config_for(data, "unused", batch_size=12), preprocess, 248, rank=1, world_size=2)


def test_gradient_accumulation_counts_the_last_short_accumulation_of_an_epoch(tmp_path):
    """4 batches an epoch, 3 per step: accelerate steps after batches 3 and 4, so 2 steps an epoch."""
    folder = write_dataset(tmp_path / "data", count=32)
    train(config_for(folder, tmp_path / "run", epochs=2, grad_accum=3, save_every=100))
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["epoch"]) for row in rows] == [(1, 0), (2, 0), (3, 1), (4, 1)]


def test_shards_without_a_usable_sample_stop_the_run(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data", count=16)
    pattern = write_shards(folder, shards=2, per_shard=3, corrupt={(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)})
    code, _, err = run_cli(capsys, train_args(folder, tmp_path / "run", train_data=pattern, max_steps=2))
    one_line_error(code, err, "epoch 0 gave process 0 no full batch of 8", "--batch-size")


def test_missing_shards_and_fewer_shards_than_processes_are_refused(tmp_path):
    folder = write_dataset(tmp_path / "data", count=16)
    pattern = write_shards(folder, shards=2, per_shard=4)
    config = config_for(folder, "unused", train_data=pattern.replace("001", "002"), max_steps=1)
    _, preprocess, _ = build_model(config)
    with pytest.raises(FileNotFoundError, match=r"shard-002\.tar: no such tar shard \(1 of the 3 missing\)"):
        build_loader(config, preprocess, 248, rank=0, world_size=1)
    with pytest.raises(ValueError, match="2 shard.* for 3 processes"):
        build_loader(config_for(folder, "unused", train_data=pattern), preprocess, 248, rank=0, world_size=3)


def test_every_process_streams_a_shard_of_its_own_whatever_the_workers(tmp_path):
    """2 shards, 2 processes with 2 data-loader workers each: each process reads one shard (its first worker)."""
    folder = write_dataset(tmp_path / "data", count=16)
    shards = expand_shards(write_shards(folder, shards=2, per_shard=4))
    builder = SampleBuilder(lambda image: torch.zeros(1), lambda texts: torch.zeros(2, 1, dtype=torch.long))
    samples = []
    for rank in (0, 1):
        dataset = TarShardDataset(shards, builder, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate)
        samples.append(sum(len(batch["image"]) for batch in loader))
    assert samples == [4, 4]


# ----------------------------------------------------------------------------------------------------------
# 2. An earlier run in --output is kept unless --resume or --overwrite says otherwise
# ----------------------------------------------------------------------------------------------------------


def test_a_new_run_into_an_earlier_one_is_refused_and_changes_nothing(data, run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=1))
    one_line_error(code, err, "holds an earlier training run", "--resume auto", "--overwrite", "another --output")
    assert snapshot(run_copy) == before


def test_overwrite_replaces_the_earlier_runs_files_and_keeps_the_users(data, run_copy, capsys):
    (run_copy / "notes.txt").write_text("my notes")
    (run_copy / "checkpoints/step_2/mine.txt").write_text("inside a checkpoint: the run's")
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=1, save_every=1, overwrite=True))
    assert code == 0, err
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert not (run_copy / "checkpoints/step_2/mine.txt").exists()
    assert sorted(losses_of(run_copy)) == [1, 2]
    assert json.loads((run_copy / "config.json").read_text())["epochs"] == 1
    assert (run_copy / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize(
    "mistake, message",
    [
        ({"pretrained": "laion2b_s34b_b79k_typo"}, "laion2b_s34b_b79k_typo"),
        ({"batch_size": 500}, "one batch of 500"),
    ],
)
def test_an_overwrite_that_fails_at_start_keeps_the_earlier_run(data, run_copy, capsys, mistake, message):
    before = snapshot(run_copy)
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=1, overwrite=True, **mistake))
    one_line_error(code, err, message)
    assert snapshot(run_copy) == before
    assert sorted(p.name for p in run_copy.iterdir()) == sorted(p.name for p in run_copy.iterdir() if p.name[0] != ".")


def test_an_overwrite_that_fails_while_running_puts_the_earlier_run_back(data, run_copy, monkeypatch):
    """A failure after the new run has started (here: writing its loss plot, after final/ is exported) removes what
    the new run wrote and puts the earlier run back as it was."""
    before = snapshot(run_copy)

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training_module, "plot_losses", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(config_for(data, run_copy, epochs=1, save_every=1, overwrite=True))
    assert snapshot(run_copy) == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]


def test_a_full_disk_is_one_line_and_the_run_resumes_identically_once_space_is_freed(data, finished, tmp_path):
    """A real full disk (a tmpfs): checkpoint step_2 (41 MB) fits in the 64 MB left, step_4 does not. torch then
    fails with `RuntimeError: [enforce fail at inline_container.cc] . unexpected pos`; the user must read disk space,
    and the partial checkpoint must not stay behind. After freeing space, `--resume auto` ends as an uninterrupted
    run does."""
    run, settings = tmp_path / "disk/run", {"epochs": 2, "save_every": 2}  # those of `finished`
    first, then = train_args(data, run, **settings), train_args(data, run, resume="auto", **settings)
    result = on_a_nearly_full_disk(tmp_path, 64 * 2**20, first, then, keep=run)
    one_line_error(
        result["first_rc"], result["first_err"], f"No space left on the disk of {run / 'checkpoints/step_4'}"
    )
    one_line_error(result["first_rc"], result["first_err"], "free some disk space", "--resume auto")
    assert result["then_rc"] == 0, result["then_err"]
    kept = tmp_path / "kept"
    assert losses_of(kept) == losses_of(finished)  # bit for bit
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["step_2", "step_4"]  # no .tmp-step_4 left
    trained, uninterrupted = (
        load_file(kept / "final/model.safetensors"),
        load_file(finished / "final/model.safetensors"),
    )
    assert trained.keys() == uninterrupted.keys()
    assert all(torch.equal(trained[key], uninterrupted[key]) for key in trained)


def test_resume_and_overwrite_exclude_each_other(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(data, tmp_path / "run", resume="auto", overwrite=True))
    assert exit_info.value.code == 2
    assert "--overwrite: not allowed with argument --resume" in capsys.readouterr().err


def test_resuming_with_other_settings_is_refused_naming_them(data, run_copy, capsys):
    before = snapshot(run_copy)
    args = train_args(data, run_copy, epochs=2, save_every=2, batch_size=4, lr="2e-3", resume="auto")
    code, _, err = run_cli(capsys, args)
    one_line_error(code, err, "other settings", "--batch-size 8 (now 4)", "--lr 0.001 (now 0.002)")
    assert "--save-every" not in err and "--epochs" not in err
    assert snapshot(run_copy) == before


def test_resuming_with_settings_that_change_nothing_computed_is_allowed(data, run_copy, capsys):
    code, _, err = run_cli(
        capsys, train_args(data, run_copy, epochs=2, save_every=1, keep_checkpoints=3, log_every=2, resume="auto")
    )
    assert code == 0, err


# ----------------------------------------------------------------------------------------------------------
# 3. A damaged checkpoint is passed over; anything else unusable gets one line
# ----------------------------------------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garble":  # same size, not JSON
        path.write_bytes(b"x" * path.stat().st_size)
    elif how == "delete":
        path.unlink()


@pytest.mark.parametrize(
    "name, how, reason",
    [
        ("model.safetensors", "truncate", "model.safetensors holds"),
        ("optimizer.bin", "truncate", "optimizer.bin holds"),
        ("trainer_state.json", "delete", "trainer_state.json is missing"),
        ("trainer_state.json", "garble", "trainer_state.json is not a trainer state"),
        ("manifest.json", "delete", "incomplete"),
    ],
)
def test_resume_auto_passes_over_a_damaged_checkpoint(data, finished, run_copy, capsys, caplog, name, how, reason):
    damage(run_copy / "checkpoints/step_4" / name, how)
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=2, save_every=2, resume="auto"))
    assert code == 0, err
    warning = next(r.getMessage() for r in caplog.records if "passed over" in r.getMessage())
    assert str(run_copy / "checkpoints/step_4") in warning and reason in warning
    assert losses_of(run_copy) == losses_of(finished)  # steps 3 and 4 again from step 2, bit for bit
    assert (run_copy / "checkpoints/step_4/manifest.json").exists()


def test_an_empty_step_folder_and_unrelated_names_in_checkpoints(data, run_copy, capsys, caplog):
    for name in ("step_6", "notes", "step_abc"):
        (run_copy / "checkpoints" / name).mkdir()
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=2, save_every=2, resume="auto"))
    assert code == 0, err
    assert any("step_6: incomplete" in record.getMessage() for record in caplog.records)
    assert (run_copy / "checkpoints/notes").is_dir() and (run_copy / "checkpoints/step_abc").is_dir()


def test_no_intact_checkpoint_is_a_one_line_error(data, run_copy, capsys):
    for step in (2, 4):
        damage(run_copy / f"checkpoints/step_{step}/model.safetensors", "truncate")
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=2, save_every=2, resume="auto"))
    one_line_error(code, err, "no intact checkpoint", "step_2", "step_4", "--overwrite")


@pytest.mark.parametrize(
    "target, fragments",
    [
        ("nowhere", ["--resume", "nowhere: no such checkpoint folder"]),
        ("checkpoints/step_4", ["step_4: optimizer.bin holds"]),
        (".", ["a run folder, not a checkpoint", "--resume auto"]),
    ],
)
def test_resume_path_problems_are_one_line_errors(data, run_copy, capsys, target, fragments):
    damage(run_copy / "checkpoints/step_4/optimizer.bin", "truncate")
    resume = str(run_copy / target) if target != "nowhere" else str(run_copy.parent / "nowhere")
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=2, save_every=2, resume=resume))
    one_line_error(code, err, *fragments)


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(data, finished, run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints/step_4")
    with (run_copy / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')
    code, _, err = run_cli(capsys, train_args(data, run_copy, epochs=2, save_every=2, resume="auto"))
    assert code == 0, err
    assert losses_of(run_copy) == losses_of(finished)


# ----------------------------------------------------------------------------------------------------------
# 4. Impossible settings are argument errors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--save-every", "0"), ("--epochs", "0"), ("--max-steps", "0"), ("--max-steps", "-3"),
        ("--warmup-steps", "-1"), ("--batch-size", "0"), ("--workers", "-1"), ("--grad-accum", "0"),
        ("--keep-checkpoints", "0"), ("--log-every", "0"), ("--pca-components", "0"), ("--keep", "-1"),
        ("--ratio", "0"), ("--seed", "-1"), ("--epochs", "two"), ("--lr", "0"), ("--lr", "nan"), ("--eps", "-0.5"),
        ("--weight-decay", "-0.1"), ("--label-smoothing", "1"), ("--fine-weight", "inf"), ("--betas", "0.9 1.0"),
    ],
)  # fmt: skip
def test_impossible_settings_are_argument_errors(data, tmp_path, capsys, flag, value):
    args = train_args(data, tmp_path / "run", train_data=tmp_path / "missing.jsonl")  # else an exit status 1
    with pytest.raises(SystemExit) as exit_info:
        main([*args, flag, *value.split()])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {value.split()[-1]}: give a" in err, err


# ----------------------------------------------------------------------------------------------------------
# 5. Annotation files: the file and the line (or entry) of each mistake
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", '{"image": "a.png", "caption": "x"}\n\n{"image": "b.png", "caption": "unterminated}\n',
         "a.jsonl:3: not valid JSON (Unterminated string starting at, column 31)"),
        ("a.jsonl", '{"image": "a.png", "caption": "x"}\n["b.png", "y"]\n', "a.jsonl:2: expected an object"),
        ("a.jsonl", '{"image": "a.png", "caption": 7}\n', "a.jsonl:1: lacks an `image` or `caption`"),
        ("a.jsonl", "", "a.jsonl: the file is empty"),
        ("a.jsonl", "\n  \n", "a.jsonl: the file is empty"),
        ("a.csv", "path,text\na.png,x\n", "a.csv:1: the header ['path', 'text'] lacks an `image` or `caption` column"),
        ("a.csv", 'image,caption\na.png,"one"\nb.png\n', "a.csv:3: lacks an `image` or `caption`"),
        ("a.json", '{"image": "a.png"}', "a.json: expected a JSON list of ShareGPT4V entries, found a dict"),
        ("a.json", '[{"image": "a.png",\n  "conversations": [}]', "a.json:2: not valid JSON"),
        ("a.json", json.dumps([{"image": "x.png", "conversations": []}] * 3),
         "a.json: holds 3 entries, all within the first 1,000"),
    ],
)  # fmt: skip
def test_annotation_mistakes_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError) as error:
        read_records(tmp_path / name)
    assert str(error.value).startswith(f"{tmp_path / message}"), error.value


def test_sharegpt4v_entries_are_named_by_index(tmp_path):
    good = {"image": "coco/1.jpg", "conversations": [{"from": "gpt", "value": "A long caption."}]}
    entries = [good] * 1002 + [{"image": "coco/2.jpg", "conversations": [{"from": "human", "value": "?"}]}]
    (tmp_path / "share.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"share\.json: entry \[1002\]: not a ShareGPT4V entry"):
        read_records(tmp_path / "share.json")
    (tmp_path / "share.json").write_text(json.dumps([good] * 1000 + ["text"]))
    with pytest.raises(ValueError, match=r"entry \[1000\]: not a ShareGPT4V entry"):
        read_records(tmp_path / "share.json")


def test_a_byte_order_mark_is_read_and_other_encodings_are_named(tmp_path):
    (tmp_path / "a.csv").write_bytes("image,caption\na.png,Un café.\n".encode("utf-8-sig"))
    assert read_records(tmp_path / "a.csv")[0].caption == "Un café."
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"image": "a.png", "caption": "x"}\n')
    assert read_records(tmp_path / "a.jsonl")[0].image == tmp_path / "a.png"
    (tmp_path / "b.csv").write_bytes("image,caption\na.png,ok\nb.png,Un café.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"b\.csv:3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        read_records(tmp_path / "b.csv")


def test_images_missing_from_the_start_point_to_images_root(tmp_path):
    folder = write_dataset(tmp_path / "data", count=4)
    (folder / "train.jsonl").rename(tmp_path / "train.jsonl")
    config = config_for(folder, "unused", train_data=str(tmp_path / "train.jsonl"), batch_size=2)
    _, preprocess, _ = build_model(config)
    with pytest.raises(FileNotFoundError, match="none of the first 4 images exists .*--images-root"):
        build_loader(config, preprocess, 248, rank=0, world_size=1)


# ----------------------------------------------------------------------------------------------------------
# 6. Skipped images: each listed once, by name and reason, from workers, processes and resumed runs
# ----------------------------------------------------------------------------------------------------------


def test_skipped_images_come_back_from_data_loader_workers(tmp_path):
    folder = write_dataset(tmp_path / "data", count=16, corrupt=(5,), missing=(0, 11))
    train(config_for(folder, tmp_path / "run", epochs=2, workers=2, save_every=100))
    assert (tmp_path / "run/skipped_images.txt").read_text().splitlines() == [
        f"{folder / 'img0.png'}: missing",
        f"{folder / 'img11.png'}: missing",
        f"{folder / 'img5.png'}: unreadable",
    ]


def test_the_skipped_list_survives_a_resume(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data", count=16, corrupt=(2,), missing=(7,))
    output = tmp_path / "run"
    train(config_for(folder, output, epochs=2, save_every=2))
    expected = (output / "skipped_images.txt").read_text()
    assert expected.count("\n") == 2
    for name in ("final", "skipped_images.txt"):  # resume from the last checkpoint: no batch is read again
        shutil.rmtree(output / name) if name == "final" else (output / name).unlink()
    code, out, err = run_cli(capsys, train_args(folder, output, epochs=2, save_every=2, resume="auto"))
    assert code == 0, err
    assert (output / "skipped_images.txt").read_text() == expected
    assert "2 image(s) skipped (1 missing, 1 unreadable)" in out


def test_two_processes_stream_shards_with_the_one_process_schedule_and_list_skips_once(tmp_path):
    """A real 2-process gloo run (`torch.distributed.run`) on tar shards with a data-loader worker each."""
    folder = write_dataset(tmp_path / "data", count=16)
    pattern = write_shards(folder, shards=4, per_shard=6, corrupt={(0, 1)}, bad_captions={(3, 2)})
    flags = dict(train_data=pattern, batch_size=4, max_steps=4, warmup_steps=2, pca_components=2, workers=1)
    one = tmp_path / "one"
    train(config_for(folder, one, **flags))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = train_args(folder, tmp_path / "two", **flags)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")  # gloo talks over the loopback interface
    result = subprocess.run(
        [*command, "-m", "longclip_diffusers", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def column(output: Path, key: str) -> list:
        return [json.loads(line)[key] for line in (output / "metrics.jsonl").read_text().splitlines()]

    assert column(tmp_path / "two", "step") == [1, 2, 3, 4]
    assert column(tmp_path / "two", "lr") == column(one, "lr")  # the schedule counts optimizer steps
    assert all(torch.isfinite(torch.tensor(column(tmp_path / "two", "loss"))))
    shards = sorted(folder.glob("shard-*.tar"))
    assert (tmp_path / "two/skipped_images.txt").read_text().splitlines() == [
        f"{shards[0]}:s0_1: unreadable",
        f"{shards[3]}:s3_2: unreadable caption",
    ]
