"""The `longclip` command: conversions end to end, and every bad input as a one-line error."""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from longclip_diffusers import weights_files, writing
from longclip_diffusers.cli import main, registered_commands
from longclip_diffusers.commands import LIBRARY_COMMANDS
from longclip_diffusers.tiny import tiny_text_config


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the test printed while preparing
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("longclip: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


PROGRESS_BAR = re.compile(r"^[^|]*\d+%\|[^|]*\| \d+/\d+ \[.*\]$")  # tqdm: "Loading ...:  40%|####  | 2/5 [...]"


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_convert_to_diffusers_gives_a_plain_transformers_text_encoder_and_tokenizer(published_pt, tmp_path, capsys):
    path, _ = published_pt
    code, out, _ = run_cli(capsys, "convert", path, tmp_path / "out")
    assert code == 0 and "wrote" in out
    model = CLIPTextModel.from_pretrained(tmp_path / "out/text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "out/tokenizer")
    assert model.config.max_position_embeddings == tokenizer.model_max_length == 248
    keys = weights_files.safetensors_shapes(tmp_path / "out/text_encoder/model.safetensors")
    assert all(key.startswith("text_model.") for key in keys)  # the layout transformers 4.x expects
    assert leftovers(tmp_path) == []


def test_convert_to_clip_writes_model_and_processor(published_pt, tmp_path, capsys):
    from transformers import CLIPProcessor

    path, _ = published_pt
    code, _, _ = run_cli(capsys, "convert", path, tmp_path / "clip", "--to", "clip")
    assert code == 0
    processor = CLIPProcessor.from_pretrained(tmp_path / "clip")
    model = CLIPModel.from_pretrained(tmp_path / "clip")
    inputs = processor(
        text=["a long prompt " * 40],
        images=[torch.zeros(3, 32, 32)],
        return_tensors="pt",
        padding="max_length",
        truncation=True,
    )
    assert inputs["input_ids"].shape == (1, 248)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert model(**inputs).logits_per_image.shape == (1, 1)


def test_stretch_makes_a_long_version_of_a_77_position_encoder(tiny_components, tmp_path, capsys):
    source = tiny_components / "sdxl"
    code, _, _ = run_cli(
        capsys, "stretch", source, tmp_path / "long_g", "--subfolder", "text_encoder_2", "--pad-token", "!"
    )
    assert code == 0
    config = json.loads((tmp_path / "long_g/text_encoder/config.json").read_text())
    assert config["max_position_embeddings"] == 248
    assert config["architectures"] == ["CLIPTextModelWithProjection"]
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "long_g/tokenizer")
    assert tokenizer.pad_token == "!" and tokenizer.model_max_length == 248

    code, _, _ = run_cli(
        capsys, "stretch", source, tmp_path / "k10", "--subfolder", "text_encoder", "--keep", "10", "--ratio", "5"
    )
    assert code == 0
    assert json.loads((tmp_path / "k10/text_encoder/config.json").read_text())["max_position_embeddings"] == 345


def test_stretching_a_long_clip_again_is_refused(published_pt, tmp_path, capsys):
    path, _ = published_pt
    code, _, err = run_cli(capsys, "stretch", path, tmp_path / "o")
    assert_one_line_error(code, err, "already has 248 text positions", "longclip convert")


def test_stretch_with_invalid_keep_is_refused(tiny_components, tmp_path, capsys):
    code, _, err = run_cli(capsys, "stretch", tiny_components / "sd15/text_encoder", tmp_path / "o", "--keep", "77")
    assert_one_line_error(code, err, "keep=77 is out of range")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("ratio", ["1000000000000", "1000000"])
def test_stretch_with_a_huge_ratio_is_refused_before_reading_anything(ratio, tiny_components, tmp_path, capsys):
    """--ratio 1000000 used to allocate 28 GB and die with a traceback."""
    source = tiny_components / "sd15" / "text_encoder"
    code, _, err = run_cli(capsys, "stretch", source, tmp_path / "o", "--ratio", ratio)
    assert_one_line_error(code, err, f"ratio={ratio} would stretch 77 positions", "at most 2048 are supported")
    code, _, err = run_cli(capsys, "stretch", tmp_path / "missing.pt", tmp_path / "o", "--ratio", ratio)
    assert_one_line_error(code, err, "at most 2048")  # checked before the source is even opened
    assert list(tmp_path.iterdir()) == []


def test_missing_source(tmp_path, capsys):
    code, _, err = run_cli(capsys, "convert", tmp_path / "nope.pt", tmp_path / "out")
    assert_one_line_error(code, err, "nope.pt", "no such file")


def test_hub_id_while_offline_says_so(tmp_path, capsys):
    code, _, err = run_cli(capsys, "convert", "someone/NotCachedLongCLIP", tmp_path / "out")
    assert_one_line_error(code, err, "someone/NotCachedLongCLIP", "unreachable")


def test_truncated_safetensors(published_pt, tmp_path, capsys):
    path, _ = published_pt
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(path, weights_only=True).items()}, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _, err = run_cli(capsys, "convert", truncated, tmp_path / "out")
    assert_one_line_error(code, err, "truncated.safetensors", "not a complete safetensors file", "Download it again")
    assert not (tmp_path / "out").exists()


def test_truncated_pt(published_pt, tmp_path, capsys):
    path, _ = published_pt
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, err = run_cli(capsys, "convert", truncated, tmp_path / "out")
    assert_one_line_error(code, err, "truncated.pt", "not a readable PyTorch checkpoint")


class _Payload:
    """Unpickling this runs code that writes `marker`: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(published_pt, tmp_path, capsys):
    path, _ = published_pt
    marker = tmp_path / "payload-ran"
    state_dict = torch.load(path, weights_only=True)
    state_dict["payload"] = _Payload(marker)
    torch.save(state_dict, tmp_path / "evil.pt")
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))  # the payload is real: plain unpickling runs it
    assert (tmp_path / "control").read_text() == "pwned"

    code, _, err = run_cli(capsys, "convert", tmp_path / "evil.pt", tmp_path / "out")
    assert_one_line_error(code, err, "evil.pt", "refused to load", "could run code")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_not_a_clip_checkpoint(tmp_path, capsys):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, tmp_path / "unet.safetensors")
    code, _, err = run_cli(capsys, "convert", tmp_path / "unet.safetensors", tmp_path / "out")
    assert_one_line_error(code, err, "unet.safetensors", "not a CLIP text encoder")


def test_text_only_source_cannot_become_a_full_clip_model(tiny_components, tmp_path, capsys):
    code, _, err = run_cli(capsys, "convert", tiny_components / "longclip-sd15", tmp_path / "clip", "--to", "clip")
    assert_one_line_error(code, err, "no vision tower", "--to diffusers")
    assert not (tmp_path / "clip").exists() and leftovers(tmp_path) == []


def test_encoder_with_another_vocabulary_is_refused(tmp_path, capsys):
    config = tiny_text_config()
    config.vocab_size = 1000
    CLIPTextModel(config).save_pretrained(tmp_path / "other_vocab")
    code, _, err = run_cli(capsys, "convert", tmp_path / "other_vocab", tmp_path / "out")
    assert_one_line_error(code, err, "other_vocab", "49408 tokens", "embeds only 1000")


def test_comfyui_output_must_be_a_safetensors_file(published_pt, tmp_path, capsys):
    path, _ = published_pt
    code, _, err = run_cli(capsys, "convert", path, tmp_path / "folder", "--to", "comfyui")
    assert_one_line_error(code, err, "ending in .safetensors")


def test_existing_output_is_kept_unless_overwrite(published_pt, tmp_path, capsys):
    path, _ = published_pt
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep-me.txt").write_text("user data")
    code, _, err = run_cli(capsys, "convert", path, tmp_path / "out")
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (tmp_path / "out/keep-me.txt").read_text() == "user data"

    code, _, _ = run_cli(capsys, "convert", path, tmp_path / "out", "--overwrite")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["text_encoder", "tokenizer"]
    assert leftovers(tmp_path) == []


def test_a_failure_mid_write_leaves_nothing_behind(published_pt, tmp_path, capsys, monkeypatch):
    path, _ = published_pt
    (tmp_path / "out").mkdir()
    (tmp_path / "out/previous.txt").write_text("previous result")
    real_write = writing.write_safetensors

    def write_then_fail(tensors, target, dtype=None):
        real_write(tensors, target, dtype)
        raise OSError(f"{target}: No space left on device")

    monkeypatch.setattr(writing, "write_safetensors", write_then_fail)
    code, _, err = run_cli(capsys, "convert", path, tmp_path / "out", "--overwrite")
    assert_one_line_error(code, err, "No space left on device")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["previous.txt"]
    assert leftovers(tmp_path) == []


def test_console_script_exits_non_zero_without_traceback(tmp_path):
    """The installed `longclip` entry point, as a user runs it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [Path(sys.executable).parent / "longclip", "convert", tmp_path / "missing.pt", tmp_path / "out"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    message = "no such file or folder (and it is not a Hugging Face Hub repo id)."
    assert result.stderr.strip() == f"longclip: error: {tmp_path / 'missing.pt'}: {message}"


EVERY_COMMAND = {
    "convert",
    "stretch",
    "comfy-export",
    "bake",
    "drift",
    "tiny",
    "generate",
    "train",
    "cache-features",
    "eval",
    "demo",
}


def test_every_command_is_registered_by_its_own_layer():
    """The library registers its own commands; the applications theirs, through the installed entry points."""
    commands = registered_commands()
    assert set(commands) == EVERY_COMMAND
    library = {name for name in commands if commands[name] in LIBRARY_COMMANDS}
    assert library == {"convert", "stretch", "comfy-export", "bake", "drift", "tiny"}
    for name in ("generate", "train", "cache-features", "eval", "demo"):
        application = {"generate": "pipelines", "demo": "demo"}.get(name, "training")
        assert commands[name].run.__module__.startswith(f"longclip_diffusers.{application}.")


@pytest.mark.parametrize("command", [["-m", "longclip_diffusers"], ["-m", "longclip_diffusers.cli"]])
def test_python_dash_m_has_every_command(command):
    result = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("positional arguments:")[1].split("options:")[0]
    names = {line.split()[0] for line in listed.splitlines() if line.startswith("    ") and line[4] != " "}
    assert names == EVERY_COMMAND
    result = subprocess.run([sys.executable, *command, "generate", "--pipeline"], capture_output=True, text=True)
    assert result.returncode == 2 and "argument --pipeline: expected one argument" in result.stderr


def test_sd2_on_sd_2s_own_encoder_is_refused_instead_of_removing_a_second_layer(tiny_components, tmp_path, capsys):
    sd2 = tiny_components / "sd2"
    code, _, err = run_cli(capsys, "stretch", sd2, tmp_path / "x", "--subfolder", "text_encoder", "--sd2")
    assert_one_line_error(
        code, err, "has no text projection", "SD 2.x's text encoder already", "(4 -> 3)", "without --sd2"
    )
    code, _, err = run_cli(capsys, "convert", tiny_components / "longclip-sd2", tmp_path / "y", "--sd2")
    assert_one_line_error(code, err, "would remove a second layer (4 -> 3)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("base", "encoders"),
    [
        ("sd3", "text_encoder, text_encoder_2, text_encoder_3"),
        ("sdxl", "text_encoder, text_encoder_2"),
        ("flux", "text_encoder, text_encoder_2"),
    ],
)
def test_a_pipeline_with_several_encoders_needs_a_subfolder(base, encoders, tiny_components, tmp_path, capsys):
    code, _, err = run_cli(capsys, "stretch", tiny_components / base, tmp_path / "x")
    assert_one_line_error(code, err, f"text encoders ({encoders}); name the one to read with --subfolder")
    code, _, err = run_cli(capsys, "stretch", tiny_components / base, tmp_path / "x", "--subfolder", "text_encoder")
    assert code == 0, err
    code, _, err = run_cli(capsys, "stretch", tiny_components / "sd15", tmp_path / "y")  # one encoder: no doubt
    assert code == 0, err


@pytest.mark.parametrize(
    ("layers", "fragments"),
    [
        (5, ("has 5 layers", "has 4", "`longclip convert SRC OUT --sd2`")),
        (3, ("has 3 layers", "has lost layers", "without --sd2")),
    ],
)
def test_generate_refuses_an_encoder_of_another_depth(layers, fragments, tiny_components, tmp_path, capsys):
    """One layer too many (a full-depth OpenCLIP-H, a text-only training output) reads the last layer where SD 2.x
    reads the penultimate; one too few is what --sd2 on SD 2.x's own encoder used to make."""
    encoder = tmp_path / "long"
    config = tiny_text_config(hidden_act="gelu", num_hidden_layers=layers, max_position_embeddings=248)
    CLIPTextModel(config).save_pretrained(encoder)
    out = tmp_path / "x.png"
    args = ["--pipeline", tiny_components / "sd2", "--long-encoder", encoder, "--prompt", "a cat", "--out", out]
    code, _, err = run_cli(capsys, "generate", *args, "--steps", "1")
    lines = [line.strip() for line in re.split(r"[\r\n]", err.replace("\x1b[A", ""))]  # after loading progress bars
    assert_one_line_error(code, "\n".join(line for line in lines if line and not PROGRESS_BAR.match(line)), *fragments)
    assert not out.exists()


def test_a_short_encoder_is_refused_with_the_command_line_way_first(tiny_components, tmp_path, capsys):
    out = tmp_path / "x.png"
    args = ["--pipeline", tiny_components / "sd15", "--long-encoder", tiny_components / "sd15" / "text_encoder"]
    code, _, err = run_cli(capsys, "generate", *args, "--prompt", "a cat", "--out", out)
    assert_one_line_error(code, err, "has 77 text positions", "`longclip stretch SRC OUT` on the command line")
