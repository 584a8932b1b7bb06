"""Long-prompt encoding: weighting syntax, windows, and the two ways of reading SDXL's bigG."""

import logging

import pytest
import torch

from longclip_diffusers.pipelines.arguments import as_prompt_list, negative_prompt_list
from longclip_diffusers.prompts import (
    BREAK,
    MAX_WEIGHT,
    PromptOptions,
    TextEncoderSpec,
    apply_weights,
    encode_prompts,
    encode_windows_chunked,
    encode_windows_direct,
    parse_weighted_prompt,
    stretched_view,
    tokenize_windows,
)
from longclip_diffusers.tokenizer import LongCLIPTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return LongCLIPTokenizer.from_clip_bpe()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red cat", [("a red cat", 1.0)]),
        ("a (red) cat", [("a ", 1.0), ("red", 1.1), (" cat", 1.0)]),
        ("a ((red)) cat", [("a ", 1.0), ("red", pytest.approx(1.21)), (" cat", 1.0)]),
        ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
        ("a ( red : 0.5 ) cat", [("a ", 1.0), (" red ", 0.5), (" cat", 1.0)]),
        ("a [red] cat", [("a ", 1.0), ("red", pytest.approx(1 / 1.1)), (" cat", 1.0)]),
        ("a ((red:1.5) cat)", [("a ", 1.0), ("red", pytest.approx(1.65)), (" cat", 1.1)]),
        (r"a \(red\) cat", [("a (red) cat", 1.0)]),
        ("a cat BREAK a dog", [("a cat", 1.0), (BREAK, -1.0), ("a dog", 1.0)]),
        ("BREAKFAST at dawn", [("BREAKFAST at dawn", 1.0)]),
        ("time: 5 pm", [("time: 5 pm", 1.0)]),
        ("a (red cat", [("a ", 1.0), ("red cat", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_a1111_weighting_syntax(prompt, expected):
    assert parse_weighted_prompt(prompt) == expected


def test_brackets_never_reach_the_tokenizer(tokenizer):
    weighted = tokenize_windows("a (red:1.3) [cat] on ((a mat))", tokenizer, 246)
    plain = tokenize_windows("a red cat on a mat", tokenizer, 246)
    assert weighted.token_ids == plain.token_ids
    unparsed = tokenize_windows("a (red:1.3) cat", tokenizer, 246, weighting=False)
    assert tokenizer.convert_tokens_to_ids("(</w>") in unparsed.token_ids[0] or "(" in tokenizer.decode(
        unparsed.token_ids[0]
    )


def test_windows_hold_246_tokens_and_break_on_word_ends(tokenizer):
    prompt = "an intricately ornamented lighthouse, " * 80
    windows = tokenize_windows(prompt, tokenizer, 246)
    all_ids = tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
    assert [i for w in windows.token_ids for i in w] == all_ids  # nothing lost, nothing repeated
    assert all(len(w) <= 246 for w in windows.token_ids) and len(windows.token_ids) == len(all_ids) // 246 + 1
    for window in windows.token_ids[:-1]:
        assert tokenizer.convert_ids_to_tokens(window[-1]).endswith("</w>")


def test_break_starts_a_new_window(tokenizer):
    windows = tokenize_windows("a cat BREAK a dog", tokenizer, 246)
    assert [tokenizer.decode(w) for w in windows.token_ids] == ["a cat", "a dog"]


def test_dropped_words_are_named_in_one_warning(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="longclip_diffusers.prompts"):
        windows = tokenize_windows("a cat BREAK a dog with a purple hat", tokenizer, 246, max_windows=1)
    assert len(windows.token_ids) == 1
    assert len(caplog.records) == 1 and "a dog with a purple hat" in caplog.text


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: as_prompt_list(42), TypeError, "`prompt` must be a string or a list of strings, got int"),
        (lambda: as_prompt_list(["a", 3]), TypeError, "got a list of int, str"),
        (lambda: as_prompt_list([]), ValueError, "empty list"),
        (lambda: negative_prompt_list(["a", "b"], 3), ValueError, "has 2 prompts but `prompt` has 3"),
        (lambda: negative_prompt_list([None], 1), TypeError, "`negative_prompt` must be"),
    ],
)
def test_bad_prompts_are_refused_with_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.fixture(scope="module")
def sdxl_parts(tiny_components):
    from diffusers import StableDiffusionXLPipeline

    from longclip_diffusers import LongCLIPTextEncoder

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_components / "sdxl")
    long_l = LongCLIPTextEncoder.from_pretrained(tiny_components / "longclip-sdxl")
    long_tokenizer = LongCLIPTokenizer.from_pretrained(tiny_components / "longclip-sdxl")
    spec_l = TextEncoderSpec(long_l, long_tokenizer, -2, final_norm=False)
    spec_g = TextEncoderSpec(pipe.text_encoder_2, pipe.tokenizer_2, -2, final_norm=False)
    return spec_l, spec_g


def test_chunked_bigg_rows_are_the_states_of_the_same_tokens(sdxl_parts, tokenizer):
    _, spec_g = sdxl_parts
    short = tokenizer("a lighthouse on a cliff at dusk", add_special_tokens=False).input_ids
    chunked, chunked_pooled = encode_windows_chunked(spec_g, [short], 248)
    direct, direct_pooled = encode_windows_direct(spec_g, [short], 77)
    n = len(short)
    assert chunked.shape == (1, 248, 32)
    assert torch.equal(chunked[0, : n + 2], direct[0, : n + 2])  # BOS, tokens, EOS: one chunk, same states
    assert torch.equal(chunked[0, n + 2 : 77], direct[0, n + 2 :])  # then the chunk's padding states
    assert torch.equal(chunked_pooled, direct_pooled)

    long = tokenizer("an old stone lighthouse, " * 30, add_special_tokens=False).input_ids[:200]
    chunked, _ = encode_windows_chunked(spec_g, [long], 248)
    second_chunk, _ = encode_windows_direct(spec_g, [long[75:150]], 77)
    assert torch.equal(chunked[0, 76:151], second_chunk[0, 1:76])  # tokens 76..150 from the second chunk


def test_stretch_strategy_shares_weights_and_leaves_the_encoder_alone(sdxl_parts):
    _, spec_g = sdxl_parts
    original_table = spec_g.text_encoder.text_model.embeddings.position_embedding.weight.clone()
    view = stretched_view(spec_g.text_encoder, 248)
    assert view.config.max_position_embeddings == 248
    assert spec_g.text_encoder.config.max_position_embeddings == 77
    assert torch.equal(spec_g.text_encoder.text_model.embeddings.position_embedding.weight, original_table)
    shared = view.text_model.encoder.layers[0].mlp.fc1.weight
    assert shared.data_ptr() == spec_g.text_encoder.text_model.encoder.layers[0].mlp.fc1.weight.data_ptr()


@pytest.mark.parametrize("strategy", ["chunk", "stretch"])
def test_the_tail_past_77_reaches_both_sdxl_halves(sdxl_parts, strategy):
    head = "a lighthouse on a cliff at dusk, waves crashing on black rocks, " * 6
    a, b = head + "a red boat in the bay", head + "a white ship in the bay"
    conditioning, pooled = encode_prompts([a, b], sdxl_parts, PromptOptions(strategy=strategy))
    assert conditioning.shape == (2, 248, 64)
    start = len(LongCLIPTokenizer.from_clip_bpe()(head).input_ids) - 1
    assert start > 77
    for half in (slice(0, 32), slice(32, 64)):  # CLIP-L, then bigG
        assert torch.equal(conditioning[0, :start, half], conditioning[1, :start, half])
        assert (conditioning[0, start:, half] - conditioning[1, start:, half]).abs().max() > 1e-4
    if strategy == "stretch":  # the pooled vector reads the whole window
        assert (pooled[0] - pooled[1]).abs().max() > 1e-4
    else:  # the pooled vector is the first chunk's, which ends before the tail
        assert torch.equal(pooled[0], pooled[1])


def test_weight_one_encodes_exactly_like_no_weight(sdxl_parts):
    plain, _ = encode_prompts(["a red cat on a mat"], sdxl_parts)
    weighted, _ = encode_prompts(["a (red:1.0) cat on (a mat:1)"], sdxl_parts)
    assert torch.equal(plain, weighted)


def test_a_weight_scales_its_tokens_and_keeps_the_mean(sdxl_parts, tokenizer):
    plain, _ = encode_prompts(["a red cat on a mat"], sdxl_parts)
    weighted, _ = encode_prompts(["a (red:1.5) cat on a mat"], sdxl_parts)
    red = 1 + tokenizer("a", add_special_tokens=False).input_ids.__len__()  # after BOS and "a"
    for half in (slice(0, 32), slice(32, 64)):
        ratio = weighted[0, :, half].norm(dim=-1) / plain[0, :, half].norm(dim=-1)
        assert ratio[red] > 1.3 and ratio[red] == ratio.max()
        torch.testing.assert_close(weighted[0, :, half].mean(), plain[0, :, half].mean(), atol=1e-6, rtol=1e-5)


def test_prompts_past_248_tokens_get_more_windows_and_padding_for_the_rest(sdxl_parts):
    long = "an old stone lighthouse with a red roof, " * 40  # about 400 tokens
    conditioning, pooled = encode_prompts([long, "blurry"], sdxl_parts)
    assert conditioning.shape == (2, 2 * 248, 64)
    empty, _ = encode_prompts([""], sdxl_parts)
    # the short prompt's second window is an empty prompt (equal up to batch-size rounding)
    torch.testing.assert_close(conditioning[1, 248:], empty[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# BREAK counts windows as A1111 does (modules/sd_hijack_clip.py, tokenize_line / next_chunk): each BREAK closes
# the current window, an empty one too; at the end, the last window is kept only if it holds tokens or is the
# only one. Deliberate difference: a BREAK inside a weighting group still breaks (A1111 scales its marker to
# -1.1, after which it is no longer a marker but the word "break" with a negative weight).
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "windows"),
    [
        ("a cat", ["a cat"]),
        ("", [""]),
        ("BREAK", [""]),  # A1111: one empty chunk
        ("a cat BREAK", ["a cat"]),  # trailing BREAK: A1111 adds no window
        ("a cat BREAK  \n", ["a cat"]),
        ("a cat BREAK BREAK", ["a cat", ""]),
        ("BREAK a cat", ["", "a cat"]),  # leading BREAK: an empty first window
        ("BREAK BREAK BREAK", ["", "", ""]),
        ("a BREAK BREAK b", ["a", "", "b"]),
        ("a cat BREAK a dog", ["a cat", "a dog"]),
        ("a cat,BREAK,a dog", ["a cat ,", ", a dog"]),  # a word of its own between punctuation
        ("a cat BREAK ()", ["a cat"]),  # nothing but brackets after the last BREAK
        ("a cat break a dog", ["a cat break a dog"]),  # lower case: text
        ("a cat BREAKFAST", ["a cat breakfast"]),
        ("(a cat BREAK a dog:1.2)", ["a cat", "a dog"]),  # our choice; see above
        ("[a cat BREAK] a dog", ["a cat", "a dog"]),
    ],
)
def test_break_counts_windows_as_a1111(tokenizer, prompt, windows):
    result = tokenize_windows(prompt, tokenizer, 246)
    assert [tokenizer.decode(window) for window in result.token_ids] == windows
    assert len(result.weights) == len(windows)


def test_break_inside_a_group_keeps_the_group_weight_on_both_sides(tokenizer):
    result = tokenize_windows("(a cat BREAK a dog:1.2)", tokenizer, 246)
    assert result.weights == [[1.2, 1.2], [1.2, 1.2]]


@pytest.mark.parametrize(("extra_tokens", "expected"), [(0, 1), (1, 2)])
def test_a_full_window_before_a_trailing_break_opens_no_other(tokenizer, extra_tokens, expected):
    prompt = "cat " * (246 + extra_tokens) + "BREAK"  # "cat" is one token
    assert len(tokenize_windows(prompt, tokenizer, 246).token_ids) == expected


def test_a_trailing_break_changes_nothing(sdxl_parts):
    plain, plain_pooled = encode_prompts(["a red cat on a mat"], sdxl_parts)
    with_break, pooled = encode_prompts(["a red cat on a mat BREAK"], sdxl_parts)
    assert torch.equal(with_break, plain) and torch.equal(pooled, plain_pooled)


# ----------------------------------------------------------------------------------------------------------
# Weights: each must lie in [0, MAX_WEIGHT] (nested products too), so conditioning stays finite and bounded
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a (cat:1" + "0" * 40 + ")", r"\(cat:10{40}\): weight 10{40} is outside the range 0 to 10"),
        ("a (cat:1" + "0" * 400 + ") on a mat", r"outside the range 0 to 10"),  # inf as a float
        ("a (cat:1000000000)", r"\(cat:1000000000\): weight 1000000000 is outside the range 0 to 10"),
        ("a (cat:10.5)", r"\(cat:10.5\): weight 10.5 is outside"),
        ("a (red cat:-1)", r"\(red cat:-1\): weight -1 is outside .* not a weight below 0"),
        ("a (cat:-0.5) on a mat", r"weight -0.5 is outside"),
        ("a ((cat:4):4)", r"'cat' gets weight 16 from nested groups; .* between 0 and 10"),
        ("((((cat:5):5):5):5)", r"'cat' gets weight 625 from nested groups"),
        ("a " + "(" * 30 + "cat" + ")" * 30, r"'cat' gets weight 17.45 from nested groups"),  # 1.1 ** 30
        ("a (cat:1.2.3)", r"\(cat:1.2.3\): '1.2.3' is not a valid weight; write it like \(words:1.3\)"),
    ],
)
def test_weights_out_of_range_are_refused_with_the_weight_and_the_range(sdxl_parts, prompt, message):
    with pytest.raises(ValueError, match=message):
        encode_prompts([prompt], sdxl_parts)  # what the pipelines and the ComfyUI nodes call


@pytest.mark.parametrize(
    "prompt",
    [
        "a (red cat:0) on a mat",
        "a (red cat:10) on a mat",
        "(a red cat on a mat:0)",
        "(a red cat on a mat:10) BREAK (a dog:0)",
        "a ((cat:3.1):3.2) on a mat",  # a nested product just under 10
        "a " + "[" * 60 + "cat" + "]" * 60,
        "a (cat:nan) on (a mat:inf)",  # not numbers: text, as in A1111
    ],
)
def test_conditioning_stays_finite_and_bounded_at_the_edges(sdxl_parts, prompt):
    plain, _ = encode_prompts([prompt], sdxl_parts, PromptOptions(weighting=False))
    weighted, _ = encode_prompts([prompt], sdxl_parts)
    assert torch.isfinite(weighted).all()
    assert weighted.abs().max() <= MAX_WEIGHT**2 * plain.abs().max()


def test_nan_and_inf_are_read_as_text(tokenizer):
    assert parse_weighted_prompt("a (cat:nan) on (a mat:inf)") == [
        ("a ", 1.0),
        ("cat:nan", pytest.approx(1.1)),
        (" on ", 1.0),
        ("a mat:inf", pytest.approx(1.1)),
    ]


def a1111_emphasis(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis (modules/sd_emphasis.py), the reference: scale, then restore the mean."""
    original_mean = states.mean()
    weighted = states * weights.unsqueeze(-1)
    return weighted * (original_mean / weighted.mean())


@pytest.fixture(scope="module")
def mixed_sign_states(sdxl_parts):
    """Real hidden states [T, D] whose tokens' means have both signs (SDXL reads un-normalised states)."""
    spec_l, _ = sdxl_parts
    states, _ = encode_prompts(
        ["a red cat on a mat next to an old stone lighthouse"], [spec_l], PromptOptions(weighting=False)
    )
    states = states[0]
    token_means = states.mean(-1)
    assert (token_means > 0).any() and (token_means < 0).any()
    return states


def weights_giving_weighted_mean(states: torch.Tensor, target_sum: float) -> torch.Tensor:
    """Weights in [0, MAX_WEIGHT]: 1 on tokens of negative mean, one value on the others, chosen so that the sum
    of the weighted states is `target_sum`."""
    token_sums = states.sum(-1)
    positive = token_sums > 0
    scale = (target_sum - token_sums[~positive].sum()) / token_sums[positive].sum()
    assert 0 <= scale <= MAX_WEIGHT
    return torch.where(positive, scale, torch.ones_like(token_sums))


def test_ordinary_weights_restore_the_mean_exactly_as_a1111(mixed_sign_states):
    weights = torch.ones(mixed_sign_states.shape[0])
    weights[2:5] = torch.tensor([1.3, 0.7, 1.21])
    expected = a1111_emphasis(mixed_sign_states, weights)
    assert torch.equal(apply_weights(mixed_sign_states, weights), expected)
    torch.testing.assert_close(expected.mean(), mixed_sign_states.mean())


def test_a_weighted_mean_near_zero_does_not_blow_up_the_states(mixed_sign_states):
    weights = weights_giving_weighted_mean(mixed_sign_states, target_sum=1e-4)
    weighted = mixed_sign_states * weights.unsqueeze(-1)
    assert a1111_emphasis(mixed_sign_states, weights).abs().max() > 1000 * weighted.abs().max()  # A1111's result
    result = apply_weights(mixed_sign_states, weights)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, weighted * MAX_WEIGHT)  # the restoring factor at its bound


def test_a_weighted_mean_of_the_other_sign_does_not_flip_the_states(mixed_sign_states):
    assert mixed_sign_states.mean() > 0
    negative_sum = mixed_sign_states.sum(-1).clamp(max=0).sum().item()
    weights = weights_giving_weighted_mean(mixed_sign_states, target_sum=0.5 * negative_sum)
    weighted = mixed_sign_states * weights.unsqueeze(-1)
    assert (a1111_emphasis(mixed_sign_states, weights) * weighted).sum() < 0  # A1111 flips every state
    assert torch.equal(apply_weights(mixed_sign_states, weights), weighted)


def test_a_typed_end_token_does_not_cut_the_pooled_features(sdxl_parts):
    spec_l, spec_g = sdxl_parts
    _, pooled = encode_prompts(["a cat <|endoftext|> on a mat"], sdxl_parts)
    _, pooled_of_the_head = encode_prompts(["a cat"], sdxl_parts)
    assert (pooled - pooled_of_the_head).abs().max() > 1e-3  # the words after the name still count

    # A tokenizer that parses the name (as the reference tokenizers do) would end the text there for pooling.
    words = spec_l.tokenizer(["a cat", "on a mat"], add_special_tokens=False).input_ids
    _, parsed_pooled = encode_windows_direct(spec_g, [[*words[0], spec_l.tokenizer.eos_token_id, *words[1]]], 77)
    torch.testing.assert_close(parsed_pooled, pooled_of_the_head, atol=1e-6, rtol=0)


def test_the_syntax_module_imports_neither_torch_nor_transformers():
    """Prompt syntax is plain text: a tool can parse prompts without loading torch (as compel's parser)."""
    import subprocess
    import sys
    from pathlib import Path

    import longclip_diffusers.prompts.syntax as syntax

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('syntax', {str(Path(syntax.__file__))!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.parse_weighted_prompt('a (red:1.5) cat') == [('a ', 1.0), ('red', 1.5), (' cat', 1.0)]\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
