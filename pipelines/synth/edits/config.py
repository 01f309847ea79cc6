"""The edit synthesiser's config, its kinds and the triplet it returns; the choices every kind draws alike."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Literal

import numpy as np
import pydantic

from models.config import StrictModel
from pipelines.pools import PoolConfig
from pipelines.synth.config import FontConfig, Language, SynthConfig, Tier
from store import columns as C
from store.columns import RENDERED_TEXT

logger = logging.getLogger(__name__)
EditKind = Literal["text_replace", "color", "background", "depth", "novel_view", "compose", "inpaint"]
# New kinds go last: a kind's place here seeds its rows' generators.
EDIT_KINDS: tuple[str, ...] = ("text_replace", "color", "background", "depth", "novel_view", "compose", "inpaint")
TASK_OF_KIND: dict[str, str] = {
    "text_replace": "edit",
    "color": "edit",
    "background": "edit",
    "depth": "depth",
    "novel_view": "novel_view",
    "compose": C.EDIT_PLUS,
    "inpaint": C.INPAINT,
}
EDIT_COLUMNS: tuple[str, ...] = (*C.SOURCE_COLUMNS, RENDERED_TEXT)
GOLDEN = (math.sqrt(5) - 1) / 2
MAX_TEXT_LINES = 2  # a word or a short line, wrapped at most once
MIN_SHAPE_CONTRAST = 1.6  # WCAG ratio between a shape and the background: enough to see the shape's outline


class EditSynthConfig(StrictModel):
    """The edit-triplet synthesiser: kind weights, image size, text curriculum and fonts, view changes, output."""

    seed: int = 0
    kinds: dict[EditKind, float] = {kind: 1.0 for kind in EDIT_KINDS}  # relative weights
    size: tuple[int, int] = (256, 256)  # (width, height)
    instruction_zh_ratio: float = pydantic.Field(default=0.3, ge=0, le=1)  # Chinese instructions (not text edits)
    # Text replacement: text edits are instructed in the language of the text (mixed text: either).
    text_units: dict[Literal["word", "line"], float] = {"word": 0.6, "line": 0.4}
    text_languages: dict[Language, float] = {"en": 0.5, "zh": 0.5}
    tier_mix: dict[Tier, float] = {"gb2312_level1": 1.0}
    fonts: FontConfig = FontConfig()
    min_font_px: int = pydantic.Field(default=16, ge=6)
    min_contrast: float = pydantic.Field(default=4.5, ge=1, le=21)
    max_attempts: int = pydantic.Field(default=8, ge=1)
    # Novel view: orbit angles in degrees, each to either side; an elevation change on some rows.
    azimuths: list[float] = [15.0, 30.0, 45.0, 90.0]
    elevations: list[float] = [10.0, 20.0]
    elevation_ratio: float = pydantic.Field(default=0.3, ge=0, le=1)
    image_format: Literal["jpeg", "png"] = "png"  # png keeps the ground truth exact
    jpeg_quality: int = pydantic.Field(default=95, ge=50, le=100)
    pool: PoolConfig = PoolConfig(min_size=1, max_size=2, batch_size=8)

    @pydantic.field_validator("kinds", "text_units", "text_languages", "tier_mix")
    @classmethod
    def _positive_mix(cls, mix: dict[str, float], info: pydantic.ValidationInfo) -> dict[str, float]:
        if not mix or sum(mix.values()) <= 0 or any(weight < 0 for weight in mix.values()):
            raise ValueError(f"{info.field_name} needs at least one positive weight and no negative one, got {mix}")
        return mix

    @pydantic.field_validator("size")
    @classmethod
    def _size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 64 or max(size) > 4096:
            raise ValueError(f"size {size} is outside 64..4096 pixels a side")
        return size

    @pydantic.field_validator("azimuths")
    @classmethod
    def _azimuths(cls, angles: list[float]) -> list[float]:
        if not angles or any(not 0 < angle <= 180 for angle in angles):
            raise ValueError(f"azimuths must be angles in (0, 180] degrees, got {angles}")
        return angles

    def synth_config(self) -> SynthConfig:
        """The text synthesiser's config for the text-replacement kind (fonts, vocabulary, sizes)."""
        return SynthConfig(
            seed=self.seed,
            unit_mix=dict(self.text_units),
            language_mix=dict(self.text_languages),
            tier_mix=dict(self.tier_mix),
            fonts=self.fonts,
            min_font_px=self.min_font_px,
            min_contrast=self.min_contrast,
            resolutions=[self.size],
            image_format=self.image_format,
            jpeg_quality=self.jpeg_quality,
        )


@dataclasses.dataclass(frozen=True)
class EditTriplet:
    """One generated triplet: RGB uint8 ``[H, W, 3]`` images (None, and ``error`` set, when it could not be made).

    ``source`` is the input image (Picture 1); ``references`` the further inputs of a multi-image edit (Picture 2
    onward, empty for single-input kinds). ``region`` (bool ``[H, W]``) marks the pixels a 2-D edit may change (text
    ink, the shape, the background, the pasted shape, the blanked area), in the target's frame; None for depth and
    novel view, where every pixel may.
    """

    source: np.ndarray | None
    target: np.ndarray | None
    instruction: str
    task: str
    kind: str
    rendered_text: str = ""
    error: str = ""
    region: np.ndarray | None = None
    references: tuple[np.ndarray, ...] = ()


def kind_of(config: EditSynthConfig, index: int) -> str:
    """The kind of row ``index``: the weight interval holding ``frac((index + 0.5) * golden ratio)``."""
    kinds = [kind for kind in EDIT_KINDS if config.kinds.get(kind, 0) > 0]
    weights = np.array([config.kinds[kind] for kind in kinds], dtype=np.float64)
    bounds = np.cumsum(weights / weights.sum())
    position = ((index + 0.5) * GOLDEN) % 1.0
    return kinds[min(int(np.searchsorted(bounds, position, side="right")), len(kinds) - 1)]


def pick(rng: np.random.Generator, options: list | tuple):
    return options[int(rng.integers(len(options)))]


def instruction_language(rng: np.random.Generator, config: EditSynthConfig) -> str:
    return "zh" if rng.random() < config.instruction_zh_ratio else "en"
