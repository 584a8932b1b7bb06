"""`longclip bake`: single-file SD 1.5 / SDXL checkpoints (the tiny pipelines in the original key layout) with a
Long-CLIP baked in, loaded back tensor for tensor; every other tensor byte for byte; bad input in one line."""

import re

import pytest
import torch
from helpers.single_files import ldm_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from longclip_diffusers import convert
from longclip_diffusers.cli import main
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.layouts import canonical_to_openai
from longclip_diffusers.single_file import SD_SLOTS, SDXL_SLOTS, read_encoder, read_single_file
from longclip_diffusers.weights_files import safetensors_header

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
METADATA = {"modelspec.title": "tiny test model", "modelspec.architecture": "stable-diffusion-v1"}


@pytest.fixture(scope="module")
def files(tiny_components, tmp_path_factory):
    """Single files of the tiny SD 1.5 (fp32, and fp16 as model sites share them) and SDXL pipelines, and a
    long bigG (the tiny SDXL's own, stretched)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = tmp_path_factory.mktemp("bake")
    sd15 = ldm_state_dict(StableDiffusionPipeline.from_pretrained(tiny_components / "sd15"))
    sd15[POSITION_IDS] = torch.arange(77).reshape(1, 77)  # a buffer the SD 1.5 release files hold
    sdxl = ldm_state_dict(StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl"))
    paths = {"sd15": folder / "sd15.safetensors", "sd15-fp16": folder / "sd15-fp16.safetensors"}
    save_file({k: v.contiguous() for k, v in sd15.items()}, paths["sd15"], metadata=METADATA)
    fp16 = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd15.items()}
    save_file(fp16, paths["sd15-fp16"], metadata=METADATA)
    paths["sdxl"] = folder / "sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in sdxl.items()}, paths["sdxl"])
    paths["long-bigg"] = convert(
        tiny_components / "sdxl", folder / "long-bigg", subfolder="text_encoder_2", stretch=(20, 4), pad_token="!"
    )
    return paths


def raw_tensors(path) -> dict[str, tuple[str, list[int], bytes]]:
    """Each tensor's dtype, shape and stored bytes, read straight from the file."""
    entries, start = safetensors_header(path)
    data = path.read_bytes()
    return {
        key: (entry["dtype"], entry["shape"], data[start + entry["data_offsets"][0] : start + entry["data_offsets"][1]])
        for key, entry in entries.items()
    }


def bake(*args: str) -> None:
    assert main(["bake", *map(str, args)]) == 0


def baked_encoder(path, slot, source):
    """The encoder in `slot` of a baked file, read with the source encoder's own config (tiny heads)."""
    return read_encoder(read_single_file(path), slot, str(path), load_checkpoint(source).text_config)


def assert_same_tower(baked, source, slot):
    expected = load_checkpoint(source).state_dict
    keys = [key for key in expected if key.startswith("text_model.")] + [
        "text_projection.weight"
    ] * slot.with_projection
    assert set(baked.state_dict) == set(keys)
    assert all(torch.equal(baked.state_dict[key], expected[key]) for key in keys)


@pytest.mark.parametrize("name", ["sd15", "sd15-fp16"])
def test_bake_sd15_writes_the_long_clip_and_keeps_every_other_tensor_byte_for_byte(
    files, tiny_components, tmp_path, capsys, name
):
    source = tiny_components / "longclip-sd15"
    out = tmp_path / "baked.safetensors"
    bake(files[name], "--encoder", source, "--out", out)
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    before, after = raw_tensors(files[name]), raw_tensors(out)
    slot = SD_SLOTS[0]
    assert {k: v for k, v in before.items() if not k.startswith(slot.prefix)} == {
        k: v for k, v in after.items() if not k.startswith(slot.prefix)
    }
    assert after[slot.position_key][:2] == (before[slot.position_key][0], [248, 32])  # the file's dtype, 248 rows
    with safe_open(out, framework="pt") as handle:
        assert handle.metadata() == {**METADATA, "format": "pt"}
        assert torch.equal(handle.get_tensor(POSITION_IDS), torch.arange(248).reshape(1, 248))  # rebuilt, int64
    baked = baked_encoder(out, slot, source)
    assert baked.num_positions == 248
    if name == "sd15":
        assert_same_tower(baked, source, slot)
    else:  # written in the file's fp16
        expected = load_checkpoint(source).state_dict
        assert all(torch.equal(value, expected[key].half()) for key, value in baked.state_dict.items())


def test_bake_sdxl_both_encoders_and_load_it_back_with_from_single_file(files, tiny_components, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer
    from longclip_diffusers.pipelines import LongCLIPStableDiffusionXLPipeline

    out = tmp_path / "baked.safetensors"
    bake(files["sdxl"], "--encoder", tiny_components / "longclip-sdxl", "--encoder-2", files["long-bigg"], "--out", out)
    before, after = raw_tensors(files["sdxl"]), raw_tensors(out)
    prefixes = tuple(slot.prefix for slot in SDXL_SLOTS)
    assert {k: v for k, v in before.items() if not k.startswith(prefixes)} == {
        k: v for k, v in after.items() if not k.startswith(prefixes)
    }
    assert_same_tower(
        baked_encoder(out, SDXL_SLOTS[0], tiny_components / "longclip-sdxl"),
        tiny_components / "longclip-sdxl",
        SDXL_SLOTS[0],
    )
    assert_same_tower(baked_encoder(out, SDXL_SLOTS[1], files["long-bigg"]), files["long-bigg"], SDXL_SLOTS[1])

    loaded = LongCLIPStableDiffusionXLPipeline.from_single_file(out, config=tiny_components / "sdxl")
    assert loaded.text_encoder_2.config.max_position_embeddings == loaded.tokenizer_2.model_max_length == 248
    assert loaded.tokenizer_2.pad_token == "!"
    expected = LongCLIPStableDiffusionXLPipeline.from_pipe(
        StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl"),
        text_encoder=LongCLIPTextEncoder.from_pretrained(tiny_components / "longclip-sdxl"),
        tokenizer=LongCLIPTokenizer.from_pretrained(tiny_components / "longclip-sdxl"),
        text_encoder_2=LongCLIPTextEncoder.from_pretrained(files["long-bigg"]),
        tokenizer_2=LongCLIPTokenizer.from_pretrained(files["long-bigg"]),
    )
    prompt = "a lighthouse on a cliff at dusk, " * 12
    with torch.no_grad():
        actual = loaded.encode_prompt(prompt, device="cpu", negative_prompt="blurry")
        wanted = expected.encode_prompt(prompt, device="cpu", negative_prompt="blurry")
    assert actual[0].shape == (1, 248, 64)
    assert all(torch.equal(a, w) for a, w in zip(actual, wanted, strict=True))


@pytest.fixture(scope="module")
def sdxl_with_wide_bigg(files, published_pt, tmp_path_factory):
    """An SDXL single file whose bigG is wider than its CLIP-L, as in the real model (1280 vs 768)."""
    tensors = {k: v for k, v in read_single_file(files["sdxl"]).items() if not k.startswith(SDXL_SLOTS[1].prefix)}
    wide = load_checkpoint(published_pt[0])  # width 128, with its projection
    big_g = canonical_to_openai({k: v for k, v in wide.state_dict.items() if k.startswith(("text_model.", "text_p"))})
    tensors |= {SDXL_SLOTS[1].prefix + k: v for k, v in big_g.items()}
    path = tmp_path_factory.mktemp("wide") / "sdxl-wide-bigg.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wide-as-l", r"width 128 and 2 layers, but .*'s SD 1.x CLIP-L has width 32 and 5 layers; give a Long-CLIP"),
        (
            "bigg-as-l",
            r"width 128 and 2 layers, .*'s SDXL CLIP-L has width 32 .*; it fits the SDXL OpenCLIP-bigG: pass "
            "it as --encoder-2",
        ),  # fmt: skip
        ("deeper", r"width 32 and 4 layers, but .*'s SD 1.x CLIP-L has width 32 and 5 layers"),
        ("short", "has 77 text positions, a plain CLIP: nothing to bake"),
        ("no-projection", "has no text projection, which the SDXL OpenCLIP-bigG needs"),
        ("encoder-2-sd15", "an SD 1.x checkpoint has one text encoder .*without --encoder-2"),
        ("not-sd", "not an SD 1.x or SDXL single-file checkpoint"),
        ("suffix", r"give an output path ending in \.safetensors"),
        ("exists", "already exists; choose another output or pass --overwrite"),
    ],
)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(
    files, sdxl_with_wide_bigg, published_pt, tiny_components, tmp_path, capsys, case, message
):
    out = tmp_path / "baked.safetensors"
    long_l = tiny_components / "longclip-sd15"
    args = {
        "wide-as-l": [files["sd15"], "--encoder", published_pt[0]],
        "bigg-as-l": [sdxl_with_wide_bigg, "--encoder", published_pt[0]],
        "deeper": [files["sd15"], "--encoder", tiny_components / "longclip-sd2"],
        "short": [files["sd15"], "--encoder", tiny_components / "sd15" / "text_encoder"],
        "no-projection": [files["sdxl"], "--encoder-2", long_l],
        "encoder-2-sd15": [files["sd15"], "--encoder", long_l, "--encoder-2", files["long-bigg"]],
        "not-sd": [long_l / "text_encoder" / "model.safetensors", "--encoder", long_l],
        "suffix": [files["sd15"], "--encoder", long_l],
        "exists": [files["sd15"], "--encoder", long_l],
    }[case]
    if case == "suffix":
        out = tmp_path / "baked.ckpt"
    if case == "exists":
        out.write_bytes(b"an earlier file")
    assert main(["bake", *map(str, args), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("longclip: error: ") and error.count("\n") == 1
    assert re.search(message, error), error
    assert sorted(p.name for p in tmp_path.iterdir()) == (["baked.safetensors"] if case == "exists" else [])
    if case == "exists":
        assert out.read_bytes() == b"an earlier file"
        bake(files["sd15"], "--encoder", long_l, "--out", out, "--overwrite")
        assert raw_tensors(out)[SD_SLOTS[0].position_key][1] == [248, 32]
