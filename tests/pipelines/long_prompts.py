"""Long prompts and a generation helper shared by the pipeline tests."""

HEAD = (
    "A highly detailed oil painting of an old stone lighthouse standing on a rugged cliff at dusk, waves crashing "
    "against the black rocks below, seagulls circling in a sky streaked with orange, violet and deep blue clouds, "
    "a warm yellow light glowing from the lantern room, moss and lichen on the weathered walls, a narrow wooden "
    "staircase winding down to a small pier where fishermen mend their nets. Beyond the harbour"
)
TAIL_A = " a red fishing boat with patched sails rocks gently at anchor."
TAIL_B = " a white steamship with tall funnels waits at the quay."
PAST_248 = " Far away, " + "a village of white houses with blue doors, " * 22  # pushes the prompt past 248


def generate(pipe, prompt, **kwargs):
    import torch

    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np", **kwargs).images
