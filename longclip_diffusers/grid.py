"""Side-by-side image grids with a caption under each image, for comparisons people look at."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

PADDING = 8
FONT_SIZE = 14


def captioned_grid(images: Sequence[Image.Image], captions: Sequence[str], columns: int | None = None) -> Image.Image:
    """Images in a grid (one row by default), each with its caption wrapped to the image width below it."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"Need one caption per image, got {len(images)} images and {len(captions)} captions.")
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    cell_width = max(image.width for image in images)
    image_height = max(image.height for image in images)
    font = ImageFont.load_default(size=FONT_SIZE)
    chars_per_line = max(8, int(cell_width / (FONT_SIZE * 0.55)))
    wrapped = [textwrap.fill(caption, chars_per_line) for caption in captions]
    line_height = FONT_SIZE + 4
    caption_height = line_height * max(text.count("\n") + 1 for text in wrapped) + PADDING

    cell_height = image_height + caption_height
    grid = Image.new(
        "RGB",
        (columns * cell_width + (columns + 1) * PADDING, rows * cell_height + (rows + 1) * PADDING),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for index, (image, text) in enumerate(zip(images, wrapped, strict=True)):
        left = PADDING + (index % columns) * (cell_width + PADDING)
        top = PADDING + (index // columns) * (cell_height + PADDING)
        grid.paste(image.convert("RGB"), (left, top))
        draw.multiline_text((left, top + image_height + PADDING // 2), text, fill="black", font=font, spacing=4)
    return grid
