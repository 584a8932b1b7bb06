"""Knowledge-preserved stretching: exact tables, validation, and untouched short prompts."""

import copy

import pytest
import torch
from helpers.common import tiny_open_clip_model
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

from longclip_diffusers.prompts import stretched_view
from longclip_diffusers.stretch import (
    MAX_POSITIONS,
    max_ratio,
    stretch_model,
    stretch_position_table,
    stretch_state_dict,
    stretched_length,
)
from longclip_diffusers.tiny import tiny_text_config


def reference_table(pe: torch.Tensor) -> torch.Tensor:
    """The reference construction (keep=20, ratio=4), written row by row as the Long-CLIP authors did."""
    length, dim = pe.shape
    keep = 20
    new = torch.zeros([4 * length - 3 * keep, dim], dtype=pe.dtype)
    for i in range(keep):
        new[i] = pe[i]
    for i in range(length - 1 - keep):
        new[4 * i + keep] = pe[i + keep]
        new[4 * i + 1 + keep] = 3 * pe[i + keep] / 4 + 1 * pe[i + 1 + keep] / 4
        new[4 * i + 2 + keep] = 2 * pe[i + keep] / 4 + 2 * pe[i + 1 + keep] / 4
        new[4 * i + 3 + keep] = 1 * pe[i + keep] / 4 + 3 * pe[i + 1 + keep] / 4
    for j in range(4):
        new[4 * length - 3 * keep - 4 + j] = pe[length - 1] + j * (pe[length - 1] - pe[length - 2]) / 4
    return new


def generic_table(pe: torch.Tensor, keep: int, ratio: int) -> torch.Tensor:
    """The generalised formula of the facts sheet, one row at a time in float64."""
    pe = pe.double()
    rows = [pe[i] for i in range(keep)]
    for i in range(pe.shape[0] - keep - 1):
        rows += [((ratio - j) * pe[keep + i] + j * pe[keep + i + 1]) / ratio for j in range(ratio)]
    rows += [pe[-1] + j * (pe[-1] - pe[-2]) / ratio for j in range(ratio)]
    return torch.stack(rows)


def test_default_stretch_is_bit_identical_to_the_reference():
    pe = torch.randn(77, 768)
    stretched = stretch_position_table(pe)
    assert stretched.shape == (248, 768)
    assert torch.equal(stretched, reference_table(pe))
    assert torch.equal(stretched[:20], pe[:20])
    assert torch.equal(stretched[20::4][:57], pe[20:])  # every 4th row from 20 is an original row


@pytest.mark.parametrize(("keep", "ratio"), [(20, 4), (10, 5), (0, 2), (75, 3), (30, 1)])
def test_other_keep_and_ratio_follow_the_formula(keep, ratio):
    pe = torch.randn(77, 16)
    stretched = stretch_position_table(pe, keep, ratio)
    assert stretched.shape[0] == stretched_length(77, keep, ratio) == keep + (77 - keep) * ratio
    torch.testing.assert_close(stretched.double(), generic_table(pe, keep, ratio), atol=1e-6, rtol=0)


def test_ratio_one_is_the_identity():
    pe = torch.randn(77, 8)
    assert torch.equal(stretch_position_table(pe, keep=20, ratio=1), pe)


def test_half_precision_tables_are_computed_in_float32():
    pe = torch.randn(77, 8)
    stretched = stretch_position_table(pe.half())
    assert stretched.dtype == torch.float16
    assert torch.equal(stretched, reference_table(pe.half().float()).half())


@pytest.mark.parametrize(
    ("keep", "ratio", "message"),
    [
        (77, 4, "keep=77 is out of range"),
        (76, 4, "keep=76 is out of range"),
        (-1, 4, "keep=-1 is out of range"),
        (20, 0, "ratio=0 must be at least 1"),
        (20, 2.5, "whole numbers"),
        (True, 4, "whole numbers"),
    ],
)
def test_invalid_arguments_are_refused_with_a_clear_message(keep, ratio, message):
    with pytest.raises(ValueError, match=message):
        stretch_position_table(torch.randn(77, 8), keep, ratio)


def test_a_ratio_past_the_maximum_is_refused_before_anything_is_allocated():
    """ratio 10**12 would need a 57e12-row table (29 PB here): refused with the figures, not an allocation error."""
    table = torch.randn(77, 128)
    message = r"ratio=1000000000000 would stretch 77 positions to 57,000,000,000,020 \(a 29,184,000.0 GB table\)"
    with pytest.raises(ValueError, match=message + r"; at most 2048 are supported \(ratio 35 with keep=20\)"):
        stretch_position_table(table, 20, 10**12)
    with pytest.raises(ValueError, match="at most 2048"):
        stretched_length(77, 20, 10**12)  # callers that only ask for the length get the bound too


@pytest.mark.parametrize("keep", [0, 20, 75])
def test_the_largest_allowed_ratio_reaches_the_maximum_and_one_more_is_refused(keep):
    ratio = max_ratio(77, keep)
    table = stretch_position_table(torch.randn(77, 4), keep, ratio)
    assert table.shape[0] == stretched_length(77, keep, ratio) <= MAX_POSITIONS
    assert MAX_POSITIONS - table.shape[0] < 77 - keep  # the next ratio would pass the maximum
    with pytest.raises(ValueError, match=f"at most {MAX_POSITIONS} are supported"):
        stretch_position_table(torch.randn(77, 4), keep, ratio + 1)


def test_ratio_one_keeps_a_table_of_any_length():
    table = torch.randn(MAX_POSITIONS + 100, 4)
    assert torch.equal(stretch_position_table(table, 20, 1), table)


def test_models_and_stretched_views_get_the_bound_and_stay_untouched():
    torch.manual_seed(0)
    model = CLIPTextModel(tiny_text_config()).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="at most 2048"):
        stretch_model(model, 20, 10**12)
    with pytest.raises(ValueError, match="at most 2048"):
        stretched_view(model, 100_000)  # SDXL's strategy="stretch" for a window this long
    assert model.config.max_position_embeddings == 77
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_non_table_input_is_refused():
    with pytest.raises(ValueError, match=r"\[num_positions, dim\]"):
        stretch_position_table(torch.randn(77))


def _short_prompt_ids(length: int, total: int, pad: int = 49407) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    body = torch.randint(0, 49406, (2, length - 2), generator=generator)
    ids = torch.cat([torch.full((2, 1), 49406), body, torch.full((2, 1), 49407)], dim=1)
    return torch.cat([ids, torch.full((2, total - length), pad)], dim=1)


@pytest.mark.parametrize("model_class", [CLIPTextModel, CLIPTextModelWithProjection])
def test_stretched_hf_text_model_is_bit_identical_on_prompts_of_at_most_20_tokens(model_class):
    torch.manual_seed(0)
    model = model_class(tiny_text_config()).eval()
    stretched = stretch_model(copy.deepcopy(model))
    assert stretched.config.max_position_embeddings == 248
    for length in (2, 11, 20):
        with torch.no_grad():
            before = model(_short_prompt_ids(length, 77), output_hidden_states=True)
            after = stretched(_short_prompt_ids(length, 248), output_hidden_states=True)
        assert after.last_hidden_state.shape[1] == 248
        for hidden_before, hidden_after in zip(before.hidden_states, after.hidden_states, strict=True):
            assert torch.equal(hidden_before[:, :20], hidden_after[:, :20])
        pooled = "text_embeds" if model_class is CLIPTextModelWithProjection else "pooler_output"
        assert torch.equal(getattr(before, pooled), getattr(after, pooled))


def test_a_21st_token_is_where_stretching_starts_to_matter():
    torch.manual_seed(0)
    model = CLIPTextModel(tiny_text_config()).eval()
    stretched = stretch_model(copy.deepcopy(model))
    with torch.no_grad():
        before = model(_short_prompt_ids(30, 77)).last_hidden_state
        after = stretched(_short_prompt_ids(30, 248)).last_hidden_state
    assert torch.equal(before[:, :20], after[:, :20])
    assert not torch.allclose(before[:, 21:30], after[:, 21:30])


def test_stretched_clip_model_updates_config_and_keeps_short_text_features():
    from transformers import CLIPConfig

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=tiny_text_config().to_dict(),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    stretched = stretch_model(copy.deepcopy(model))
    assert stretched.config.text_config.max_position_embeddings == 248
    with torch.no_grad():
        before = model.text_model(_short_prompt_ids(15, 77)).pooler_output
        after = stretched.text_model(_short_prompt_ids(15, 248)).pooler_output
    assert torch.equal(before, after)


def test_stretched_open_clip_model_keeps_short_text_features_and_grows_its_mask():
    model = tiny_open_clip_model()
    stretched = stretch_model(copy.deepcopy(model))
    assert stretched.positional_embedding.shape[0] == 248
    assert stretched.attn_mask.shape == (248, 248)
    assert stretched.context_length == 248
    with torch.no_grad():
        before = model.encode_text(_short_prompt_ids(20, 77, pad=0))
        after = stretched.encode_text(_short_prompt_ids(20, 248, pad=0))
    assert torch.equal(before, after)


def test_state_dict_stretching_understands_both_layouts():
    pe = torch.randn(77, 8)
    openai = stretch_state_dict({"positional_embedding": pe.clone(), "token_embedding.weight": torch.zeros(3)})
    hf = stretch_state_dict(
        {
            "text_model.embeddings.position_embedding.weight": pe.clone(),
            "vision_model.embeddings.position_embedding.weight": torch.randn(5, 8),
        }
    )
    assert torch.equal(openai["positional_embedding"], reference_table(pe))
    assert torch.equal(hf["text_model.embeddings.position_embedding.weight"], reference_table(pe))
    assert hf["vision_model.embeddings.position_embedding.weight"].shape == (5, 8)


def test_a_published_long_clip_state_dict_is_not_stretched_twice():
    state_dict = {"positional_embedding": torch.randn(248, 8), "positional_embedding_res": torch.randn(248, 8)}
    with pytest.raises(ValueError, match="already a Long-CLIP checkpoint"):
        stretch_state_dict(state_dict)


def test_unknown_models_are_refused():
    with pytest.raises(TypeError, match="Cannot stretch a Linear"):
        stretch_model(torch.nn.Linear(2, 2))
