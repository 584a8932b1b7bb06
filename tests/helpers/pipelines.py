"""Long prompts and a generation helper shared by the pipeline tests."""

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

HEAD = (
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, "
    "a warm yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden "
    "staircase winding down to a small pier where fishermen mend their nets. Beyond the harbour"
)
TAIL_A = " a red fishing boat with patched sails rocks gently at anchor."
TAIL_B = " a white steamship with tall funnels waits at the quay."
PAST_248 = " Far away, " + "a village of white houses with blue doors, " * 22  # pushes the prompt past 248
# HEAD + MIDDLE + TAIL_A: the tail starts past CLIP token 185 and ends before 246 (within one Long-CLIP window)
MIDDLE = (
    " a crowded quay with stacks of lobster pots, coils of rope, barrels of salted herring and a rusty anchor, where "
    "an old dog sleeps beside a lantern and children chase each other between the drying nets. Further along the "
    "shore, a row of narrow houses with slate roofs and smoking chimneys faces the water, their windows glowing amber "
    "in the fading light, a small chapel with a crooked bell tower looks out over the bay, and past the last house, "
    "where the road ends in sand and the fishing boats are pulled up on the beach,"
)


def generate(pipe, prompt, **kwargs):
    import torch

    if type(pipe).__name__.endswith("FluxPipeline"):
        kwargs = {"height": 64, "width": 64, **kwargs}  # FluxPipeline's default size is not the model's
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np", **kwargs).images


# Run in a fresh interpreter: plain diffusers, nothing of ours imported, loads saved folders back.
_RELOAD = """
import json
import sys

import torch
from diffusers import DiffusionPipeline

jobs, out = json.loads(sys.argv[1]), sys.argv[2]
assert not any(name.startswith("longclip_diffusers") for name in sys.modules)
results = []
for job in jobs:
    pipe = DiffusionPipeline.from_pretrained(job["folder"], trust_remote_code=True)
    with torch.no_grad():  # as the pipeline calls it
        embeds = pipe.encode_prompt(prompt=job["prompt"], device="cpu", num_images_per_prompt=1, **job["encode"])
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    image = pipe(job["prompt"], num_inference_steps=2, generator=generator, output_type="np", **job["call"]).images
    results.append({"class": type(pipe).__module__ + "." + type(pipe).__name__, "embeds": list(embeds),
                    "image": torch.from_numpy(image), "config": dict(pipe.config)})
torch.save(results, out)
"""


CFG_ENCODE_KWARGS = {"do_classifier_free_guidance": True, "negative_prompt": "blurry"}


def reload_in_fresh_process(jobs: list[dict], tmp_path) -> list[dict]:
    """What `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` gives in one fresh interpreter, for
    each job `{"folder", "prompt", "encode": encode_prompt kwargs, "call": pipeline call kwargs}`: its class,
    `encode_prompt(prompt, **encode)`, the image of `generate(pipe, prompt, **call)` and its config."""
    import json
    import os
    import subprocess
    import sys

    import torch

    out = tmp_path / "reloaded.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    jobs = [{**job, "folder": str(job["folder"])} for job in jobs]
    command = [sys.executable, "-c", _RELOAD, json.dumps(jobs), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out, weights_only=True)
