"""What we save loads in transformers 4.x too (run in a subprocess with transformers 4.57 on its path)."""

import json

import torch
from helpers.common import run_with_transformers4
from transformers import CLIPModel, CLIPTextModel

from longclip_diffusers import LongCLIPTokenizer, convert

PROMPTS = [
    "a lighthouse on a cliff at dusk, waves crashing below, " * 8,
    "a red fishing boat",
]

LOAD_IN_TRANSFORMERS4 = """
import json, sys, torch, transformers
from safetensors.torch import load_file
assert transformers.__version__.startswith("4."), transformers.__version__
from transformers import CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTextConfig, CLIPTokenizer, CLIPTokenizerFast

out, prompts, inputs_path, result_path = sys.argv[1:5]
prompts = json.loads(prompts)
inputs = torch.load(inputs_path, weights_only=True)
result = {}

text_encoder, info = CLIPTextModel.from_pretrained(out + "/diffusers/text_encoder", output_loading_info=True)
result["text_encoder_loading_info"] = {k: sorted(v) for k, v in info.items() if k != "error_msgs"}
with torch.no_grad():
    result["last_hidden_state"] = text_encoder(inputs["input_ids"]).last_hidden_state

for cls in (CLIPTokenizer, CLIPTokenizerFast):  # the slow one is what SD pipelines name in model_index.json
    tokenizer = cls.from_pretrained(out + "/diffusers/tokenizer")
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    result[cls.__name__] = {"input_ids": ids.input_ids, "model_max_length": tokenizer.model_max_length}

clip, info = CLIPModel.from_pretrained(out + "/clip", output_loading_info=True)
result["clip_loading_info"] = {k: sorted(v) for k, v in info.items() if k != "error_msgs"}
processor = CLIPProcessor.from_pretrained(out + "/clip")
result["processor_ids"] = processor(text=prompts, padding="max_length", truncation=True).input_ids
with torch.no_grad():
    output = clip(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
result["text_embeds"], result["image_embeds"] = output.text_embeds, output.image_embeds

comfy_keys = set(load_file(out + "/longclip_l.safetensors"))
expected = set(CLIPTextModel(text_encoder.config).state_dict()) | {"text_projection.weight"}
result["comfyui_keys_match"] = comfy_keys == expected
torch.save(result, result_path)
"""


def test_outputs_load_and_compute_the_same_in_transformers4(published_pt, tmp_path):
    path, _ = published_pt
    convert(path, tmp_path / "diffusers")
    convert(path, tmp_path / "clip", to="clip")
    convert(path, tmp_path / "longclip_l.safetensors", to="comfyui")

    tokenizer = LongCLIPTokenizer.from_pretrained(tmp_path / "diffusers/tokenizer")
    ids = tokenizer(PROMPTS, padding="max_length", truncation=True, return_tensors="pt").input_ids
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save({"input_ids": ids, "pixel_values": pixel_values}, tmp_path / "inputs.pt")

    script = tmp_path / "load4.py"
    script.write_text(LOAD_IN_TRANSFORMERS4)
    code = (
        "import runpy, sys; "
        f"sys.argv = ['load4', {str(tmp_path)!r}, {json.dumps(PROMPTS)!r}, "
        f"{str(tmp_path / 'inputs.pt')!r}, {str(tmp_path / 'result.pt')!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    run_with_transformers4(code)
    result = torch.load(tmp_path / "result.pt", weights_only=True)

    no_surprises = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    assert result["text_encoder_loading_info"] == no_surprises
    assert result["clip_loading_info"] == no_surprises
    assert result["comfyui_keys_match"]
    for name in ("CLIPTokenizer", "CLIPTokenizerFast", "processor_ids"):
        loaded = result[name] if name == "processor_ids" else result[name]["input_ids"]
        assert torch.equal(torch.tensor(loaded), ids), name
    assert result["CLIPTokenizer"]["model_max_length"] == result["CLIPTokenizerFast"]["model_max_length"] == 248

    with torch.no_grad():
        text_encoder = CLIPTextModel.from_pretrained(tmp_path / "diffusers/text_encoder")
        torch.testing.assert_close(result["last_hidden_state"], text_encoder(ids).last_hidden_state, atol=1e-5, rtol=0)
        clip = CLIPModel.from_pretrained(tmp_path / "clip")
        output = clip(input_ids=ids, pixel_values=pixel_values)
    torch.testing.assert_close(result["text_embeds"], output.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(result["image_embeds"], output.image_embeds, atol=1e-5, rtol=0)
