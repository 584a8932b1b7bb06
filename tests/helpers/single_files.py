"""Tiny diffusers pipelines written as single-file checkpoints, in the layout model sites share (the original
Stable Diffusion / SDXL repositories' key names), for the `from_single_file` and `longclip bake` tests.

The renames invert diffusers' own single-file conversion; `ldm_state_dict` checks each result by converting it
back with diffusers' converters and comparing every tensor.
"""

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

from longclip_diffusers.layouts import canonical_to_openai, hf_to_canonical

RESNET_RENAMES = {  # diffusers -> original, inside a UNet resnet
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
VAE_ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        key = key.replace(f".{old}.", f".{new}.")
    return key


def ldm_unet(unet) -> dict[str, torch.Tensor]:
    per_block = unet.config.layers_per_block + 1  # input blocks per down block: resnets (+ attentions), downsampler
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            block, kind, index = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            side = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
            first = 1 + block * per_block if side == "input_blocks" else block * per_block
            if kind == "resnets":
                new = _rename(f"{side}.{first + index}.0.{rest}", RESNET_RENAMES)
            elif kind == "attentions":
                new = f"{side}.{first + index}.1.{rest}"
            elif side == "input_blocks":  # downsamplers.0.conv
                new = f"input_blocks.{first + per_block - 1}.0.op.{rest.removeprefix('conv.')}"
            else:  # upsamplers.0.conv, after the resnet (and the attention, if the block has them)
                slot = 2 if unet.up_blocks[block].attentions else 1
                new = f"output_blocks.{first + per_block - 1}.{slot}.{rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = _rename(f"middle_block.{2 * index}.{rest}", RESNET_RENAMES)
            else:
                new = f"middle_block.1.{rest}"
        else:
            prefix, name = key.rsplit(".", 1)
            new = f"{UNET_TOP[prefix]}.{name}"
        out[new] = value
    return out


def ldm_vae(vae) -> dict[str, torch.Tensor]:
    count = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side, rest = parts[0], ".".join(parts[2:])
        if parts[1] == "down_blocks":
            block, rest = parts[2], ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.").replace("downsamplers.0.", "downsample.")
            new = f"{side}.down.{block}.{rest}"
        elif parts[1] == "up_blocks":
            block, rest = count - 1 - int(parts[2]), ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.").replace("upsamplers.0.", "upsample.")
            new = f"{side}.up.{block}.{rest}"
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            new = f"{side}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        elif parts[1] == "mid_block":  # attentions.0: 1x1 convolutions in the original
            new = _rename(f"{side}.mid.attn_1.{'.'.join(parts[4:])}", VAE_ATTENTION_RENAMES)
            value = value[:, :, None, None] if value.ndim == 2 else value
        else:
            new = key.replace("conv_norm_out", "norm_out")
        out[new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in tensors.items()}


def hf_text(text_encoder) -> dict[str, torch.Tensor]:
    """`text_model.*` keys (transformers 4.x names), as single files hold CLIP-L."""
    return {k: v for k, v in hf_to_canonical(text_encoder.state_dict()).items() if not k.endswith("position_ids")}


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """`pipe` (SD 1.x or SDXL) in the single-file layout, checked against diffusers' conversion back."""
    unet, vae = ldm_unet(pipe.unet), ldm_vae(pipe.vae)
    check(convert_ldm_unet_checkpoint(_prefixed("model.diffusion_model.", unet), pipe.unet.config), pipe.unet)
    check(convert_ldm_vae_checkpoint(_prefixed("first_stage_model.", vae), pipe.vae.config), pipe.vae)
    out = _prefixed("model.diffusion_model.", unet) | _prefixed("first_stage_model.", vae)
    if getattr(pipe, "text_encoder_2", None) is None:
        return out | _prefixed("cond_stage_model.transformer.", hf_text(pipe.text_encoder))
    big_g = canonical_to_openai(hf_text(pipe.text_encoder_2))  # OpenCLIP layout, as SDXL files hold bigG
    return (
        out
        | _prefixed("conditioner.embedders.0.transformer.", hf_text(pipe.text_encoder))
        | _prefixed("conditioner.embedders.1.model.", big_g)
    )


def check(converted: dict[str, torch.Tensor], model) -> None:
    expected = model.state_dict()
    assert converted.keys() == expected.keys(), sorted(converted.keys() ^ expected.keys())[:5]
    assert all(torch.equal(converted[key].reshape(value.shape), value) for key, value in expected.items())
