"""`longclip tiny`: offline pipelines and Long-CLIP encoders in the layouts real users download."""

import json

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTokenizer

from longclip_diffusers.cli import main


def test_tiny_writes_complete_pipelines_and_matching_long_encoders(tiny_components):
    sd15 = StableDiffusionPipeline.from_pretrained(tiny_components / "sd15")
    sdxl = StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl")
    assert sd15.text_encoder.config.max_position_embeddings == sd15.tokenizer.model_max_length == 77
    assert sdxl.tokenizer.pad_token == "<|endoftext|>" and sdxl.tokenizer_2.pad_token == "!"

    for base, pipe in (("sd15", sd15), ("sdxl", sdxl)):
        long_encoder = CLIPTextModel.from_pretrained(tiny_components / f"longclip-{base}/text_encoder")
        long_tokenizer = CLIPTokenizer.from_pretrained(tiny_components / f"longclip-{base}/tokenizer")
        assert long_encoder.config.max_position_embeddings == long_tokenizer.model_max_length == 248
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "hidden_act"):
            assert getattr(long_encoder.config, field) == getattr(pipe.text_encoder.config, field), (base, field)
        # the real CLIP vocabulary: the same ids as the pipeline's own tokenizer
        assert long_tokenizer("a photo of a cat").input_ids == pipe.tokenizer("a photo of a cat").input_ids


def test_tiny_pipelines_generate_offline(tiny_components):
    for pipeline_class, folder in ((StableDiffusionPipeline, "sd15"), (StableDiffusionXLPipeline, "sdxl")):
        pipe = pipeline_class.from_pretrained(tiny_components / folder)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a lighthouse", num_inference_steps=2, output_type="np").images[0]
        assert image.shape == (64, 64, 3)
        assert torch.isfinite(torch.from_numpy(image)).all()


def test_tiny_command_is_atomic_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["tiny", str(tmp_path / "components")]) == 0
    assert sorted(p.name for p in (tmp_path / "components").iterdir()) == [
        "longclip-sd15",
        "longclip-sdxl",
        "sd15",
        "sdxl",
    ]
    index = json.loads((tmp_path / "components/sdxl/model_index.json").read_text())
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    capsys.readouterr()
    assert main(["tiny", str(tmp_path / "components")]) == 1
    assert "already exists" in capsys.readouterr().err
