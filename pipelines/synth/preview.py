"""Contact sheets of the synthesiser: one PNG per mode, each image labelled with its caption.

python -c "from pipelines.synth import SynthConfig, write_preview; write_preview(SynthConfig(), 8, 'outputs/synth')"
"""

from __future__ import annotations

import logging
import pathlib
import unicodedata

import cv2
import numpy as np

from models.imageio import save_png, to_grid
from pipelines.synth.config import SynthConfig
from pipelines.synth.generator import generate_samples

logger = logging.getLogger(__name__)
CELL = 384  # pixels a side of each thumbnail


def thumbnail(image: np.ndarray, size: int = CELL) -> np.ndarray:
    """``image`` scaled to fit a white ``size`` x ``size`` square, centred."""
    scale = size / max(image.shape[:2])
    width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    scaled = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    cell = np.full((size, size, 3), 255, dtype=np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    cell[top : top + height, left : left + width] = scaled
    return cell


def short_label(text: str, size: int = CELL) -> str:
    """A caption cut to about one thumbnail's width (the grid's label font is ~11 px; wide characters count twice)."""
    budget, used = size // 6, 0
    for end, char in enumerate(text):
        used += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used > budget:
            return text[:end]
    return text


def write_preview(config: SynthConfig, num_per_mode: int, output_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Write ``synth_<mode>.png`` for each mode of ``config``; returns the paths."""
    if num_per_mode < 1:
        raise ValueError(f"num_per_mode must be at least 1, got {num_per_mode}")
    paths = []
    for mode in config.modes:
        samples = [sample for sample in generate_samples(config, mode, num_per_mode) if sample.image is not None]
        if not samples:
            logger.warning("no %s sample could be rendered: every text was discarded; no sheet written", mode)
            continue
        grid = to_grid(
            np.stack([thumbnail(sample.image) for sample in samples]),
            columns=min(4, len(samples)),
            labels=[short_label(sample.caption) for sample in samples],
        )
        paths.append(save_png(grid, pathlib.Path(output_dir) / f"synth_{mode}.png"))
    return paths
