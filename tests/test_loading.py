"""Loading without copies: `build_text_model` / `build_clip_model` (behind `LongCLIPTextEncoder.from_pretrained`,
`convert` and the ComfyUI "Load Long-CLIP" node) assign the checkpoint's tensors to a model built on the meta
device: the same model as the earlier route (write a folder, transformers' `from_pretrained` of it), without the
folder or a second copy."""

import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

from longclip_diffusers import LongCLIPTextEncoder
from longclip_diffusers.comfyui.encoders import load_long_clip
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.text_encoder import build_clip_model, build_text_model
from longclip_diffusers.writing import write_clip_model, write_text_encoder


def through_a_folder(checkpoint, folder: Path, with_projection=None, dtype=None, clip=False):
    """The earlier route, kept here as the reference: write a Hugging Face folder, load it back."""
    if clip:
        write_clip_model(checkpoint, folder, dtype)
        model = CLIPModel.from_pretrained(folder)
    else:
        with_projection = checkpoint.is_projection_model if with_projection is None else with_projection
        write_text_encoder(checkpoint, folder, with_projection, dtype)
        model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        model = model_class.from_pretrained(folder)
    return (model.to(dtype) if dtype is not None else model).eval()


def assert_same_model(model, reference):
    assert type(model) is type(reference) and not model.training
    config, expected = model.config.to_dict(), reference.config.to_dict()
    config.pop("_name_or_path"), expected.pop("_name_or_path")  # the reference's temporary folder
    assert config == expected
    state, expected_state = model.state_dict(), reference.state_dict()
    assert list(state) == list(expected_state)
    for key, tensor in state.items():
        assert tensor.dtype == expected_state[key].dtype and torch.equal(tensor, expected_state[key]), key
    buffers, expected_buffers = dict(model.named_buffers()), dict(reference.named_buffers())
    assert buffers.keys() == expected_buffers.keys()
    assert all(torch.equal(buffers[key], expected_buffers[key]) for key in buffers)
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in reference.parameters()]


@pytest.mark.parametrize(
    "source, with_projection, dtype",
    [
        ("published", None, None),  # OpenAI layout: q, k, v are views of one tensor
        ("published", True, torch.float16),
        ("sdxl", None, None),  # a Hugging Face folder
        ("sd15", False, torch.bfloat16),
    ],
)
def test_the_text_model_is_the_one_the_folder_route_gave(
    source, with_projection, dtype, published_pt, tiny_components, tmp_path
):
    path = published_pt[0] if source == "published" else tiny_components / f"longclip-{source}" / "text_encoder"
    checkpoint = load_checkpoint(path)
    model = build_text_model(checkpoint, with_projection, dtype)
    assert_same_model(model, through_a_folder(checkpoint, tmp_path, with_projection, dtype))


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_the_clip_model_is_the_one_the_folder_route_gave(dtype, published_pt, tmp_path):
    checkpoint = load_checkpoint(published_pt[0])
    reference = through_a_folder(checkpoint, tmp_path, dtype=dtype, clip=True)
    assert_same_model(build_clip_model(checkpoint, dtype), reference)


def test_the_tensors_read_are_the_model_s_no_second_copy(tiny_components):
    checkpoint = load_checkpoint(tiny_components / "longclip-sdxl" / "text_encoder")
    model = build_text_model(checkpoint)
    for key, parameter in model.state_dict().items():
        canonical = key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"
        assert parameter.data_ptr() == checkpoint.state_dict[canonical].data_ptr(), key


def written_bytes() -> int:
    """Bytes this process has written through `write` calls (to files, pipes and terminals alike)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


@pytest.mark.parametrize("load", ["from_pretrained", "comfyui_node"])
def test_loading_writes_nothing(load, tiny_components, tmp_path, monkeypatch):
    """No temporary copy: nothing appears in the temporary folder, and what the process writes is far less than the
    weights (which a copy would write)."""
    import tempfile

    folder = tiny_components / "longclip-sdxl"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    weights = (folder / "text_encoder" / "model.safetensors").stat().st_size
    before = written_bytes()
    if load == "from_pretrained":
        LongCLIPTextEncoder.from_pretrained(folder)
    else:
        load_long_clip(folder / "text_encoder", "clip_l")
    assert written_bytes() - before < weights / 10
    assert os.listdir(tmp_path) == []
