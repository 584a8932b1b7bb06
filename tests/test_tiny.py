"""`longclip tiny`: offline pipelines and Long-CLIP encoders in the layouts real users download."""

import json

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTokenizer

from longclip_diffusers.cli import main


def test_tiny_writes_complete_pipelines_and_matching_long_encoders(tiny_components):
    sd15 = StableDiffusionPipeline.from_pretrained(tiny_components / "sd15")
    sdxl = StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl")
    assert sd15.text_encoder.config.max_position_embeddings == sd15.tokenizer.model_max_length == 77
    assert sdxl.tokenizer.pad_token == "<|endoftext|>" and sdxl.tokenizer_2.pad_token == "!"

    sd2 = StableDiffusionPipeline.from_pretrained(tiny_components / "sd2")
    assert sd2.tokenizer.pad_token == "!" and sd2.text_encoder.config.hidden_act == "gelu"
    assert sd2.text_encoder.config.num_hidden_layers == sd15.text_encoder.config.num_hidden_layers - 1  # as SD 2's H
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    sd3 = StableDiffusion3Pipeline.from_pretrained(tiny_components / "sd3")
    flux = FluxPipeline.from_pretrained(tiny_components / "flux")
    assert type(sd3.text_encoder).__name__ == type(sd3.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert sd3.tokenizer_2.pad_token == "!" and type(flux.text_encoder) is CLIPTextModel
    for t5_tokenizer, t5_encoder in ((sd3.tokenizer_3, sd3.text_encoder_3), (flux.tokenizer_2, flux.text_encoder_2)):
        # T5's conventions: <pad> 0, </s> 1 appended, "▁" word starts, ids within the encoder's vocabulary
        ids = t5_tokenizer("A red boat at sea").input_ids
        assert t5_tokenizer.convert_ids_to_tokens(ids) == ["▁A", "▁red", "▁boat", "▁at", "▁sea", "</s>"]
        assert (t5_tokenizer.pad_token_id, t5_tokenizer.eos_token_id) == (0, 1)
        assert len(t5_tokenizer) <= t5_encoder.config.vocab_size

    for base, pipe in (("sd15", sd15), ("sdxl", sdxl), ("sd2", sd2), ("sd3", sd3), ("flux", flux)):
        encoder_class = type(pipe.text_encoder)  # SD 3's keeps its text projection
        long_encoder = encoder_class.from_pretrained(tiny_components / f"longclip-{base}/text_encoder")
        long_tokenizer = CLIPTokenizer.from_pretrained(tiny_components / f"longclip-{base}/tokenizer")
        assert long_encoder.config.max_position_embeddings == long_tokenizer.model_max_length == 248
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "hidden_act"):
            assert getattr(long_encoder.config, field) == getattr(pipe.text_encoder.config, field), (base, field)
        # the real CLIP vocabulary: the same ids as the pipeline's own tokenizer, and its padding
        assert long_tokenizer("a photo of a cat").input_ids == pipe.tokenizer("a photo of a cat").input_ids
        assert long_tokenizer.pad_token == pipe.tokenizer.pad_token, base


def test_tiny_pipelines_generate_offline(tiny_components):
    for pipeline_class, folder in (
        (StableDiffusionPipeline, "sd15"),
        (StableDiffusionXLPipeline, "sdxl"),
        (StableDiffusionPipeline, "sd2"),
        (StableDiffusion3Pipeline, "sd3"),
        (FluxPipeline, "flux"),
    ):
        pipe = pipeline_class.from_pretrained(tiny_components / folder)
        pipe.set_progress_bar_config(disable=True)
        size = {"height": 64, "width": 64} if folder == "flux" else {}  # FluxPipeline's default is not the model's
        image = pipe("a lighthouse", num_inference_steps=2, output_type="np", **size).images[0]
        assert image.shape == (64, 64, 3)
        assert torch.isfinite(torch.from_numpy(image)).all()


def test_tiny_command_is_atomic_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["tiny", str(tmp_path / "components")]) == 0
    assert sorted(p.name for p in (tmp_path / "components").iterdir()) == [
        "comfyui",
        "flux",
        "longclip-flux",
        "longclip-l",
        "longclip-sd15",
        "longclip-sd2",
        "longclip-sd3",
        "longclip-sdxl",
        "sd15",
        "sd2",
        "sd3",
        "sdxl",
        "train",
    ]
    assert f"longclip train --train-data {tmp_path / 'components/train/train.jsonl'}" in capsys.readouterr().out
    index = json.loads((tmp_path / "components/sdxl/model_index.json").read_text())
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    capsys.readouterr()
    assert main(["tiny", str(tmp_path / "components")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_the_long_clip_l_stand_in_loads_as_the_published_one_does(tiny_components):
    """`longclip-l/` stands in for `BeichenZhang/LongCLIP-L`: both towers and the text projection, 248 positions, a
    plain `CLIPTextModel` unless a projection is asked for, and CLIP-L's width in every tiny pipeline."""
    from transformers import CLIPModel, CLIPTextModelWithProjection

    from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer, load_checkpoint

    checkpoint = load_checkpoint(tiny_components / "longclip-l")
    assert checkpoint.has_vision and checkpoint.has_text_projection and checkpoint.num_positions == 248
    clip = CLIPModel.from_pretrained(tiny_components / "longclip-l")
    text_encoder = LongCLIPTextEncoder.from_pretrained(tiny_components / "longclip-l")
    projected = LongCLIPTextEncoder.from_pretrained(tiny_components / "longclip-l", with_projection=True)
    assert type(text_encoder) is CLIPTextModel and type(projected) is CLIPTextModelWithProjection
    assert LongCLIPTokenizer.from_pretrained(tiny_components / "longclip-l").model_max_length == 248
    ids = torch.tensor([[49406, 320, 1929, 49407]])
    with torch.no_grad():
        expected = clip.text_projection(clip.text_model(ids).pooler_output)
        torch.testing.assert_close(projected(ids).text_embeds, expected, rtol=0, atol=1e-6)
    for base in ("sd15", "sdxl", "sd3", "flux"):
        stock = CLIPTextModel.from_pretrained(tiny_components / base / "text_encoder")
        assert stock.config.hidden_size == text_encoder.config.hidden_size, base
