"""LoRA and textual inversion on Long-CLIP encoders, through the pipelines' own diffusers loaders (peft backend).

LoRA files are built here with the key names the tools write: kohya / A1111 (`lora_te_`, SDXL's `lora_te1_` /
`lora_te2_`, with `alpha`) and diffusers / peft (`text_encoder.….lora_A.weight`). The reference for each is the
same pipeline class given an encoder whose weights have the LoRA delta merged by hand,
`W + scale * alpha / rank * up @ down`. peft comes with the `lora` extra (in `all`).
"""

import copy

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from helpers.pipelines import HEAD, TAIL_A, generate
from safetensors.torch import save_file

from longclip_diffusers.pipelines import (
    LongCLIPFluxPipeline,
    LongCLIPStableDiffusion3Pipeline,
    LongCLIPStableDiffusionPipeline,
    LongCLIPStableDiffusionXLPipeline,
)

PROMPT = HEAD + TAIL_A  # past 77 tokens: the LoRA must reach every window position
RANK = 4
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
FAMILIES = {  # stock class, our class, the denoiser, the call argument carrying the LoRA scale
    "sd15": (StableDiffusionPipeline, LongCLIPStableDiffusionPipeline, "unet", "cross_attention_kwargs"),
    "sdxl": (StableDiffusionXLPipeline, LongCLIPStableDiffusionXLPipeline, "unet", "cross_attention_kwargs"),
    "sd3": (StableDiffusion3Pipeline, LongCLIPStableDiffusion3Pipeline, "transformer", "joint_attention_kwargs"),
    "flux": (FluxPipeline, LongCLIPFluxPipeline, "transformer", "joint_attention_kwargs"),
}


@pytest.fixture(scope="module")
def stocks(tiny_components):
    return {name: stock.from_pretrained(tiny_components / name) for name, (stock, *_) in FAMILIES.items()}


def long_pipeline(stocks, long_parts, family: str, **components):
    """Our pipeline with a fresh Long-CLIP-L and fresh copies of the other CLIP encoders (a LoRA changes its
    encoder in place; the module's stock pipelines stay untouched)."""
    stock = stocks[family]
    text_encoder, tokenizer = long_parts(family)
    if getattr(stock, "text_encoder_2", None) is not None and "text_encoder_2" not in components:
        components["text_encoder_2"] = copy.deepcopy(stock.text_encoder_2)
    return FAMILIES[family][1].from_pipe(stock, text_encoder=text_encoder, tokenizer=tokenizer, **components)


def lora_deltas(encoder, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (down [rank, in], up [out, rank]) for every attention and MLP projection, by module path
    (transformers 4.x names: `text_model.encoder.layers.0.self_attn.q_proj`)."""
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for layer in range(encoder.config.num_hidden_layers):
        for target in TARGETS:
            path = f"text_model.encoder.layers.{layer}.{target}"
            linear = module(encoder, path)
            down = 0.3 * torch.randn(RANK, linear.in_features, generator=generator)
            up = 0.3 * torch.randn(linear.out_features, RANK, generator=generator)
            deltas[path] = down, up
    return deltas


def module(encoder, path: str):
    """A submodule by its transformers 4.x path, also in 5.x's flattened `CLIPTextModel`."""
    return encoder.get_submodule(path if hasattr(encoder, "text_model") else path.removeprefix("text_model."))


def kohya_keys(deltas, prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """kohya-ss / A1111 names: `lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`."""
    out = {}
    for path, (down, up) in deltas.items():
        name = f"{prefix}_{path.replace('.', '_')}"
        out |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(alpha)}
    return out


def peft_keys(deltas, component: str) -> dict[str, torch.Tensor]:
    """diffusers / peft names: `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`."""
    out = {}
    for path, (down, up) in deltas.items():
        out |= {f"{component}.{path}.lora_A.weight": down, f"{component}.{path}.lora_B.weight": up}
    return out


def merged(encoder, deltas, factor: float):
    """A copy of `encoder` with `factor * up @ down` added to each projection's weight."""
    encoder = copy.deepcopy(encoder)
    with torch.no_grad():
        for path, (down, up) in deltas.items():
            module(encoder, path).weight += factor * up @ down
    return encoder


def merged_pipeline(pipe, originals, deltas, factor: float):
    """The reference: `pipe`'s class with each LoRA'd encoder replaced by its original, the delta merged by hand."""
    return type(pipe).from_pipe(pipe, **{name: merged(originals[name], deltas[name], factor) for name in deltas})


@torch.no_grad()
def encode(pipe, **kwargs):
    """Every conditioning tensor of `encode_prompt` for PROMPT (negatives too, where the family has them)."""
    if isinstance(pipe, FluxPipeline):
        return pipe.encode_prompt(PROMPT, None, device="cpu", **kwargs)[:2]
    if isinstance(pipe, StableDiffusionPipeline):
        return pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt="blurry", **kwargs)
    if isinstance(pipe, StableDiffusion3Pipeline):
        return pipe.encode_prompt(PROMPT, None, None, device="cpu", negative_prompt="blurry", **kwargs)
    return pipe.encode_prompt(PROMPT, device="cpu", negative_prompt="blurry", **kwargs)


def assert_close(actual, expected, atol=2e-5):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and torch.allclose(a, e, atol=atol, rtol=0), (a - e).abs().max()


def lora_file(tmp_path, tensors) -> str:
    path = tmp_path / "lora.safetensors"
    save_file({key: value.contiguous() for key, value in tensors.items()}, path)
    return str(path)


# (family, key style, encoders the LoRA holds: (pipeline attribute, kohya prefix, diffusers component))
CASES = [
    ("sd15", "kohya", [("text_encoder", "lora_te", "text_encoder")]),
    ("sd15", "diffusers", [("text_encoder", "lora_te", "text_encoder")]),
    ("sdxl", "kohya", [("text_encoder", "lora_te1", "text_encoder"), ("text_encoder_2", "lora_te2", "text_encoder_2")]),
    ("sdxl", "diffusers", [("text_encoder", "", "text_encoder"), ("text_encoder_2", "", "text_encoder_2")]),
    ("sd3", "diffusers", [("text_encoder", "", "text_encoder"), ("text_encoder_2", "", "text_encoder_2")]),
    ("flux", "diffusers", [("text_encoder", "", "text_encoder")]),
]


@pytest.mark.parametrize(("family", "style", "encoders"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_text_encoder_lora_changes_the_conditioning_by_its_delta_scaled(
    stocks, long_parts, tmp_path, family, style, encoders
):
    pipe = long_pipeline(stocks, long_parts, family)
    before = encode(pipe)
    alpha = RANK / 2  # kohya files carry alpha: the delta is scaled by alpha / rank
    factor = alpha / RANK if style == "kohya" else 1.0
    deltas, tensors = {}, {}
    for seed, (attribute, prefix, component) in enumerate(encoders):
        deltas[attribute] = lora_deltas(getattr(pipe, attribute), seed)
        if style == "kohya":
            tensors |= kohya_keys(deltas[attribute], prefix, alpha)
        else:
            tensors |= peft_keys(deltas[attribute], component)
    originals = {attribute: copy.deepcopy(getattr(pipe, attribute)) for attribute in deltas}

    pipe.load_lora_weights(lora_file(tmp_path, tensors), adapter_name="style")
    assert pipe.get_list_adapters() == {attribute: ["style"] for attribute in deltas}
    for scale in (1.0, 0.5):
        expected = encode(merged_pipeline(pipe, originals, deltas, scale * factor))
        actual = encode(pipe, lora_scale=scale) if scale != 1.0 else encode(pipe)
        assert_close(actual, expected)
        changed = 1 if family == "flux" else 0  # Flux reads CLIP-L's pooled vector only
        assert not torch.allclose(actual[changed], before[changed], atol=1e-3)
    assert encode(pipe)[0].shape[1] >= 248 or family == "flux"  # Long-CLIP windows, not 77 tokens

    # the scale the pipeline call takes (cross_attention_kwargs / joint_attention_kwargs) reaches the denoiser
    _, _, denoiser_name, scale_argument = FAMILIES[family]
    denoiser = getattr(pipe, denoiser_name)
    received = []
    original_forward = denoiser.forward

    def spy(*args, **kwargs):
        received.append({k: v for k, v in kwargs.items() if k in ("encoder_hidden_states", "pooled_projections")})
        return original_forward(*args, **kwargs)

    denoiser.forward = spy
    try:
        negative = {} if family == "flux" else {"negative_prompt": "blurry"}
        generate(pipe, PROMPT, **negative, **{scale_argument: {"scale": 0.5}})
    finally:
        del denoiser.forward
    expected = encode(merged_pipeline(pipe, originals, deltas, 0.5 * factor))
    if family == "flux":  # T5 carries the sequence; CLIP-L gives the pooled vector
        assert torch.allclose(received[0]["pooled_projections"], expected[1], atol=2e-5)
    else:  # the prompt's half of the classifier-free guidance batch (negative first)
        states = received[0]["encoder_hidden_states"]
        assert torch.allclose(states[1:], expected[0], atol=2e-5) and torch.allclose(states[:1], expected[1], atol=2e-5)

    pipe.unload_lora_weights()
    assert all(torch.equal(a, b) for a, b in zip(encode(pipe), before, strict=True))


def token_at(tokenizer, prompt: str, token: str) -> int:
    return tokenizer(prompt).input_ids.index(tokenizer.convert_tokens_to_ids(token))


# 179 words of one token each, so the next word is token 180 (the start token is token 0)
FILLER = " ".join(["lighthouse", "harbour", "boat", "rocks", "sea", "cliff", "gull", "dusk"] * 22 + ["moss"] * 3)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_textual_inversion_token_at_position_180_reaches_the_conditioning_weighted(
    stocks, long_parts, tmp_path, family
):
    pipe = long_pipeline(stocks, long_parts, family)
    pairs = [(pipe.text_encoder, pipe.tokenizer)]
    if family == "sdxl":
        pairs.append((pipe.text_encoder_2, pipe.tokenizer_2))

    def load(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for text_encoder, tokenizer in pairs:  # two vectors: `<style>` becomes `<style> <style>_1`
            pipe.unload_textual_inversion(tokenizer=tokenizer, text_encoder=text_encoder)
            vectors = torch.randn(2, text_encoder.config.hidden_size, generator=generator)
            pipe.load_textual_inversion(vectors, token="<style>", text_encoder=text_encoder, tokenizer=tokenizer)

    load(seed=1)
    prompt = f"{FILLER} <style> at dusk"
    assert token_at(pipe.tokenizer, pipe.maybe_convert_prompt(prompt, pipe.tokenizer), "<style>") == 180
    first = encode_text(pipe, prompt)
    load(seed=2)
    second = encode_text(pipe, prompt)
    assert first.shape[1] == 248
    assert torch.equal(first[:, :180], second[:, :180])  # causal attention: nothing before the token moves
    assert not torch.allclose(first[:, 180:182], second[:, 180:182])  # both vectors reach the conditioning

    weighted = encode_text(pipe, f"{FILLER} (<style>:1.3) at dusk")
    weights = torch.ones(248)
    weights[180:182] = 1.3  # the weight covers both vectors of the token
    scaled = second * weights[:, None]
    if family == "sdxl":  # the mean is restored per encoder, on its own half of the features
        halves = [slice(0, 32), slice(32, 64)]
        expected = torch.cat([scaled[..., h] * (second[..., h].mean() / scaled[..., h].mean()) for h in halves], -1)
    else:
        expected = scaled * (second.mean() / scaled.mean())  # A1111 emphasis: scale the states, restore the mean
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert torch.equal(encode_text(pipe, f"{FILLER} (<style>:1.0) at dusk"), second)


@torch.no_grad()
def encode_text(pipe, prompt: str) -> torch.Tensor:
    if isinstance(pipe, StableDiffusionXLPipeline):
        return pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)[0]
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0]
