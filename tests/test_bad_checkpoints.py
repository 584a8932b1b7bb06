"""Bad checkpoints at every entry point that reads one: a one-line error naming the file, and nothing written.

Files that cannot be read (empty, text, truncated, not a torch file, broken configs) and files that read but do
not fit the model they describe (a position table of the wrong width or rank, missing, extra or misshapen
tensors, NaN or infinite weights) are refused by `load_checkpoint` itself, so `longclip convert`, `stretch`,
`comfy-export`, `LongCLIPTextEncoder.from_pretrained` and the ComfyUI loader node all refuse them the same way.
(`LongCLIPTextEncoder` refuses NaN or infinite weights at the model's first forward pass, not at load.)
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPModel, CLIPTextModel

from longclip_diffusers import CheckpointError, LongCLIPTextEncoder, LongCLIPTokenizer, convert, load_checkpoint
from longclip_diffusers.checkpoint_checks import expected_shapes
from longclip_diffusers.cli import main
from longclip_diffusers.comfyui import LongCLIPLoader
from longclip_diffusers.layouts import hf_to_canonical
from longclip_diffusers.tiny import tiny_text_config

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 1710000000\n"
POSITIONS = "text_model.embeddings.position_embedding.weight"


def _save_hf_folder(folder: Path, config: dict | str | None, state_dict: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    save_file({key: value.contiguous() for key, value in state_dict.items()}, folder / "model.safetensors")


@pytest.fixture(scope="module")
def bad(tmp_path_factory, published_pt):
    """name -> (path, fragments its error must hold besides the file name)."""
    root = tmp_path_factory.mktemp("bad")
    published, _ = published_pt
    good = torch.load(published, weights_only=True)
    torch.manual_seed(0)
    encoder = CLIPTextModel(tiny_text_config(64))  # 64 wide: a weights-only copy gets a head count too
    encoder_config = encoder.config.to_dict()
    encoder_weights = {key: value.detach() for key, value in hf_to_canonical(encoder.state_dict()).items()}
    sources: dict[str, tuple[Path, tuple[str, ...]]] = {}

    def add(name: str, fragments: tuple[str, ...], content: bytes | str | dict | None = None) -> Path:
        path = root / name
        if isinstance(content, dict):
            torch.save(content, path)
        elif isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        sources[name] = (path, fragments)
        return path

    # Files that cannot be read (8)
    for suffix in (".pt", ".safetensors", ".bin", ".pth", ".ckpt"):
        add(f"empty{suffix}", ("is empty (0 bytes)",), b"")
    add("text.pt", ("holds text", "not weights"), "hello world\n")
    add("text.safetensors", ("holds text", "not weights"), "hello world\n")
    add("error-page.bin", ("holds text", "not weights"), "<!DOCTYPE html><html><body>404</body></html>\n")
    add("pointer.safetensors", ("Git LFS pointer", "git lfs pull"), LFS_POINTER)
    add("truncated.pth", ("not a readable PyTorch checkpoint",), published.read_bytes()[:5000])
    legacy = root / "legacy-source.pt"
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    add("truncated-legacy.ckpt", ("PyTorch checkpoint",), legacy.read_bytes()[:5000])
    legacy.unlink()
    add("binary.ckpt", ("PyTorch checkpoint",), bytes(range(256)) * 4)
    archive = add("archive.pt", ("not a readable PyTorch checkpoint",))
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes/readme.txt", "not a model")
    (root / "directory.pt").mkdir()
    sources["directory.pt"] = (root / "directory.pt", ("found no CLIP weights",))
    _save_hf_folder(root / "empty-config", "", encoder_weights)
    sources["empty-config"] = (root / "empty-config", ("config.json: not valid JSON",))
    _save_hf_folder(root / "invalid-config", '{"model_type": "clip_text_model",', encoder_weights)
    sources["invalid-config"] = (root / "invalid-config", ("config.json: not valid JSON",))
    _save_hf_folder(root / "list-config", "[]", encoder_weights)
    sources["list-config"] = (root / "list-config", ("config.json: holds a JSON list",))

    # Files that read, but whose tensors do not fit the model they describe (7)
    wide = {**good, "positional_embedding": torch.randn(248, 96), "positional_embedding_res": torch.randn(248, 96)}
    add("wide-table.pt", (f"tensor {POSITIONS} has shape 248x96", "needs 248x128", "text width 128"), wide)
    flat = {**good, "positional_embedding": torch.randn(248 * 128), "positional_embedding_res": torch.randn(248 * 128)}
    add("flat-table.pt", (f"tensor {POSITIONS} has shape 31744,", "needs 31744x128"), flat)
    nan = dict(good)
    nan["transformer.resblocks.1.mlp.c_fc.weight"] = good["transformer.resblocks.1.mlp.c_fc.weight"].clone()
    nan["transformer.resblocks.1.mlp.c_fc.weight"][3, 5] = float("nan")
    add("nan.pt", ("tensor text_model.encoder.layers.1.mlp.fc1.weight holds NaN or infinite values",), nan)
    inf = {key: value.contiguous() for key, value in encoder_weights.items()}
    inf["text_model.final_layer_norm.bias"] = torch.full_like(inf["text_model.final_layer_norm.bias"], float("inf"))
    save_file(inf, add("inf.safetensors", ("tensor text_model.final_layer_norm.bias holds NaN or infinite",)))
    incomplete = {key: value for key, value in good.items() if key != "ln_final.bias"}
    add("missing-tensor.pt", ("tensor ln_final.bias is missing",), incomplete)
    _save_hf_folder(root / "extra-layer", {**encoder_config, "num_hidden_layers": 4}, encoder_weights)
    sources["extra-layer"] = (root / "extra-layer", ("text_model.encoder.layers.4.", "does not have"))
    _save_hf_folder(root / "missing-layer", {**encoder_config, "num_hidden_layers": 6}, encoder_weights)
    sources["missing-layer"] = (root / "missing-layer", ("also needs text_model.encoder.layers.5.", "lacks"))
    _save_hf_folder(root / "wider-config", {**encoder_config, "hidden_size": 128}, encoder_weights)
    sources["wider-config"] = (root / "wider-config", ("has shape 49408x64", "needs 49408x128"))
    _save_hf_folder(root / "bad-heads", {**encoder_config, "num_attention_heads": 5}, encoder_weights)
    sources["bad-heads"] = (root / "bad-heads", ("not a multiple of the number of attention heads (5)",))
    return sources


# A bad source as each entry point is given it; `out` must not appear.
ENTRY_POINTS = ("convert", "stretch", "comfy-export", "LongCLIPTextEncoder", "LongCLIPLoader")
CASES = [
    "empty.pt",
    "empty.safetensors",
    "empty.bin",
    "empty.pth",
    "empty.ckpt",
    "text.pt",
    "text.safetensors",
    "error-page.bin",
    "pointer.safetensors",
    "truncated.pth",
    "truncated-legacy.ckpt",
    "binary.ckpt",
    "archive.pt",
    "directory.pt",
    "empty-config",
    "invalid-config",
    "list-config",
    "wide-table.pt",
    "flat-table.pt",
    "nan.pt",
    "inf.safetensors",
    "missing-tensor.pt",
    "extra-layer",
    "missing-layer",
    "wider-config",
    "bad-heads",
]


def _error_line(entry_point: str, source: Path, out: Path, capsys) -> str:
    """The error `entry_point` answers `source` with, checked to be one line (CLI: exit code 1, no traceback)."""
    if entry_point in ("convert", "stretch", "comfy-export"):
        args = [entry_point, str(out), "--encoder", str(source)] if entry_point == "comfy-export" else []
        args = args or [entry_point, str(source), str(out)]
        capsys.readouterr()
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("longclip: error: ")
        return err.strip()
    with pytest.raises(CheckpointError) as raised:
        if entry_point == "LongCLIPTextEncoder":
            # some cases are 77-position files: allowed here, for the error about what is wrong with them
            LongCLIPTextEncoder.from_pretrained(source, allow_short=True)(torch.tensor([[49406, 320, 49407]]))
        else:
            LongCLIPLoader().load(str(source), "clip_l")  # outside ComfyUI the node reads local paths
    message = str(raised.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_every_entry_point_refuses_a_bad_checkpoint_in_one_line_and_writes_nothing(
    case, entry_point, bad, tmp_path, capsys
):
    source, fragments = bad[case]
    out = tmp_path / "out"
    message = _error_line(entry_point, source, out, capsys)
    assert str(source) in message
    for fragment in fragments:
        assert fragment in message
    assert list(tmp_path.iterdir()) == []


def test_expected_shapes_are_those_of_the_model_transformers_loads(published_pt, tmp_path):
    """The reference for the shape check: the real model written from the same checkpoint and loaded back."""
    path, _ = published_pt
    model = CLIPModel.from_pretrained(convert(path, tmp_path / "clip", to="clip"))
    real = {key: tuple(value.shape) for key, value in hf_to_canonical(model.state_dict()).items()}
    assert expected_shapes(load_checkpoint(path)) == real
    assert real[POSITIONS] == (248, 128)


def test_buffers_of_older_transformers_and_a_logit_scale_are_accepted(tmp_path):
    """Old `CLIPTextModel` files carry `position_ids`; ComfyUI text encoders often carry `logit_scale`."""
    torch.manual_seed(0)
    encoder = CLIPTextModel(tiny_text_config(64))
    weights = {key: value.detach().contiguous() for key, value in hf_to_canonical(encoder.state_dict()).items()}
    weights["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    weights["logit_scale"] = torch.tensor(4.6052)
    _save_hf_folder(tmp_path / "old", encoder.config.to_dict(), weights)
    save_file(weights, tmp_path / "comfy.safetensors")
    checkpoint = load_checkpoint(tmp_path / "old")
    assert expected_shapes(checkpoint)[POSITIONS] == (77, 64)
    assert torch.equal(checkpoint.state_dict[POSITIONS], weights[POSITIONS])
    assert load_checkpoint(tmp_path / "comfy.safetensors").num_positions == 77


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"tokenizer.json": ""}, "tokenizer files cannot be read"),
        ({"tokenizer.json": '{"model": 1}'}, "tokenizer files cannot be read"),
        ({"tokenizer_config.json": "{", "vocab.json": "{}", "merges.txt": ""}, "tokenizer files cannot be read"),
    ],
)
def test_the_tokenizer_beside_an_encoder_refuses_damaged_files_in_one_line(files, fragment, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(CheckpointError) as raised:
        LongCLIPTokenizer.from_pretrained(tmp_path)
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and str(tmp_path) in message and fragment in message


@pytest.mark.parametrize("case", ["empty.pt", "text.pt", "directory.pt", "empty-config"])
def test_the_tokenizer_needs_no_weights_and_is_not_stopped_by_bad_ones(case, bad):
    """The tokenizer reads tokenizer files only: beside a bad weights file it is still CLIP's own."""
    tokenizer = LongCLIPTokenizer.from_pretrained(bad[case][0])
    assert tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]


def test_the_encoder_scans_its_weights_at_its_first_forward_pass(bad, tiny_components):
    """`LongCLIPTextEncoder` loads without reading the weights' values; the scan for NaN / infinite weights runs at
    the first forward pass, refuses every pass of a damaged model, and leaves a sound one after its first pass."""
    damaged = LongCLIPTextEncoder.from_pretrained(bad["nan.pt"][0])
    for _ in range(2):
        with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
            damaged(torch.tensor([[49406, 320, 49407]]))
    sound = LongCLIPTextEncoder.from_pretrained(tiny_components / "longclip-sd15")
    reference = CLIPTextModel.from_pretrained(tiny_components / "longclip-sd15" / "text_encoder")
    assert len(sound._forward_pre_hooks) == 1
    copy = pickle.loads(pickle.dumps(sound))  # a model awaiting its scan still pickles; the copy scans its own
    ids = torch.tensor([[49406, 320, 1929, 49407]])
    with torch.no_grad():
        assert torch.equal(sound(ids).last_hidden_state, reference(ids).last_hidden_state)
        assert len(sound._forward_pre_hooks) == 0 and len(copy._forward_pre_hooks) == 1
        assert torch.equal(copy(ids).last_hidden_state, reference(ids).last_hidden_state)
    assert len(copy._forward_pre_hooks) == 0
