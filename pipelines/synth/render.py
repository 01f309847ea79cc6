"""What the three modes share: the render context, the discard signal, backgrounds and image encoding."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from PIL import Image

from pipelines.synth.config import SynthConfig
from pipelines.synth.fonts import FontLibrary, font_library
from pipelines.synth.text import TextSampler, draw


class Discarded(Exception):
    """A drawn text cannot be rendered (``reason``: ``unrenderable`` or ``too_long``); the sample draws another."""

    def __init__(self, reason: str, text: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.text = text


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered image: RGB uint8 ``[H, W, 3]``, the text as drawn (lines joined by newlines), its caption."""

    image: np.ndarray
    rendered_text: str
    caption: str
    language: str


@dataclasses.dataclass
class RenderContext:
    config: SynthConfig
    fonts: FontLibrary
    sampler: TextSampler

    @classmethod
    def build(cls, config: SynthConfig) -> RenderContext:
        return cls(config, font_library(config.fonts), TextSampler(config))

    def draw_text(self, rng: np.random.Generator, unit: str | None = None) -> tuple[str, str, str]:
        """``(text, unit, language)`` from the curriculum; raises ``Discarded`` if a character has no font."""
        unit = unit or draw(rng, self.config.unit_mix)
        language = draw(rng, self.config.language_mix)
        text = self.sampler.text(rng, unit, language)
        self.check_renderable(text)
        return text, unit, language

    def check_renderable(self, text: str) -> None:
        if not text.strip() or self.fonts.missing(text):
            raise Discarded("unrenderable", text)


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (height, width, 3)).copy()


def gradient(
    width: int, height: int, start: tuple[int, int, int], end: tuple[int, int, int], angle: float
) -> np.ndarray:
    """A linear gradient from ``start`` to ``end`` along ``angle`` (radians).

    Computed on a grid 8x coarser and resized linearly (exact for a linear ramp, and 20x cheaper at 1328 px).
    """
    small_w, small_h = max(2, width // 8), max(2, height // 8)
    xs = np.linspace(-0.5, 0.5, small_w, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, small_h, dtype=np.float32)[:, None]
    ramp = np.float32(np.cos(angle)) * xs + np.float32(np.sin(angle)) * ys
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    first, second = np.asarray(start, np.float32), np.asarray(end, np.float32)
    small = first + (second - first) * ramp[:, :, None]
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).round().astype(np.uint8)


def cover(image: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` scaled to cover ``width`` x ``height`` and cropped at a random offset."""
    scale = max(width / image.shape[1], height / image.shape[0])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(np.ascontiguousarray(image), size, interpolation=interpolation)
    top = int(rng.integers(0, scaled.shape[0] - height + 1))
    left = int(rng.integers(0, scaled.shape[1] - width + 1))
    return scaled[top : top + height, left : left + width]


def encode(image: np.ndarray, config: SynthConfig) -> bytes:
    """JPEG or PNG bytes of an RGB image."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if config.image_format == "png":
        return cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])[1].tobytes()
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])[1].tobytes()


def to_array(canvas: Image.Image) -> np.ndarray:
    return np.asarray(canvas.convert("RGB"))
