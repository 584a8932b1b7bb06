"""`long_prompt_strategy="stretch"` under `enable_model_cpu_offload`: SDXL and SD 3, text-to-image and img2img.

No GPU here, so the accelerator is mocked by the CPU itself: `enable_model_cpu_offload(device="cpu")` (diffusers
takes the device). The hooks are accelerate's own and run as they would on a GPU, but a move between the CPU and
the execution device changes no tensor; so besides the numbers, the tests check which hooks run, on which module.
"""

import diffusers
import pytest
import torch
from accelerate import cpu_offload
from accelerate.hooks import CpuOffload
from helpers.pipelines import CFG_ENCODE_KWARGS, HEAD, MIDDLE, TAIL_A, generate
from PIL import Image
from transformers import CLIPTextModelWithProjection

from longclip_diffusers.families import FAMILIES
from longclip_diffusers.pipelines import with_long_prompts
from longclip_diffusers.prompts import stretched_view
from longclip_diffusers.tiny import tiny_text_config

IMAGE = Image.new("RGB", (64, 64), (200, 40, 40))
# (family, stock class, call kwargs)
CASES = [
    ("sdxl", "StableDiffusionXLPipeline", {}),
    ("sdxl", "StableDiffusionXLImg2ImgPipeline", {"image": IMAGE, "strength": 0.9}),
    ("sd3", "StableDiffusion3Pipeline", {}),
    ("sd3", "StableDiffusion3Img2ImgPipeline", {"image": IMAGE, "strength": 0.9}),
]


def stretching_pipeline(tiny_components, long_parts, family: str, name: str):
    """The Long-CLIP counterpart of `name` with the stretch strategy, on modules of its own (offload hooks them)."""
    stock = getattr(diffusers, FAMILIES[family].stock_pipeline).from_pretrained(tiny_components / family)
    text_encoder, tokenizer = long_parts(family)
    variant = getattr(diffusers, name).from_pipe(stock)
    return with_long_prompts(variant, text_encoder=text_encoder, tokenizer=tokenizer, long_prompt_strategy="stretch")


@pytest.fixture
def pre_forwards(monkeypatch):
    """Every (hook, module) accelerate's `CpuOffload.pre_forward` runs on (the real one runs too)."""
    calls = []
    real = CpuOffload.pre_forward

    def spy(hook, module, *args, **kwargs):
        calls.append((hook, module))
        return real(hook, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", spy)
    return calls


@pytest.mark.parametrize(("family", "name", "call"), CASES, ids=[name for _, name, _ in CASES])
def test_stretch_under_model_cpu_offload_encodes_and_generates_as_without(
    tiny_components, long_parts, pre_forwards, family, name, call
):
    pipe = stretching_pipeline(tiny_components, long_parts, family, name)
    prompt = HEAD + MIDDLE + TAIL_A  # 200 tokens: bigG, 77 positions, is stretched to 248
    with torch.no_grad():
        expected = pipe.encode_prompt(prompt=prompt, device="cpu", **CFG_ENCODE_KWARGS)
    expected_image = generate(pipe, prompt, **call)

    pipe.enable_model_cpu_offload(device="cpu")  # the mocked accelerator (see the module docstring)
    assert pipe._execution_device != torch.device("cpu")  # the hooks' device ("cpu:0"): they move every model
    with torch.no_grad():
        offloaded = pipe.encode_prompt(prompt=prompt, device=pipe._execution_device, **CFG_ENCODE_KWARGS)
    assert len(offloaded) == len(expected)
    assert all(torch.equal(e, o) for e, o in zip(expected, offloaded, strict=True))

    # the stretched copy of bigG ran under bigG's own hook (which puts it on the execution device and offloads the
    # model before it), and only the pipeline's own hooks ran: a copied hook would offload a copy of CLIP-L
    big_g = pipe.text_encoder_2
    ran = [module for hook, module in pre_forwards if hook is big_g._hf_hook]  # positive and negative prompts
    assert len(ran) == 2 and ran[0] is ran[1] is not big_g and ran[0].config.max_position_embeddings == 248
    own_hooks = {user_hook.hook for user_hook in pipe._all_hooks}
    assert all(hook in own_hooks for hook, _ in pre_forwards)
    assert big_g.config.max_position_embeddings == 77  # the pipeline's bigG is left as it was

    image = generate(pipe, prompt, **call)
    assert torch.equal(torch.from_numpy(image), torch.from_numpy(expected_image))


def test_stretch_refuses_an_encoder_under_sequential_offload():
    torch.manual_seed(0)
    big_g = cpu_offload(CLIPTextModelWithProjection(tiny_text_config()), execution_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^strategy=\"stretch\" cannot stretch a text encoder under sequential or"):
        stretched_view(big_g, 248)
