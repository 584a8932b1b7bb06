"""Long-CLIP fine-tuning on the CPU: tiny open_clip models, synthetic images and captions, real accelerate."""

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import TINY_CONFIG, config_for, losses_of, write_dataset
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel

from longclip_diffusers.training.config import TrainConfig
from longclip_diffusers.training.loss import LongCLIPLoss, pca_reconstruct
from longclip_diffusers.training.model import build_model
from longclip_diffusers.training.records import read_records
from longclip_diffusers.training.samples import CaptionDataset, SampleBuilder, debias_short_caption, first_sentence
from longclip_diffusers.training.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = write_dataset(tmp_path_factory.mktemp("data"))
    output = tmp_path_factory.mktemp("run") / "run"
    config = config_for(folder, output)
    train(config)
    return folder, output, config


# ----------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------


def test_pca_matches_an_independent_svd():
    features = torch.randn(40, 16)
    data = features.double().numpy()
    _, _, vt = np.linalg.svd(data - data.mean(axis=0), full_matrices=False)  # float64, numpy's LAPACK
    expected = (data - data.mean(axis=0)) @ vt[:5].T @ vt[:5] + data.mean(axis=0)
    np.testing.assert_allclose(pca_reconstruct(features, 5).numpy(), expected, atol=1e-5)  # float32 SVD
    few = torch.randn(10, 16)  # 10 centred samples span at most 9 directions: 9 components reconstruct exactly
    torch.testing.assert_close(pca_reconstruct(few, 9), few, atol=1e-5, rtol=0)
    assert not torch.allclose(pca_reconstruct(few, 8), few, atol=1e-3)


def test_cutting_text_batches_after_the_last_end_token_is_exact():
    from longclip_diffusers.stretch import stretch_model
    from longclip_diffusers.training.model import encode_text_cut

    torch.manual_seed(0)
    from open_clip.model import CLIP

    model = stretch_model(CLIP(**TINY_CONFIG)).eval()
    ids = torch.zeros(3, 248, dtype=torch.long)  # pads: "!" (id 0), as the trainer tokenizes
    for row, length in zip(ids, (30, 12, 25), strict=True):
        row[:length] = torch.randint(1, 49406, (length,))
        row[0], row[length - 1] = 49406, 49407
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text_cut(model, ids), model.encode_text(ids, normalize=True), atol=1e-6, rtol=0
        )


def test_pca_lets_gradients_through():
    features = torch.randn(40, 16, requires_grad=True)
    pca_reconstruct(features, 4).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_small_pca_batches_warn_that_pca_does_nothing():
    loss = LongCLIPLoss(pca_components=32)
    features = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    with pytest.warns(UserWarning, match="8 samples with 32 components"):
        loss(features, features, features, torch.tensor(100.0))


def test_two_processes_give_the_one_process_loss_and_gradients(tmp_path):
    """A real 2-process gloo run (`torch.distributed.run`) against 1 process on the same global batch."""
    script = Path(__file__).parent / "ddp_step.py"
    subprocess.run([sys.executable, script, tmp_path / "one.pt"], check=True, capture_output=True)
    # --standalone: torch picks a free rendezvous port itself; gloo talks over the loopback interface
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script]
    result = subprocess.run([*command, tmp_path / "two.pt"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    torch.testing.assert_close(two["loss"], one["loss"], atol=1e-5, rtol=1e-5)
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, atol=1e-4, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------------------


def test_loss_decreases_and_outputs_are_written(trained):
    _, output, _ = trained
    losses = losses_of(output)
    assert sorted(losses) == list(range(1, 13))
    assert np.mean([losses[s] for s in (10, 11, 12)]) < 0.5 * np.mean([losses[s] for s in (1, 2, 3)])
    assert (output / "loss.png").stat().st_size > 1000
    assert (output / "skipped_images.txt").read_text() == ""  # no image skipped
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step_12", "step_8"]


def test_first_20_position_rows_stay_bit_identical(trained):
    _, output, config = trained
    torch.manual_seed(config.seed)
    initial, _, _ = build_model(config)
    trained_table = load_file(output / "final/model.safetensors")["text_model.embeddings.position_embedding.weight"]
    assert trained_table.shape == (248, 64)
    assert torch.equal(trained_table[:20], initial.positional_embedding.detach()[:20])
    assert not torch.allclose(trained_table[20:], initial.positional_embedding.detach()[20:])


def test_exported_model_loads_in_plain_transformers_and_matches_the_trained_model(trained):
    folder, output, config = trained
    model, preprocess, _ = build_model(config)
    trained_weights = load_file(output / "checkpoints/step_12/model.safetensors")  # of the TrainingModel wrapper
    model.load_state_dict({k.removeprefix("clip."): v for k, v in trained_weights.items()}, strict=False)
    assert torch.equal(model.positional_embedding, trained_weights["clip.positional_embedding"])
    model.eval()
    exported = CLIPModel.from_pretrained(output / "final").eval()
    ids = torch.randint(1, 49406, (3, 248))
    ids[:, 0], ids[:, 100], ids[:, 101:] = 49406, 49407, 0
    images = torch.stack([preprocess(Image.open(folder / f"img{i}.png")) for i in range(3)])
    with torch.no_grad():
        output_hf = exported(input_ids=ids, pixel_values=images)
        torch.testing.assert_close(output_hf.text_embeds, model.encode_text(ids, normalize=True), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            output_hf.image_embeds, model.encode_image(images, normalize=True), atol=1e-5, rtol=0
        )


def test_a_killed_run_resumes_exactly(trained, tmp_path):
    folder, reference_output, _ = trained
    output = tmp_path / "killed"
    command = [sys.executable, "-c", "from longclip_diffusers.cli import main; main()", "train",
               "--train-data", str(folder / "train.jsonl"), "--model", str(folder / "tiny.json"),
               "--pretrained", "none", "--output", str(output), "--batch-size", "8", "--epochs", "3",
               "--warmup-steps", "2", "--lr", "1e-3", "--workers", "0", "--save-every", "4",
               "--log-every", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (output / "checkpoints/step_4").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (output / "checkpoints/step_4").exists()

    resumed = subprocess.run([*command, "--resume", "auto"], capture_output=True, text=True, env=os.environ)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses_of(output) == losses_of(reference_output)  # every step, bit for bit


def test_corrupt_and_missing_images_are_listed_once_by_name(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data", count=16, corrupt=(3, 9), missing=(12,))
    output = tmp_path / "run"
    train(config_for(folder, output, epochs=3, save_every=100))  # every image is read three times
    assert (output / "skipped_images.txt").read_text().splitlines() == [
        f"{folder / 'img12.png'}: missing",
        f"{folder / 'img3.png'}: unreadable",
        f"{folder / 'img9.png'}: unreadable",
    ]
    summary = f"3 image(s) skipped (1 missing, 2 unreadable): see {output / 'skipped_images.txt'}"
    assert summary in capsys.readouterr().out.splitlines()
    assert (output / "final/model.safetensors").exists()


def test_pretrained_published_checkpoint_is_loaded_exactly(published_pt, tmp_path, caplog):
    from helpers.common import TINY_OPEN_CLIP_CONFIG

    path, reference = published_pt
    (tmp_path / "arch.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    model, _, _ = build_model(TrainConfig(model=str(tmp_path / "arch.json"), pretrained=str(path)))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]  # the weights were loaded
    build_model(TrainConfig(model=str(tmp_path / "arch.json"), pretrained=None))
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]  # true there: still said
    expected = reference.state_dict()
    for name, value in model.state_dict().items():
        if name not in ("attn_mask", "logit_scale"):
            assert torch.equal(value, expected[name]), name
    assert model.logit_scale.item() == pytest.approx(np.log(100))


def test_tar_shards_stream(tmp_path):
    folder = write_dataset(tmp_path / "data", count=16)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    for shard in range(2):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as archive:
            for i, row in enumerate(rows[shard * 8 : (shard + 1) * 8]):
                archive.add(folder / row["image"], arcname=f"{shard}_{i}.png")
                caption = folder / f"{shard}_{i}.txt"
                caption.write_text(row["caption"])
                archive.add(caption, arcname=f"{shard}_{i}.txt")
    output = tmp_path / "run"
    config = config_for(folder, output, train_data=str(folder / "shard-{000..001}.tar"), max_steps=4, batch_size=4)
    train(config)
    assert sorted(losses_of(output)) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def test_sharegpt4v_json_holds_out_its_first_1000_entries(tmp_path):
    entries = [
        {
            "image": f"coco/{i}.jpg",
            "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": f"c{i}"}],
        }
        for i in range(1003)
    ]
    (tmp_path / "share.json").write_text(json.dumps(entries))
    records = read_records(tmp_path / "share.json", images_root=tmp_path / "images")
    assert [r.caption for r in records] == ["c1000", "c1001", "c1002"]
    assert records[0].image == tmp_path / "images/coco/1000.jpg"


def test_csv_and_bad_annotation_files(tmp_path):
    (tmp_path / "a.csv").write_text('image,caption,short_caption\nx.png,"A long one. More.",short\n')
    assert read_records(tmp_path / "a.csv")[0].short_caption == "short"
    (tmp_path / "b.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(ValueError, match="b.jsonl:1: lacks an `image` or `caption`"):
        read_records(tmp_path / "b.jsonl")
    with pytest.raises(FileNotFoundError, match="no such annotation file"):
        read_records(tmp_path / "nope.jsonl")


def test_short_captions():
    caption = "A red boat at dawn. Its sails are patched. Gulls circle it. The sea is calm."
    assert first_sentence(caption) == "A red boat at dawn"
    for seed in range(20):
        short = debias_short_caption(caption, random.Random(seed))
        assert "red boat at dawn" not in short and short
        sentences = short.split(". ")
        rest = ["Its sails are patched", "Gulls circle it", "The sea is calm"]
        assert [s.rstrip(".") for s in sentences] == [s for s in rest if s in short]  # kept in order
    assert debias_short_caption("Just one sentence.", random.Random(0)) == "Just one sentence."


def test_short_caption_sampling_is_reproducible_per_epoch_and_sample(tmp_path):
    folder = write_dataset(tmp_path, count=4)
    seen = []
    builder = SampleBuilder(lambda image: torch.zeros(1), lambda texts: torch.zeros(2, 1), "debias", seed=3)
    dataset = CaptionDataset(read_records(folder / "train.jsonl"), builder)
    original = builder.tokenize
    builder.tokenize = lambda texts: seen.append(texts[1]) or original(texts)
    for epoch in (0, 1, 0):
        dataset.set_epoch(epoch)
        dataset[2]
    assert seen[0] == seen[2]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda config: config["text_cfg"].update(layer=2), "unknown key text_cfg.layer; open_clip takes act_kwargs,"),
        (lambda config: config.update(embed_dims=32), "unknown key embed_dims; open_clip takes custom_text, embed_dim"),
    ],
)
def test_an_unknown_key_in_the_model_json_is_a_one_line_error(tiny_components, tmp_path, capsys, edit, message):
    # a typo in the config JSON gave open_clip's TypeError traceback from inside create_model
    from longclip_diffusers.cli import main

    config = json.loads((tiny_components / "train" / "model.json").read_text())
    edit(config)
    (tmp_path / "typo.json").write_text(json.dumps(config))
    args = ["train", "--train-data", tiny_components / "train" / "train.jsonl", "--model", tmp_path / "typo.json"]
    args += ["--pretrained", "none", "--output", tmp_path / "run", "--workers", "0"]
    assert main([str(arg) for arg in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"longclip: error: --model {tmp_path / 'typo.json'}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
