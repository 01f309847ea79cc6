"""The images evaluation and VAE fine-tuning run on: text-rich renders, ordinary images, a given text drawn plainly.

Text-rich images come from the text-rendering synthesiser (``pipelines.synth``) at one square size, English or Chinese,
word and line units: at 256x256 (docs/qwen_image.md §9) a paragraph would need type too small for any VAE to keep.
Ordinary images are files from a folder (an ImageNet validation folder for the published comparison) or, without one,
the photo-like scenes of ``pipelines.synth.sample_corpus``. Every image is a pure function of its seed and row.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
from PIL import Image, ImageDraw

from pipelines.synth.config import FontConfig, SynthConfig
from pipelines.synth.fonts import font_library
from pipelines.synth.generator import SynthGenerator
from pipelines.synth.layout import draw_block, fit
from pipelines.synth.sample_corpus import photo_like

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")


def text_synth_config(size: int, language: str, seed: int) -> SynthConfig:
    """Pure-mode renders of words and lines in one language at ``size`` x ``size``, type no smaller than 1/16."""
    return SynthConfig(
        seed=seed,
        modes={"pure": 1.0},
        unit_mix={"word": 0.4, "line": 0.6},
        language_mix={language: 1.0},
        resolutions=[(size, size)],
        min_font_px=max(6, size // 16),
        image_format="png",
    )


def text_rich_images(
    num_images: int, size: int, language: str, *, seed: int = 0, start: int = 0
) -> tuple[np.ndarray, list[str]]:
    """uint8 ``[N, size, size, 3]`` synthesiser renders (rows ``start..start+N``) and the text drawn in each."""
    generator = SynthGenerator(text_synth_config(size, language, seed), "pure")
    images, texts = [], []
    row = start
    while len(images) < num_images:
        sample = generator.generate((row,))
        row += 1
        if sample.image is not None:  # a row whose every draw was discarded is skipped, never drawn blank
            images.append(sample.image)
            texts.append(sample.rendered_text)
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8), texts


def ordinary_images(
    num_images: int, size: int, *, seed: int = 0, folder: str | None = None, start: int = 0
) -> np.ndarray:
    """uint8 ``[N, size, size, 3]``, rows ``start..start+N``: files of ``folder`` (sorted, centre-cropped, resized
    with area averaging) or, without a folder, photo-like scenes."""
    if folder is None:
        rows = range(start, start + num_images)
        return np.stack([photo_like(np.random.default_rng([seed, row]), size, size) for row in rows])
    paths = sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < start + num_images:
        raise ValueError(f"ordinary image folder {folder} holds {len(paths)} images; {start + num_images} are needed")
    chosen = paths[start : start + num_images]
    return np.stack([square(np.asarray(Image.open(path).convert("RGB")), size) for path in chosen])


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square, then resize to ``size`` (area averaging when shrinking)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = np.ascontiguousarray(image[top : top + side, left : left + side])
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def render_text(text: str, size: int, *, fonts: FontConfig | None = None) -> np.ndarray:
    """``text`` in black on white, as large as fits a ``size`` square with a 10% margin, in the synthesiser's
    preferred face for it (simplified Chinese shapes for Han characters). Raises ``ValueError`` when no installed
    face covers the text. The upper bound a generator can reach on the OCR tasks, and their test fixture."""
    library = font_library(fonts or FontConfig())
    faces = library.candidates(text, "regular")
    if not faces:
        raise ValueError(f"no installed font covers {sorted(library.missing(text))}: install fonts-noto-cjk")
    margin = size * 0.1
    box = (margin, margin, size - margin, size - margin)
    block = fit(text, faces[0], box[2] - box[0], box[3] - box[1], min_size=6, max_size=int(size * 0.6))
    if block is None:
        raise ValueError(f"{text!r} does not fit a {size}px square at 6px type")
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw_block(ImageDraw.Draw(canvas), block, box, (0, 0, 0), "center", "middle")
    return np.asarray(canvas)
