"""The real ComfyUI engine in a process of its own, for test_real_engine.py (never imported by the test process).

`python comfy_engine.py COMFYUI_DIR BASE` imports ComfyUI (CPU, fp32 text encoders, models and custom nodes under
BASE), then answers one JSON request a line on stdin (`{"check": NAME, "args": {...}}`) with one JSON line on its
original stdout; ComfyUI's own printing goes to stderr. Each check runs ComfyUI's own code and ours side by side
and returns what it measured; the tests assert on it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import traceback
import uuid
from pathlib import Path

COMFYUI_DIR, BASE = sys.argv[1], Path(sys.argv[2])
_protocol = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.path.insert(0, COMFYUI_DIR)
sys.argv = ["main.py", "--cpu", "--fp32-text-enc", "--base-directory", str(BASE)]

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import comfy.cli_args  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import execution  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402

PACKAGE = "longclip_diffusers_nodes"


class _Server:
    """What PromptExecutor reports to (the HTTP server in ComfyUI's main.py): nothing to send to here."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass


def _node(name: str):
    return nodes.NODE_CLASS_MAPPINGS[name]()


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")


def load_package() -> dict:
    ok = asyncio.run(nodes.load_custom_node(str(BASE / "custom_nodes" / PACKAGE)))
    ours = sorted(name for name in nodes.NODE_CLASS_MAPPINGS if name.startswith("LongCLIP"))
    return {"loaded": ok, "nodes": ours, "display": {name: nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name) for name in ours}}


def validate(workflow: dict) -> dict:
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), workflow, None))
    return {"valid": valid, "error": error, "outputs": outputs, "node_errors": node_errors}


def run(workflow: dict, sampler_inputs: bool = False) -> dict:
    """Execute `workflow` in ComfyUI's PromptExecutor; `sampler_inputs`: also what its KSampler got (see
    `_sampler_inputs`)."""
    executor = execution.PromptExecutor(_Server())
    executor.execute(workflow, str(uuid.uuid4()), {}, list(workflow))
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    images = sorted(str(path.relative_to(BASE)) for path in (BASE / "output").rglob("*.png"))
    result = {
        "success": executor.success,
        "errors": [str(error.get("exception_message")) for error in errors],
        "images": images,
    }
    if sampler_inputs and executor.success:
        result |= _sampler_inputs(executor, workflow)
    return result


def _sampler_inputs(executor: execution.PromptExecutor, workflow: dict) -> dict:
    """The model and positive conditioning the workflow's KSampler got (from the executor's output cache): the
    model class ComfyUI's detection chose and the model's reading of the conditioning (context, pooled vector)."""
    inputs = next(node["inputs"] for node in workflow.values() if node["class_type"] == "KSampler")

    def output(link: list) -> object:
        node_id, slot = link
        return executor.caches.outputs.get(node_id)[slot][0]

    model = output(inputs["model"])
    ((context, extra),) = output(inputs["positive"])
    return {
        "model_config": type(model.model.model_config).__name__,
        "model": type(model.model).__name__,
        "context": list(context.shape),
        "adm": list(model.model.encode_adm(**extra).shape),
    }


def _core_clip(name: str, clip_type: str = "stable_diffusion"):
    """A CLIP from core's CLIPLoader (a fresh one: some checks set options on its encoders)."""
    (clip,) = _node("CLIPLoader").load_clip(name, type=clip_type)
    return clip


@functools.cache
def _shared_core_clip(name: str):
    return _core_clip(name)


@functools.cache
def _our_clip(name: str, clip_type: str = "clip_l"):
    (long_clip,) = _node("LongCLIPLoader").load(name, clip_type)
    return long_clip


def parity_sd(encoder: str, prompt: str, **options) -> dict:
    """Core's CLIPLoader + CLIPTextEncode and our loader + SD 1.5 encode node on the same file."""
    ((core_cond, _),) = _node("CLIPTextEncode").encode(_shared_core_clip(encoder), prompt)[0]
    ((cond, _),) = _node("LongCLIPTextEncode").encode(_our_clip(encoder), prompt, **options)[0]
    return {
        "core_shape": list(core_cond.shape),
        "shape": list(cond.shape),
        "cond": _max_difference(cond, core_cond),
    }


@functools.cache
def _core_sdxl_clip_l(encoder: str):
    """Core's CLIP-L built as comfy/sdxl_clip.py builds SDXL's clip_l (penultimate layer, no final norm)."""
    import comfy.sd1_clip

    core = _core_clip(encoder)
    core.cond_stage_model.clip_l.layer, core.cond_stage_model.clip_l.layer_idx = "hidden", -2
    core.cond_stage_model.clip_l.layer_norm_hidden_state = False  # SDXLClipModel's clip_l
    core.cond_stage_model.clip_l.options_default = ("hidden", -2, True)
    assert isinstance(core.cond_stage_model.clip_l, comfy.sd1_clip.SDClipModel)
    return core


def parity_sdxl_clip_l(encoder: str, clip_g: str, prompt: str, **options) -> dict:
    """Core's SDXL clip_l (its penultimate layer without the final norm, as comfy/sdxl_clip.py builds it) and the
    clip_l part of our SDXL node's conditioning."""
    core = _core_sdxl_clip_l(encoder)
    core_cond, _ = core.encode_from_tokens(core.tokenize(prompt), return_pooled=True)
    sizes = dict(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    ((cond, _),) = _node("LongCLIPTextEncodeSDXL").encode(
        _our_clip(encoder), _our_clip(clip_g, "clip_g"), text=prompt, **sizes, **options
    )[0]
    width = core_cond.shape[-1]
    return {"core_shape": list(core_cond.shape), "cond": _max_difference(cond[..., :width], core_cond)}


def t5_in_place(encoder: str, t5_file: str, prompt: str) -> dict:
    """Our Flux node on the T5 of a CLIP that ComfyUI loaded, read in place; against a transformers T5EncoderModel
    of the same file (what the nodes copied into before) and core's pooled Long-CLIP-L vector."""
    from safetensors.torch import load_file
    from transformers import T5Config, T5EncoderModel

    from longclip_diffusers.comfyui.t5 import t5_config

    t5_clip = _core_clip(t5_file, "stable_audio")
    clip_tensors = {id(tensor) for tensor in t5_clip.cond_stage_model.parameters()}
    (t5,) = _node("LongCLIPT5FromCLIP").take(t5_clip)
    shared = all(id(tensor) in clip_tensors for tensor in t5.text_encoder.parameters())
    ((cond, extra),) = _node("LongCLIPTextEncodeFlux").encode(
        _our_clip(encoder), t5, prompt, 3.5, max_sequence_length=128
    )[0]

    weights = {
        key: value.float() for key, value in load_file(folder_paths.get_full_path("text_encoders", t5_file)).items()
    }
    reference = T5EncoderModel(T5Config(**{**t5_config(weights).to_dict(), "feed_forward_proj": "relu"}))
    reference.load_state_dict({**weights, "encoder.embed_tokens.weight": weights["shared.weight"]}, strict=False)
    ids = t5.tokenizer(prompt, padding="max_length", max_length=128, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = reference.eval()(ids)[0]

    return {
        "shared": shared,
        "parameters": sum(tensor.numel() for tensor in t5.text_encoder.parameters()),
        "t5": _max_difference(cond, expected) / float(expected.abs().max()),
        "pooled": _max_difference(extra["pooled_output"], _core_flux_pooled(encoder, prompt)),
        "guidance": extra["guidance"],
    }


@functools.cache
def _core_flux_clip_l(encoder: str):
    """Core's CLIP-L built as comfy/text_encoders/flux.py builds Flux's clip_l (unprojected pooled vector)."""
    core = _core_clip(encoder)
    core.cond_stage_model.clip_l.return_projected_pooled = False
    core.cond_stage_model.clip_l.options_default = ("last", None, False)
    return core


def _core_flux_pooled(encoder: str, prompt: str) -> torch.Tensor:
    core = _core_flux_clip_l(encoder)
    _, core_pooled = core.encode_from_tokens(core.tokenize(prompt), return_pooled=True)
    return core_pooled


def _core_t5_clip(t5_file: str, fp8: bool):
    """Core's CLIPLoader on a T5-base file (type stable_audio), its T5 read as Flux's T5XXLModel and tokenizer read
    theirs (comfy/text_encoders/sd3_clip.py, flux.py): no attention mask, padding states kept, at least 256 tokens.
    `fp8`: loaded as `--fp8_e4m3fn-text-enc` loads it (the option set for this one load): weights held in
    float8_e4m3fn, cast per layer by comfy.ops.manual_cast."""
    args = comfy.cli_args.args
    args.fp8_e4m3fn_text_enc = fp8
    try:
        clip = _core_clip(t5_file, "stable_audio")
    finally:
        args.fp8_e4m3fn_text_enc = False
    t5 = clip.cond_stage_model.t5base
    t5.enable_attention_masks = t5.zero_out_masked = False
    clip.set_tokenizer_option("t5base_min_length", 256)
    return clip


def flux_parity(encoder: str, t5_file: str, prompt: str, fp8: bool = False) -> dict:
    """Our Flux node, weight_style comfyui and the default, on the T5 of a core CLIP read in place; against core's
    encode of the same CLIP (T5's states) and core's Flux clip_l (pooled vector)."""
    t5_clip = _core_t5_clip(t5_file, fp8)
    clip_tensors = {id(tensor) for tensor in t5_clip.cond_stage_model.parameters()}
    (t5,) = _node("LongCLIPT5FromCLIP").take(t5_clip)
    parameters = list(t5.text_encoder.parameters())
    core_cond = t5_clip.encode_from_tokens(t5_clip.tokenize(prompt))
    encode = functools.partial(
        _node("LongCLIPTextEncodeFlux").encode, _our_clip(encoder), t5, prompt, 3.5, max_sequence_length=256
    )
    ((cond, extra),) = encode(weight_style="comfyui")[0]
    ((default_cond, _),) = encode()[0]
    return {
        "shared": all(id(tensor) in clip_tensors for tensor in parameters),
        "matrix_dtypes": sorted({str(tensor.dtype) for tensor in parameters if tensor.dim() == 2}),
        "bytes": sum(tensor.numel() * tensor.element_size() for tensor in parameters),
        "core_shape": list(core_cond.shape),
        "shape": list(cond.shape),
        "t5": _max_difference(cond, core_cond),
        "default_t5": _max_difference(default_cond, core_cond),
        "pooled": _max_difference(extra["pooled_output"], _core_flux_pooled(encoder, prompt)),
    }


def long_clip_checkpoint(checkpoint: str, encoder: str, prompt: str) -> dict:
    """Core's Load Checkpoint on a checkpoint with a Long-CLIP-L baked in, and ours; our CLIP's conditioning
    against core's CLIPLoader on the text encoder file that was baked in."""
    try:
        _node("CheckpointLoaderSimple").load_checkpoint(checkpoint)
        core_error = None
    except Exception as error:  # what a user sees from ComfyUI core
        core_error = next(
            (line.strip() for line in str(error).splitlines() if "position_embedding" in line), str(error)
        )
    model, clip, vae = _node("LongCLIPCheckpointLoader").load(checkpoint)
    ((cond, _),) = _node("CLIPTextEncode").encode(clip, prompt)[0]
    ((expected, _),) = _node("CLIPTextEncode").encode(_shared_core_clip(encoder), prompt)[0]
    return {
        "core_error": core_error,
        "types": [type(model).__name__, type(clip).__name__, type(vae).__name__],
        "cond": _max_difference(cond, expected),
    }


CHECKS = {
    check.__name__: check
    for check in (
        load_package,
        validate,
        run,
        parity_sd,
        parity_sdxl_clip_l,
        t5_in_place,
        flux_parity,
        long_clip_checkpoint,
    )
}


def main() -> None:
    asyncio.run(nodes.init_builtin_extra_nodes())  # comfy_extras: EmptySD3LatentImage, ConditioningZeroOut, ...
    _protocol.write(json.dumps({"ready": True, "device": str(comfy.model_management.get_torch_device())}) + "\n")
    _protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = CHECKS[request["check"]](**request.get("args", {}))
        except Exception:
            result = {"exception": traceback.format_exc()}
        _protocol.write(json.dumps(result, default=str) + "\n")
        _protocol.flush()


if __name__ == "__main__":
    main()
