"""`longclip generate`: Long-CLIP images, and vanilla | Long-CLIP grids on the same seed."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.common import LogRecords
from helpers.pipelines import HEAD, PAST_248, TAIL_A
from PIL import Image

from longclip_diffusers.cli import main
from longclip_diffusers.grid import PADDING
from longclip_diffusers.pipelines import generate as generation
from longclip_diffusers.pipelines.generate import generate, load_pipelines
from longclip_diffusers.prompts import tokenize_windows


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# What each tiny family's stock pipeline is, and the options it runs with here: FluxPipeline's default size is
# fixed at 128 latent pixels a side (slow even at tiny widths) and Flux.1 reads no negative prompt.
FAMILY_OF = {"sd15": "SD 1.5", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3", "flux": "Flux.1"}
FAMILY_OPTIONS = {"flux": {"width": 64, "height": 64}}


@pytest.mark.parametrize("base", sorted(FAMILY_OF))
def test_compare_grid_holds_both_generations_side_by_side(tiny_components, tmp_path, capsys, base):
    out = tmp_path / f"{base}.png"
    options = FAMILY_OPTIONS.get(base, {"negative_prompt": "blurry"})
    flags = [item for name, value in options.items() for item in (f"--{name.replace('_prompt', '')}", value)]
    code, stdout, _ = run(
        capsys,
        "generate",
        "--pipeline", tiny_components / base,
        "--long-encoder", tiny_components / f"longclip-{base}",
        "--prompt", HEAD + TAIL_A,  # past 77 tokens
        *flags,
        "--steps", 2,
        "--seed", 7,
        "--compare",
        "--out", out,
    )  # fmt: skip
    assert code == 0 and f"with {FAMILY_OF[base]} (prompt: " in stdout and "vanilla CLIP | Long-CLIP" in stdout
    grid = np.asarray(Image.open(out).convert("RGB"))

    pair = load_pipelines(tiny_components / base, tiny_components / f"longclip-{base}")
    assert pair.family.name == FAMILY_OF[base] and type(pair.long).__name__ == f"LongCLIP{type(pair.stock).__name__}"
    for pipe in (pair.stock, pair.long):
        pipe.set_progress_bar_config(disable=True)
    vanilla = np.asarray(generate(pair.stock, HEAD + TAIL_A, steps=2, seed=7, **options))
    long = np.asarray(generate(pair.long, HEAD + TAIL_A, steps=2, seed=7, **options))
    size = vanilla.shape[0]
    left, right = PADDING, 2 * PADDING + size
    assert np.array_equal(grid[PADDING : PADDING + size, left : left + size], vanilla)
    assert np.array_equal(grid[PADDING : PADDING + size, right : right + size], long)
    assert not np.array_equal(vanilla, long)
    assert grid.shape[0] > size + 2 * PADDING  # room for the captions
    denoiser = "unet" if hasattr(pair.stock, "unet") else "transformer"
    assert getattr(pair.long, denoiser) is getattr(pair.stock, denoiser)  # loaded once, shared
    assert pair.long.vae is pair.stock.vae


def test_each_family_loads_long_clip_l_as_it_reads_it(tiny_components):
    """SD 3 reads Long-CLIP-L's projected pooled vector, Flux the pooled output before the projection."""
    sd3 = load_pipelines(tiny_components / "sd3", tiny_components / "longclip-sd3", strategy="stretch")
    assert type(sd3.long.text_encoder).__name__ == "CLIPTextModelWithProjection"
    assert sd3.long.config.long_prompt_strategy == "stretch"
    assert sd3.long.text_encoder_3 is sd3.stock.text_encoder_3  # T5 is shared too
    flux = load_pipelines(tiny_components / "flux", tiny_components / "longclip-flux")
    assert type(flux.long.text_encoder).__name__ == "CLIPTextModel"


def test_what_long_clip_l_reads_per_family(tiny_components):
    prompt = HEAD + PAST_248 + TAIL_A
    sd3 = load_pipelines(tiny_components / "sd3", tiny_components / "longclip-sd3").long
    flux = load_pipelines(tiny_components / "flux", tiny_components / "longclip-flux").long
    windows = tokenize_windows(prompt, sd3.tokenizer, 246).token_ids
    tokens = sum(map(len, windows))
    assert len(windows) == 2 and str(generation.long_read(sd3, prompt)) == f"{tokens} tokens in 2 windows"
    # Flux's pooled vector reads the first window only
    assert str(generation.long_read(flux, prompt)) == f"the first {len(windows[0])} of {tokens} tokens"
    assert str(generation.long_read(flux, "a (cat:1.2) BREAK a dog")) == "the first 2 of 4 tokens"
    sd3.register_to_config(max_prompt_windows=1)
    assert str(generation.long_read(sd3, prompt)) == f"the first {len(windows[0])} of {tokens} tokens"


def test_single_image(tiny_components, tmp_path, capsys):
    code, _, _ = run(
        capsys,
        "generate",
        "--pipeline", tiny_components / "sd15",
        "--long-encoder", tiny_components / "longclip-sd15",
        "--prompt", "a lighthouse",
        "--steps", 2,
        "--out", tmp_path / "one.jpg",
    )  # fmt: skip
    assert code == 0
    assert Image.open(tmp_path / "one.jpg").size == (64, 64)


@pytest.mark.parametrize(
    ("long_encoder", "fragment"),
    [
        ("sd15/text_encoder", "77 text positions"),  # a stock encoder where Long-CLIP is required
        ("missing", "no such file or folder"),
    ],
)
def test_bad_long_encoder_is_a_one_line_error(tiny_components, tmp_path, capsys, long_encoder, fragment):
    code, _, err = run(
        capsys,
        "generate",
        "--pipeline", tiny_components / "sd15",
        "--long-encoder", tiny_components / long_encoder,
        "--prompt", "a lighthouse",
        "--out", tmp_path / "x.png",
    )  # fmt: skip
    assert code == 1 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def sd15(tiny_components, *args) -> list:
    """`generate` arguments for the tiny SD 1.5 pipeline and Long-CLIP, one step."""
    pipeline, encoder = tiny_components / "sd15", tiny_components / "longclip-sd15"
    return ["generate", "--pipeline", pipeline, "--long-encoder", encoder, "--steps", 1, *args]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if `generate` gets as far as loading a model."""
    monkeypatch.setattr(generation, "load_pipelines", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", 7, "--height", 64], "argument --width: 7: give a multiple of 8 from 8 to 4096"),
        (["--width", 0, "--height", 64], "argument --width: 0: give a multiple of 8"),
        (["--width", 64, "--height", 8192], "argument --height: 8192: give a multiple of 8 from 8 to 4096"),
        (["--width", "64.0", "--height", 64], "argument --width: 64.0: give a multiple of 8"),
        (["--guidance", "nan"], "argument --guidance: nan: give a guidance scale from 0 to 100"),
        (["--guidance", "inf"], "argument --guidance: inf: give a guidance scale"),
        (["--guidance", -1], "argument --guidance: -1: give a guidance scale"),
        (["--steps", 0], "argument --steps: 0: give a whole number of steps from 1 to 1000"),
        (["--steps", 5000], "argument --steps: 5000: give a whole number of steps from 1 to 1000"),
        (["--seed", -1], "argument --seed: -1: give a seed from 0 to 2**64 - 1"),
        (["--seed", 2**64], f"argument --seed: {2**64}: give a seed from 0 to 2**64 - 1"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(tiny_components, tmp_path, capsys, no_model_loads, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in sd15(tiny_components, "--prompt", "a cat", "--out", tmp_path / "x.png", *args)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--width", 128], "A width (128) without a height: give both"),
        (["--height", 128], "A height (128) without a width: give both"),
        (["--out", "{tmp}/x.txt"], "'.txt' is not an image suffix this writes; end the file name with one of .png,"),
        (["--out", "{tmp}/x"], "it has no suffix to tell the format"),
        (["--prompt", "a (cat:1" + "0" * 40 + ")"], "weight 1" + "0" * 40 + " is outside the range 0 to 10"),
        (["--negative", "(blurry:-1)"], "(blurry:-1): weight -1 is outside the range 0 to 10"),
        (["--negative", "blurry", "--guidance", 1], "--negative has no effect with --guidance 1"),
    ],
)
def test_bad_options_are_refused_before_any_model_loads(
    tiny_components, tmp_path, capsys, no_model_loads, args, fragment
):
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    defaults = {"--prompt": "a cat", "--out": str(tmp_path / "x.png")}
    given = [item for flag, value in defaults.items() if flag not in args for item in (flag, value)]
    code, _, err = run(capsys, *sd15(tiny_components, *given, *args))
    assert code == 1 and err.count("\n") == 1 and err.startswith("longclip: error: ") and fragment in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("base", "args", "fragment"),
    [
        ("sd15", ["--strategy", "stretch"], "strategy='stretch' sets how the second text encoder of SDXL and SD 3"),
        ("sd2", ["--strategy", "chunk"], "is a StableDiffusionPipeline, which has none; leave the strategy out"),
        ("flux", ["--strategy", "chunk"], "is a FluxPipeline, which has none; leave the strategy out"),
        ("flux", ["--negative", "blurry"], "Flux.1 reads no negative prompt at its usual settings"),
    ],
)
def test_options_a_family_would_not_use_are_refused_before_any_model_loads(
    tiny_components, tmp_path, capsys, no_model_loads, base, args, fragment
):
    pipeline, encoder = tiny_components / base, tiny_components / f"longclip-{base}"
    common = ["--pipeline", pipeline, "--long-encoder", encoder, "--prompt", "a cat", "--out", tmp_path / "x.png"]
    code, _, err = run(capsys, "generate", *common, *args)
    assert code == 1 and err.count("\n") == 1 and fragment in err and not any(tmp_path.iterdir())


def test_other_pipelines_are_refused_by_their_model_index(tiny_components, tmp_path, capsys, no_model_loads):
    other = tmp_path / "kandinsky"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "KandinskyV22Pipeline", "_diffusers_version": "0.30.0"}')
    args = ["--long-encoder", tiny_components / "longclip-sd15", "--prompt", "a cat", "--out", tmp_path / "x.png"]
    code, _, err = run(capsys, "generate", "--pipeline", other, *args)
    assert code == 1 and err.count("\n") == 1
    assert f"{other}: its model_index.json names 'KandinskyV22Pipeline'" in err
    assert "StableDiffusion3Pipeline (SD 3), FluxPipeline (Flux.1)" in err
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        code, _, err = run(capsys, "generate", "--pipeline", folder, *args)
        assert code == 1 and err.count("\n") == 1 and f"{folder}: no diffusers pipeline there" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("suffix", "image_format"), [(".png", "PNG"), (".JPEG", "JPEG"), (".webp", "WEBP")])
def test_the_out_suffix_sets_the_format(tmp_path, suffix, image_format):
    image = Image.new("RGB", (16, 8), "teal")
    out = generation.save_image(image, tmp_path / f"image{suffix}")
    assert Image.open(out).format == image_format and Image.open(out).size == (16, 8)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_images_get_the_umasks_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = generation.save_image(Image.new("RGB", (8, 8)), tmp_path / "image.png")
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [path.name for path in tmp_path.iterdir()] == ["image.png"]  # no temporary file left


def test_an_existing_out_is_kept_unless_overwrite_is_given(tiny_components, tmp_path, capsys, monkeypatch):
    earlier = tmp_path / "x.png"
    Image.new("RGB", (8, 8), "teal").save(earlier)
    with monkeypatch.context() as patch:
        patch.setattr(generation, "load_pipelines", lambda *a, **k: pytest.fail("a model was loaded"))
        code, _, err = run(capsys, *sd15(tiny_components, "--prompt", "a cat", "--out", earlier))
    assert (
        code == 1
        and err
        == f"longclip: error: {earlier}: already exists; choose another --out or pass --overwrite to replace it.\n"
    )
    assert Image.open(earlier).size == (8, 8) and [path.name for path in tmp_path.iterdir()] == ["x.png"]
    with pytest.raises(FileExistsError):  # the library function keeps it too
        generation.save_image(Image.new("RGB", (4, 4)), earlier)

    code, _, err = run(capsys, *sd15(tiny_components, "--prompt", "a cat", "--out", earlier, "--overwrite"))
    assert code == 0, err
    assert Image.open(earlier).size == (64, 64) and [path.name for path in tmp_path.iterdir()] == ["x.png"]


def test_width_and_height_together_set_the_size(tiny_components, tmp_path, capsys):
    args = sd15(tiny_components, "--prompt", "a cat", "--width", 16, "--height", 24, "--out", tmp_path / "x.png")
    code, out, _ = run(capsys, *args)
    assert code == 0 and "with SD 1.5 (prompt: 2 tokens)" in out
    assert Image.open(tmp_path / "x.png").size == (16, 24)


def test_an_empty_prompt_gives_the_unconditional_image(tiny_components, tmp_path, capsys):
    code, out, _ = run(capsys, *sd15(tiny_components, "--prompt", "", "--out", tmp_path / "empty.png"))
    assert code == 0 and "(prompt: 0 tokens)" in out
    pair = load_pipelines(tiny_components / "sd15", tiny_components / "longclip-sd15")
    pair.long.set_progress_bar_config(disable=True)
    expected = np.asarray(generate(pair.long, "", steps=1))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "empty.png")), expected)


def test_a_5000_token_prompt_is_read_whole_in_windows(tiny_components, tmp_path, capsys):
    prompt = "a lighthouse on a cliff, " * 830  # 6 tokens each: 4980 tokens
    code, out, _ = run(capsys, *sd15(tiny_components, "--prompt", prompt, "--out", tmp_path / "long.png"))
    assert code == 0 and "(prompt: 4980 tokens in 21 windows)" in out  # 246 content tokens a window
    assert Image.open(tmp_path / "long.png").size == (64, 64)


def test_weighting_syntax_and_break_are_not_counted_as_tokens(tiny_components, tmp_path, capsys):
    args = sd15(tiny_components, "--prompt", "a (cat:1.2) BREAK [a dog]", "--out", tmp_path / "x.png")
    code, out, _ = run(capsys, *args)
    assert code == 0 and "(prompt: 4 tokens in 2 windows)" in out


_PROGRESS_BAR = re.compile(r"^[^|]*\d+%\|[^|]*\| \d+/\d+ \[.*\]$")  # tqdm: "Loading ...:  40%|####  | 2/5 [...]"


def test_a_run_prints_no_noise_on_stderr(tiny_components, tmp_path):
    # A fresh interpreter, as a user runs the command: the only lines on stderr are progress bars.
    args = [str(a) for a in sd15(tiny_components, "--prompt", "a cat", "--compare", "--out", tmp_path / "x.png")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "longclip_diffusers.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (line.strip() for line in re.split(r"[\r\n]", result.stderr.replace("\x1b[A", "")))
    assert [line for line in lines if line and not _PROGRESS_BAR.match(line)] == []


def test_float32_warnings_are_dropped_only_when_they_name_no_module(tiny_components, monkeypatch):
    records = LogRecords()
    modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
    monkeypatch.setattr(modeling_logger, "handlers", [records])
    # bfloat16 on the CPU takes the path a GPU takes: from_pipe, then .to(device, dtype)
    pair = load_pipelines(tiny_components / "sd15", tiny_components / "longclip-sd15", dtype=torch.bfloat16)
    assert pair.long.unet.dtype == pair.long.text_encoder.dtype == torch.bfloat16
    assert not any("float32" in message for message in records.messages)

    pair.stock.unet.to(torch.float32)  # outside load_pipelines, diffusers' warning is there
    assert "There are modules in UNet2DConditionModel that should be kept in float32: []" in records.messages[-1]
    monkeypatch.setattr(pair.stock.vae, "_keep_in_fp32_modules", ["encoder"])
    with generation._quiet_empty_float32_warning():
        pair.stock.vae.to(torch.float32)
    assert "AutoencoderKL that should be kept in float32: ['encoder']" in records.messages[-1]  # this one is kept


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_out_where_no_image_can_be_written_is_refused_before_any_model_loads(
    tiny_components, tmp_path, capsys, no_model_loads, overwrite
):
    # a folder named like an image failed with a traceback after the whole generation
    folder = tmp_path / "renders.png"
    (folder / "kept.png").parent.mkdir()
    (folder / "kept.png").write_bytes(b"mine")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out, message in [
        (folder, f"{folder}: is a folder; --out names the image file to write, e.g. {folder / 'image.png'}."),
        (notes / "x.png", f"{notes / 'x.png'}: {notes} is a file, not a folder to write into."),
    ]:
        code, _, err = run(capsys, *sd15(tiny_components, "--prompt", "a cat", "--out", out, *overwrite))
        assert code == 1 and err == f"longclip: error: {message}\n"
    assert (folder / "kept.png").read_bytes() == b"mine" and notes.read_text() == "mine"


def test_a_typo_in_a_local_pipeline_path_asks_no_hub(tiny_components, tmp_path, capsys, monkeypatch, no_model_loads):
    # "models/sd15x" (a folder `models/` here) is a valid Hub id by its form: it cost ~40 s of Hub retries
    monkeypatch.setattr(generation.DiffusionPipeline, "load_config", lambda *a, **k: pytest.fail("Hub asked"))
    monkeypatch.chdir(tiny_components)
    args = ["--long-encoder", "longclip-sd15", "--prompt", "a cat", "--out", tmp_path / "x.png"]
    code, _, err = run(capsys, "generate", "--pipeline", "sd15/typo", *args)
    message = "sd15/typo: no diffusers pipeline there (no such folder, and not a Hugging Face Hub repo id)."
    assert code == 1 and err == f"longclip: error: {message}\n"


@pytest.mark.parametrize(("base", "tokenizer"), [("sd3", "tokenizer_3"), ("flux", "tokenizer_2")])
def test_compare_captions_say_what_t5_reads_in_both_images(tiny_components, monkeypatch, base, tokenizer):
    pair = load_pipelines(tiny_components / base, tiny_components / f"longclip-{base}")
    captions = []
    monkeypatch.setattr(generation, "captioned_grid", lambda images, texts: captions.extend(texts))
    prompt = "a (red:1.2) lighthouse at dusk"
    generation.compare(pair, prompt, steps=1, width=64, height=64)
    t5 = getattr(pair.long, tokenizer)
    stock_t5 = len(t5(prompt, add_special_tokens=False).input_ids)  # the stock pipeline reads the brackets as text
    long_t5 = len(t5("a red lighthouse at dusk", add_special_tokens=False).input_ids)  # Long-CLIP parses them
    assert stock_t5 > long_t5
    assert captions[0].endswith(f"; T5: reads all {stock_t5} tokens")
    assert captions[1].endswith(f"; T5: reads all {long_t5} tokens")
    long_prompt = "lighthouse " * 600  # past max_sequence_length (SD 3: 256, Flux: 512)
    length = {"sd3": 256, "flux": 512}[base]
    assert generation.T5Reading.of(pair).read(long_prompt) == (len(t5(long_prompt).input_ids) - 1, length - 1)


def test_empty_windows_are_counted_as_such(tiny_components, tmp_path, capsys):
    args = sd15(tiny_components, "--prompt", "a cat BREAK BREAK a dog", "--out", tmp_path / "x.png")
    code, out, _ = run(capsys, *args)
    assert code == 0 and "(prompt: 4 tokens in 3 windows, 1 empty)" in out
