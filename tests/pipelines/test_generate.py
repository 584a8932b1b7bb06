"""`longclip generate`: Long-CLIP images, and vanilla | Long-CLIP grids on the same seed."""

import numpy as np
import pytest
from long_prompts import HEAD, TAIL_A
from PIL import Image

from longclip_diffusers.cli import main
from longclip_diffusers.grid import PADDING
from longclip_diffusers.pipelines.generate import generate, load_pipelines


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_compare_grid_holds_both_generations_side_by_side(tiny_components, tmp_path, capsys, base):
    out = tmp_path / f"{base}.png"
    code, stdout, _ = run(
        capsys,
        "generate",
        "--pipeline", tiny_components / base,
        "--long-encoder", tiny_components / f"longclip-{base}",
        "--prompt", HEAD + TAIL_A,
        "--negative", "blurry",
        "--steps", 2,
        "--seed", 7,
        "--compare",
        "--out", out,
    )  # fmt: skip
    assert code == 0 and "vanilla CLIP | Long-CLIP" in stdout
    grid = np.asarray(Image.open(out).convert("RGB"))

    pair = load_pipelines(tiny_components / base, tiny_components / f"longclip-{base}")
    for pipe in (pair.stock, pair.long):
        pipe.set_progress_bar_config(disable=True)
    vanilla = np.asarray(generate(pair.stock, HEAD + TAIL_A, "blurry", steps=2, seed=7))
    long = np.asarray(generate(pair.long, HEAD + TAIL_A, "blurry", steps=2, seed=7))
    size = vanilla.shape[0]
    left, right = PADDING, 2 * PADDING + size
    assert np.array_equal(grid[PADDING : PADDING + size, left : left + size], vanilla)
    assert np.array_equal(grid[PADDING : PADDING + size, right : right + size], long)
    assert not np.array_equal(vanilla, long)
    assert grid.shape[0] > size + 2 * PADDING  # room for the captions
    assert pair.long.unet is pair.stock.unet  # loaded once, shared


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
