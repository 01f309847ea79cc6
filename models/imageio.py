"""Writing images a person looks at: PNG files and labelled grids (demo output, sample grids, evaluation)."""

from __future__ import annotations

import functools
import math
import pathlib
import shutil
import subprocess
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_SIZE = 11


@functools.lru_cache(maxsize=1)
def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font that covers CJK for captions (fontconfig's match for Noto Sans CJK), else Pillow's default."""
    if shutil.which("fc-match"):
        try:
            found = subprocess.run(
                ["fc-match", "-f", "%{file}", "Noto Sans CJK SC:lang=zh-cn"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if found and "cjk" in found.lower():
                return ImageFont.truetype(found, LABEL_SIZE)
        except (OSError, subprocess.SubprocessError):
            pass
    return ImageFont.load_default(size=LABEL_SIZE)


def to_grid(
    images: np.ndarray,
    *,
    columns: int | None = None,
    labels: list[str] | None = None,
    pad: int = 2,
    label_lines: int = 1,
) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> one uint8 ``[rows*(H+pad), cols*(W+pad), 3]`` image, row-major, optional captions
    above each image: ``label_lines`` lines of them (a label's own line breaks kept, long lines wrapped, the rest
    cut)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    count, height, width, _ = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    line_height = LABEL_SIZE + 2
    label_height = label_lines * line_height + 1 if labels else 0
    cell_h, cell_w = height + pad + label_height, width + pad
    grid = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        top, left = row * cell_h + label_height, col * cell_w
        grid[top : top + height, left : left + width] = image
    if labels:
        canvas = Image.fromarray(grid)
        draw = ImageDraw.Draw(canvas)
        chars = max(1, width // 6)
        for index, label in enumerate(labels[:count]):
            row, col = divmod(index, columns)
            lines = [line for part in label.split("\n") for line in textwrap.wrap(part, chars) or [""]]
            for number, line in enumerate(lines[:label_lines]):
                position = (col * cell_w + 1, row * cell_h + number * line_height)
                draw.text(position, line, fill=(0, 0, 0), font=label_font())
        grid = np.asarray(canvas)
    return grid


def save_png(image: np.ndarray, path: str | pathlib.Path) -> pathlib.Path:
    """Write a uint8 ``[H, W, 3]`` image as PNG, creating the folder; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path
