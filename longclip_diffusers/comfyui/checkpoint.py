"""Single-file checkpoints whose CLIP is a Long-CLIP (248 positions), loaded as ComfyUI's own checkpoint loader does.

ComfyUI core builds a checkpoint's CLIP at the 77 positions of its stock config and fails on a Long-CLIP baked
into the file (248 vs 77). Here ComfyUI loads the diffusion model and the VAE as usual; the CLIP is then built by
ComfyUI's own classes for that model, told the position count of each baked encoder, as ComfyUI's CLIPLoader
does for a Long-CLIP file (comfy/text_encoders/long_clipl.py). Runs only inside ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

from . import host

_POSITION_TABLE = "text_model.embeddings.position_embedding.weight"


def load_long_clip_checkpoint(path: Path) -> tuple[object, object, object]:
    """MODEL, CLIP and VAE of the single-file checkpoint at `path`, as ComfyUI's CheckpointLoaderSimple returns them,
    with each text encoder at the position count its weights have."""
    comfy_sd, comfy_utils = host.require_comfy_module("comfy.sd"), host.require_comfy_module("comfy.utils")
    embeddings = host.require_comfy_module("folder_paths").get_folder_paths("embeddings")
    state_dict, metadata = comfy_utils.load_torch_file(str(path), return_metadata=True)
    loaded = comfy_sd.load_state_dict_guess_config(
        state_dict, output_clip=False, embedding_directory=embeddings, metadata=metadata
    )
    if loaded is None or loaded[0] is None:
        raise ValueError(f"{path.name}: ComfyUI does not recognise the diffusion model in this file.")
    model, _, vae, _ = loaded
    model_config = model.model.model_config
    clip_target = model_config.clip_target(state_dict=state_dict)
    clip_state_dict = model_config.process_clip_state_dict(state_dict)
    if clip_target is None or not clip_state_dict:
        raise ValueError(
            f"{path.name}: holds no text encoder; load it with ComfyUI's Load Checkpoint and the text encoder with "
            "Load Long-CLIP."
        )
    tokenizer_data, model_options = dict(clip_state_dict), {}
    for key, table in clip_state_dict.items():
        if key.endswith(_POSITION_TABLE):
            name = key.split(".")[0]  # clip_l, clip_g
            tokenizer_data[f"{name}_max_length"] = table.shape[0]
            model_options[f"{name}_model_config"] = {"max_position_embeddings": table.shape[0]}
    clip = comfy_sd.CLIP(
        clip_target,
        embedding_directory=embeddings,
        tokenizer_data=tokenizer_data,
        parameters=comfy_utils.calculate_parameters(clip_state_dict),
        model_options=model_options,
    )
    missing, _ = clip.load_sd(clip_state_dict, full_model=True)
    missing = [key for key in missing if ".logit_scale" not in key and "text_projection" not in key]
    if missing:
        raise ValueError(f"{path.name}: its text encoders miss {len(missing)} weights, e.g. {missing[0]}.")
    return model, clip, vae
