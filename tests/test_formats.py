"""Reading every checkpoint layout: parity with the source model to 1e-5 (open_clip forward as reference)."""

import json

import pytest
import torch
from helpers.common import TINY_OPEN_CLIP_CONFIG_GELU, published_longclip_state_dict, tiny_open_clip_model
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from longclip_diffusers.checkpoint import CheckpointError
from longclip_diffusers.convert import convert
from longclip_diffusers.formats import load_checkpoint
from longclip_diffusers.text_encoder import LongCLIPTextEncoder
from longclip_diffusers.tokenizer import LongCLIPTokenizer
from longclip_diffusers.weights_files import safetensors_shapes

ATOL = 1e-5


def prompt_ids(num_positions: int, lengths=(7, 60, 120, 248), pad: int = 0) -> torch.Tensor:
    """Token ids of prompts of several lengths (BOS ... EOS, then pads), as open_clip's tokenizer lays them out."""
    generator = torch.Generator().manual_seed(num_positions)
    rows = []
    for length in lengths:
        length = min(length, num_positions)
        body = torch.randint(1, 49406, (length - 2,), generator=generator)
        row = torch.full((num_positions,), pad)
        row[:length] = torch.cat([torch.tensor([49406]), body, torch.tensor([49407])])
        rows.append(row)
    return torch.stack(rows)


def open_clip_text_hidden_states(model, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower up to (and including) ln_final: the reference for `last_hidden_state`."""
    x = model.token_embedding(ids) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x)


def assert_text_parity(hf_model, open_clip_model, num_positions: int) -> None:
    ids = prompt_ids(num_positions)
    with torch.no_grad():
        output = hf_model(input_ids=ids)
        torch.testing.assert_close(
            output.last_hidden_state, open_clip_text_hidden_states(open_clip_model, ids), atol=ATOL, rtol=0
        )
        if isinstance(hf_model, CLIPTextModelWithProjection):
            torch.testing.assert_close(output.text_embeds, open_clip_model.encode_text(ids), atol=ATOL, rtol=0)


def assert_clip_parity(clip_model: CLIPModel, open_clip_model, num_positions: int) -> None:
    ids = prompt_ids(num_positions)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = clip_model(input_ids=ids, pixel_values=images)
        text_features = open_clip_model.encode_text(ids, normalize=True)
        image_features = open_clip_model.encode_image(images, normalize=True)
        torch.testing.assert_close(output.text_embeds, text_features, atol=ATOL, rtol=0)
        torch.testing.assert_close(output.image_embeds, image_features, atol=ATOL, rtol=0)
        scale = open_clip_model.logit_scale.exp()
        torch.testing.assert_close(output.logits_per_image, scale * image_features @ text_features.T, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            output.text_model_output.last_hidden_state,
            open_clip_text_hidden_states(open_clip_model, ids),
            atol=ATOL,
            rtol=0,
        )


# ----------------------------------------------------------------------------------------------------------
# Published Long-CLIP layout
# ----------------------------------------------------------------------------------------------------------


def test_published_pt_merges_both_position_tables(published_pt):
    path, reference = published_pt
    checkpoint = load_checkpoint(path)
    table = checkpoint.state_dict["text_model.embeddings.position_embedding.weight"]
    assert torch.equal(table, reference.positional_embedding.detach())
    assert checkpoint.num_positions == 248
    assert checkpoint.text_config.hidden_act == "quick_gelu"
    assert checkpoint.text_config.num_attention_heads == 2


def test_published_pt_text_encoder_matches_open_clip(published_pt):
    path, reference = published_pt
    for with_projection in (False, True):
        model = LongCLIPTextEncoder.from_pretrained(path, with_projection=with_projection)
        assert type(model) is (CLIPTextModelWithProjection if with_projection else CLIPTextModel)
        assert model.config.max_position_embeddings == 248
        assert_text_parity(model, reference, 248)


def test_copying_only_positional_embedding_would_be_wrong(published_pt):
    """The mistake a public converter makes: it shows up well above the parity tolerance."""
    path, reference = published_pt
    model = LongCLIPTextEncoder.from_pretrained(path)
    naive = torch.load(path, weights_only=True)["positional_embedding"]
    with torch.no_grad():
        model.embeddings.position_embedding.weight.copy_(naive)
    with pytest.raises(AssertionError):
        assert_text_parity(model, reference, 248)


def test_published_pt_to_clip_matches_open_clip_text_and_image_features(published_pt, tmp_path):
    path, reference = published_pt
    out = convert(path, tmp_path / "clip", to="clip")
    model = CLIPModel.from_pretrained(out).eval()
    assert model.config.text_config.max_position_embeddings == 248
    assert_clip_parity(model, reference, 248)


def test_published_safetensors_reads_like_the_pt(published_pt, tmp_path):
    path, reference = published_pt
    state_dict = {key: value.contiguous() for key, value in torch.load(path, weights_only=True).items()}
    save_file(state_dict, tmp_path / "longclip.safetensors")
    assert_text_parity(LongCLIPTextEncoder.from_pretrained(tmp_path / "longclip.safetensors"), reference, 248)


def test_a_safetensors_file_reads_whatever_its_suffix_and_a_misnamed_pt_is_named(published_pt, tmp_path):
    path, _ = published_pt
    state_dict = {key: value.contiguous() for key, value in torch.load(path, weights_only=True).items()}
    save_file(state_dict, tmp_path / "safetensors-inside.bin")
    loaded, expected = load_checkpoint(tmp_path / "safetensors-inside.bin").state_dict, load_checkpoint(path).state_dict
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[key], expected[key]) for key in expected)
    torch.save(state_dict, tmp_path / "torch-inside.safetensors")
    with pytest.raises(CheckpointError, match="torch-inside.safetensors: is a PyTorch checkpoint.*rename it to .pt"):
        load_checkpoint(tmp_path / "torch-inside.safetensors")


# ----------------------------------------------------------------------------------------------------------
# open_clip layouts
# ----------------------------------------------------------------------------------------------------------


def test_open_clip_training_checkpoint_with_its_architecture(tmp_path):
    """A training checkpoint ({"state_dict": {"module.*"}, "epoch"}) of a non-OpenAI (GELU, 16-wide heads) model."""
    reference = tiny_open_clip_model(3, TINY_OPEN_CLIP_CONFIG_GELU)
    config_path = tmp_path / "arch.json"
    config_path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG_GELU))
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")

    checkpoint = load_checkpoint(tmp_path / "epoch_3.pt", open_clip_model=str(config_path))
    assert checkpoint.text_config.num_attention_heads == 3
    assert checkpoint.vision_config.num_attention_heads == 2
    assert checkpoint.text_config.hidden_act == "gelu"
    out = convert(tmp_path / "epoch_3.pt", tmp_path / "clip", to="clip", open_clip_model=str(config_path))
    assert_clip_parity(CLIPModel.from_pretrained(out).eval(), reference, 77)


def test_open_clip_checkpoint_without_architecture_and_unusual_widths_asks_for_it(tmp_path):
    reference = tiny_open_clip_model(3, TINY_OPEN_CLIP_CONFIG_GELU)
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="--open-clip-model"):
        load_checkpoint(tmp_path / "model.pt")


def test_open_clip_hub_style_folder(tmp_path):
    """open_clip's own Hub layout: open_clip_config.json + open_clip_pytorch_model.bin."""
    reference = tiny_open_clip_model(4, TINY_OPEN_CLIP_CONFIG_GELU)
    folder = tmp_path / "open_clip_repo"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CONFIG_GELU}))
    torch.save(reference.state_dict(), folder / "open_clip_pytorch_model.bin")
    out = convert(folder, tmp_path / "clip", to="clip")
    assert_clip_parity(CLIPModel.from_pretrained(out).eval(), reference, 77)


def test_plain_77_position_clip_is_converted_as_it_is(tmp_path):
    reference = tiny_open_clip_model(5)
    torch.save(reference.state_dict(), tmp_path / "clip.pt")
    out = convert(tmp_path / "clip.pt", tmp_path / "clip", to="clip")
    model = CLIPModel.from_pretrained(out).eval()
    assert model.config.text_config.max_position_embeddings == 77
    assert_clip_parity(model, reference, 77)
    with pytest.raises(CheckpointError, match="77 text positions.*longclip stretch"):
        LongCLIPTextEncoder.from_pretrained(tmp_path / "clip.pt")
    short = LongCLIPTextEncoder.from_pretrained(tmp_path / "clip.pt", allow_short=True)
    assert_text_parity(short, reference, 77)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face layouts
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_clip_folder(tmp_path_factory):
    """A CLIPModel saved by transformers itself (from the published-layout conversion), and its reference."""
    state_dict, reference = published_longclip_state_dict(seed=7)
    tmp = tmp_path_factory.mktemp("hf")
    torch.save(state_dict, tmp / "longclip.pt")
    model = CLIPModel.from_pretrained(convert(tmp / "longclip.pt", tmp / "converted", to="clip"))
    model.save_pretrained(tmp / "saved_by_transformers")
    return tmp / "saved_by_transformers", reference


def test_hf_clip_model_folder(hf_clip_folder, tmp_path):
    folder, reference = hf_clip_folder
    assert_text_parity(LongCLIPTextEncoder.from_pretrained(folder, with_projection=True), reference, 248)
    assert_clip_parity(CLIPModel.from_pretrained(convert(folder, tmp_path / "again", to="clip")), reference, 248)


def test_flat_transformers5_text_model_folder(hf_clip_folder, tmp_path):
    """transformers 5 saves a fresh CLIPTextModel without the `text_model.` prefix; we read it all the same."""
    folder, reference = hf_clip_folder
    loaded = LongCLIPTextEncoder.from_pretrained(folder)
    fresh = CLIPTextModel(loaded.config)  # built fresh, transformers 5 saves it without `text_model.`
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(tmp_path / "flat")
    assert not any(key.startswith("text_model.") for key in safetensors_shapes(tmp_path / "flat/model.safetensors"))
    assert_text_parity(LongCLIPTextEncoder.from_pretrained(tmp_path / "flat"), reference, 248)


def test_community_conversion_without_max_position_embeddings_is_fixed_not_truncated(hf_clip_folder, tmp_path):
    folder, reference = hf_clip_folder
    community = tmp_path / "community"
    LongCLIPTextEncoder.from_pretrained(folder, with_projection=True).save_pretrained(community)
    config = json.loads((community / "config.json").read_text())
    del config["max_position_embeddings"]  # older conversions lack it: transformers then assumes 77
    (community / "config.json").write_text(json.dumps(config))

    with pytest.raises(Exception, match="mismatched_sizes|size mismatch"):
        CLIPTextModelWithProjection.from_pretrained(community)  # what plain transformers does with it
    model = LongCLIPTextEncoder.from_pretrained(community)
    assert isinstance(model, CLIPTextModelWithProjection)
    assert model.config.max_position_embeddings == 248
    assert_text_parity(model, reference, 248)

    # Such repos often carry CLIP's 77-token tokenizer config: the encoder beside it decides the length.
    LongCLIPTokenizer.from_clip_bpe(model_max_length=77).save_pretrained(community)
    assert CLIPTokenizer.from_pretrained(community).model_max_length == 77
    assert LongCLIPTokenizer.from_pretrained(community).model_max_length == 248


def test_comfyui_file_round_trip(published_pt, tmp_path):
    path, reference = published_pt
    out = convert(path, tmp_path / "longclip_l.safetensors", to="comfyui")
    tensors = load_file(out)
    assert tensors["text_model.embeddings.position_embedding.weight"].shape == (248, 128)
    assert all(key.startswith(("text_model.", "text_projection.")) for key in tensors)
    assert_text_parity(LongCLIPTextEncoder.from_pretrained(out, with_projection=True), reference, 248)


def test_text_encoder_loads_in_the_requested_precision(published_pt):
    path, reference = published_pt
    model = LongCLIPTextEncoder.from_pretrained(path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    ids = prompt_ids(248)
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state.float()
        torch.testing.assert_close(hidden, open_clip_text_hidden_states(reference, ids), atol=0.1, rtol=0.05)


def test_weights_are_stored_in_the_requested_precision(published_pt, tmp_path):
    path, _ = published_pt
    out = convert(path, tmp_path / "fp16", dtype="fp16")
    shapes = json.loads((out / "text_encoder/config.json").read_text())
    assert shapes["max_position_embeddings"] == 248
    tensors = load_file(out / "text_encoder/model.safetensors")
    assert {tensor.dtype for tensor in tensors.values()} == {torch.float16}
    model = CLIPTextModel.from_pretrained(out / "text_encoder")
    assert model.dtype == torch.float16


def test_something_that_is_not_clip_is_refused(tmp_path):
    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors: not a CLIP text encoder"):
        load_checkpoint(tmp_path / "other.safetensors")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5/config.json").write_text(json.dumps({"model_type": "t5"}))
    save_file({"text_model.embeddings.position_embedding.weight": torch.zeros(2, 2)}, tmp_path / "t5/model.safetensors")
    with pytest.raises(CheckpointError, match="model_type is 't5'"):
        load_checkpoint(tmp_path / "t5")
