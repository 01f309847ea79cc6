"""Configuration of the text-rendering synthesiser (docs/qwen_image.md §3): modes, curriculum, fonts, output.

One ``SynthConfig`` drives all three modes. The curriculum knobs are the ``*_mix`` mappings (relative weights,
normalised when drawn) and ``resolutions``: start with ``unit_mix={"word": 1}`` and small Chinese tiers, move
towards paragraphs and rarer characters.

Chinese character tiers. No registry package ships the Table of General Standard Chinese Characters (2013;
3,500 / 3,000 / 1,605), so the tiers are the GB2312 levels from Python's ``gb2312`` codec and the GBK-only
characters as a rare tier, and they are named for what they are:

- ``gb2312_level1``: GB2312 level 1, 3,755 common characters (rows 16-55);
- ``gb2312_level2``: GB2312 level 2, 3,008 less common characters (rows 56-87);
- ``gbk_extra``: the Han characters of GBK that are not in GB2312 (about 14,000, many traditional or rare).
"""

from __future__ import annotations

from typing import Literal

import pydantic

from models.config import StrictModel
from pipelines.pools import PoolConfig

Mode = Literal["pure", "compositional", "complex"]
MODES: tuple[str, ...] = ("pure", "compositional", "complex")
Unit = Literal["word", "line", "paragraph"]
Language = Literal["en", "zh", "mixed"]
Tier = Literal["gb2312_level1", "gb2312_level2", "gbk_extra"]


def _check_mix(name: str, mix: dict[str, float]) -> dict[str, float]:
    if not mix or sum(mix.values()) <= 0 or any(weight < 0 for weight in mix.values()):
        raise ValueError(f"{name} needs at least one positive weight and no negative one, got {mix}")
    return mix


class FontConfig(StrictModel):
    """Where fonts come from. Every character is checked against each font's character map before drawing."""

    discover: bool = True  # add the fonts fontconfig lists (``fc-list``)
    files: list[str] = []  # font files added to the discovered ones (.ttf / .otf / .ttc: every face of a collection)
    # Substrings of "family style" that exclude a discovered face (symbol and hairline faces hurt legibility).
    exclude: list[str] = ["Math", "Light", "Thin"]
    # For text with Han characters, faces whose family contains one of these are preferred (simplified Chinese
    # glyph shapes); any face that covers the text is used when none of them does.
    zh_prefer: list[str] = ["CJK SC"]


class SynthConfig(StrictModel):
    """The synthesiser: which modes in which proportions, the text curriculum, sizes and output encoding."""

    seed: int = 0
    modes: dict[Mode, float] = {"pure": 1.0, "compositional": 1.0, "complex": 1.0}
    # Curriculum.
    unit_mix: dict[Unit, float] = {"word": 0.3, "line": 0.4, "paragraph": 0.3}
    language_mix: dict[Language, float] = {"en": 0.45, "zh": 0.45, "mixed": 0.1}
    tier_mix: dict[Tier, float] = {"gb2312_level1": 0.85, "gb2312_level2": 0.12, "gbk_extra": 0.03}
    resolutions: list[tuple[int, int]] = [(1328, 1328), (1664, 928), (928, 1664)]  # (width, height), drawn uniformly
    num_words_en: int = pydantic.Field(default=20000, ge=100)  # vocabulary: the most frequent words of wordfreq
    num_words_zh: int = pydantic.Field(default=30000, ge=100)
    number_ratio: float = pydantic.Field(default=0.08, ge=0, le=1)  # chance that a word slot holds a number
    # User text: UTF-8 files, one paragraph per line, drawn with probability ``text_file_ratio``.
    text_files: list[str] = []
    text_file_ratio: float = pydantic.Field(default=0.0, ge=0, le=1)
    # Rendering.
    fonts: FontConfig = FontConfig()
    min_font_px: int = pydantic.Field(default=16, ge=6)  # text that would need a smaller size is discarded
    min_contrast: float = pydantic.Field(default=4.5, ge=1, le=21)  # WCAG contrast ratio of text and background
    max_attempts: int = pydantic.Field(default=8, ge=1)  # paragraphs drawn per sample before it is reported failed
    caption_language: Literal["match", "en", "zh"] = "match"  # "match": the language of the rendered text
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = pydantic.Field(default=95, ge=50, le=100)
    pool: PoolConfig = PoolConfig(min_size=1, max_size=2, batch_size=8)

    @pydantic.field_validator("modes", "unit_mix", "language_mix", "tier_mix")
    @classmethod
    def _positive_mix(cls, mix: dict[str, float], info: pydantic.ValidationInfo) -> dict[str, float]:
        return _check_mix(info.field_name, mix)

    @pydantic.field_validator("resolutions")
    @classmethod
    def _sizes(cls, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not sizes:
            raise ValueError("resolutions needs at least one (width, height)")
        for width, height in sizes:
            if min(width, height) < 64 or max(width, height) > 8192:
                raise ValueError(f"resolution {(width, height)} is outside 64..8192 pixels a side")
        return sizes

    @pydantic.model_validator(mode="after")
    def _text_files(self) -> SynthConfig:
        if self.text_file_ratio > 0 and not self.text_files:
            raise ValueError("text_file_ratio > 0 needs text_files (UTF-8 files, one paragraph per line)")
        return self
