"""A newcomer's first training run: `longclip tiny OUT`, then the `longclip train` command it prints."""

import json
import shlex

import torch
from transformers import CLIPModel

from longclip_diffusers.cli import main
from longclip_diffusers.tiny import first_training_command


def test_the_first_training_run_on_the_tiny_training_set(tiny_components, tmp_path, capsys):
    rows = (tiny_components / "train/train.jsonl").read_text().splitlines()
    assert len(rows) == 48 and all((tiny_components / "train" / json.loads(row)["image"]).is_file() for row in rows)

    command = shlex.split(first_training_command(tiny_components, tmp_path / "runs/first"))
    assert command[:2] == ["longclip", "train"]
    assert main([*command[1:], "--epochs", "2"]) == 0  # the printed command with fewer epochs (10 -> 2): 6 steps
    out = capsys.readouterr().out
    assert f"trained: {tmp_path / 'runs/first/final'} (CLIPModel)" in out and "skipped" not in out

    run = tmp_path / "runs/first"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [3, 6]
    model = CLIPModel.from_pretrained(run / "final")
    assert model.config.text_config.max_position_embeddings == 248  # the 77 positions of model.json, stretched
    assert torch.isfinite(model.text_model.embeddings.position_embedding.weight).all()
