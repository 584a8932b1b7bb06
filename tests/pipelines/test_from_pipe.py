"""`from_pipe` from a pipeline whose models a Long-CLIP class cannot take: AnimateDiff's motion UNet, which diffusers
makes from a UNet2DConditionModel and has no conversion back from."""

import diffusers
import pytest

from longclip_diffusers.pipelines import LongCLIPStableDiffusionPipeline, with_long_prompts


@pytest.fixture(scope="module")
def animatediff(stock_pipeline):
    stock = stock_pipeline("sd15")
    unet = stock.unet.config
    adapter = diffusers.MotionAdapter(
        block_out_channels=unet.block_out_channels,
        motion_layers_per_block=unet.layers_per_block,
        motion_norm_num_groups=unet.norm_num_groups,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    return diffusers.AnimateDiffPipeline.from_pipe(stock, motion_adapter=adapter)


def test_from_pipe_of_animatediff_names_what_was_wrong_and_what_to_do(animatediff):
    # stock diffusers fails as well, less clearly
    with pytest.raises(ValueError, match="expected .* but only .* were passed"):
        diffusers.StableDiffusionPipeline.from_pipe(animatediff)
    message = (
        r"^LongCLIPStableDiffusionPipeline\.from_pipe cannot take AnimateDiffPipeline's unet: it is a UNetMotionModel "
        r"and LongCLIPStableDiffusionPipeline needs a UNet2DConditionModel \(diffusers converts none back\); for long "
        r"prompts in this AnimateDiffPipeline use LongCLIPAnimateDiffPipeline \(with_long_prompts\(pipe\) gives it\)\.$"
    )
    with pytest.raises(ValueError, match=message):
        LongCLIPStableDiffusionPipeline.from_pipe(animatediff)


def test_the_class_the_error_names_takes_the_pipeline(animatediff):
    counterpart = with_long_prompts(animatediff)
    assert type(counterpart).__name__ == "LongCLIPAnimateDiffPipeline"
    assert counterpart.unet is animatediff.unet and counterpart.motion_adapter is animatediff.motion_adapter


def test_a_model_given_in_place_of_the_one_that_does_not_fit_is_taken(animatediff, stock_pipeline):
    unet = stock_pipeline("sd15").unet  # safety_checker: AnimateDiff has none, and diffusers needs it named
    text_to_image = LongCLIPStableDiffusionPipeline.from_pipe(animatediff, unet=unet, safety_checker=None)
    assert text_to_image.unet is unet and text_to_image.text_encoder is animatediff.text_encoder
