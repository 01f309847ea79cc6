"""Colours with names and the caption templates of the synthesiser, in English and Chinese.

Colours are drawn from a named palette so that the caption can say them; text and background are paired only when
their WCAG contrast ratio reaches ``min_contrast``. Captions quote the rendered text verbatim (docs/qwen_image.md §3:
``On a <color> background, <color> text "<text>".`` and variants).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Color:
    en: str
    zh: str
    rgb: tuple[int, int, int]


PALETTE: tuple[Color, ...] = (
    Color("white", "白色", (248, 248, 246)),
    Color("black", "黑色", (18, 18, 20)),
    Color("light grey", "浅灰色", (214, 214, 212)),
    Color("dark grey", "深灰色", (64, 66, 70)),
    Color("red", "红色", (200, 32, 40)),
    Color("dark red", "深红色", (120, 16, 24)),
    Color("orange", "橙色", (240, 130, 20)),
    Color("yellow", "黄色", (250, 220, 50)),
    Color("cream", "米色", (245, 236, 205)),
    Color("green", "绿色", (40, 150, 70)),
    Color("dark green", "深绿色", (20, 70, 40)),
    Color("light green", "浅绿色", (190, 235, 190)),
    Color("blue", "蓝色", (30, 90, 200)),
    Color("navy blue", "藏青色", (16, 30, 80)),
    Color("light blue", "浅蓝色", (190, 220, 250)),
    Color("teal", "青色", (0, 128, 128)),
    Color("purple", "紫色", (110, 50, 160)),
    Color("pink", "粉色", (250, 190, 210)),
    Color("brown", "棕色", (110, 70, 40)),
    Color("gold", "金色", (212, 175, 55)),
)


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    channels = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(channels <= 0.03928, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2])


def contrast(first: tuple[int, int, int], second: tuple[int, int, int]) -> float:
    """WCAG contrast ratio, 1 (same) to 21 (black on white)."""
    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def pick_color(rng: np.random.Generator) -> Color:
    return PALETTE[int(rng.integers(len(PALETTE)))]


def pick_text_color(rng: np.random.Generator, backgrounds: list[tuple[int, int, int]], min_contrast: float) -> Color:
    """A palette colour readable on every one of ``backgrounds``; the best available one if none reaches the bar."""
    scored = [(min(contrast(color.rgb, bg) for bg in backgrounds), color) for color in PALETTE]
    readable = [color for score, color in scored if score >= min_contrast]
    if readable:
        return readable[int(rng.integers(len(readable)))]
    return max(scored, key=lambda pair: pair[0])[1]


def pick_background(rng: np.random.Generator, min_contrast: float) -> Color:
    """A palette colour that has at least one readable text colour."""
    while True:
        color = pick_color(rng)
        if any(contrast(color.rgb, other.rgb) >= min_contrast for other in PALETTE):
            return color


PURE_EN: tuple[str, ...] = (
    'On a {bg} background, {fg} text "{text}".',
    '{Fg} text "{text}" on a {bg} background.',
    'The words "{text}" written in {fg} on a plain {bg} background.',
    'A {bg} background with the text "{text}" in {fg} letters.',
    'Text rendering: "{text}" in {fg} on {bg}.',
)
PURE_ZH: tuple[str, ...] = (
    "在{bg}背景上，{fg}文字“{text}”。",
    "{bg}背景上写着{fg}的文字“{text}”。",
    "{fg}文字“{text}”，背景为{bg}。",
    "一张{bg}背景的图片，上面用{fg}写着“{text}”。",
)
COMPOSITIONAL_EN: tuple[str, ...] = (
    'A photo of {medium} with {fg} text "{text}", placed in a real scene.',
    '{Medium} reading "{text}" in {fg} letters, photographed in a scene.',
    'In the scene there is {medium}; the {fg} text on it says "{text}".',
)
COMPOSITIONAL_ZH: tuple[str, ...] = (
    "一张照片，场景中有{medium}，上面用{fg}写着“{text}”。",
    "场景中的{medium}上写着{fg}文字“{text}”。",
    "照片里有{medium}，上面的{fg}文字是“{text}”。",
)
COMPLEX_EN: tuple[str, ...] = (
    'A {kind} with a {bg} background. It reads: "{text}".',
    'A {bg} {kind}. The text on it: "{text}".',
    'Design of a {kind} on {bg}, with the text "{text}".',
)
COMPLEX_ZH: tuple[str, ...] = (
    "一张{bg}背景的{kind}，上面写着：“{text}”。",
    "{bg}的{kind}，文字内容为“{text}”。",
    "一个{kind}设计，背景为{bg}，文字是“{text}”。",
)
TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("pure", "en"): PURE_EN,
    ("pure", "zh"): PURE_ZH,
    ("compositional", "en"): COMPOSITIONAL_EN,
    ("compositional", "zh"): COMPOSITIONAL_ZH,
    ("complex", "en"): COMPLEX_EN,
    ("complex", "zh"): COMPLEX_ZH,
}


def caption_language(rng: np.random.Generator, setting: str, text_language: str) -> str:
    """``en`` or ``zh``: the setting, or the text's language for ``match`` (mixed text: either)."""
    if setting != "match":
        return setting
    if text_language == "mixed":
        return "zh" if rng.random() < 0.5 else "en"
    return text_language


def caption(rng: np.random.Generator, mode: str, language: str, text: str, **names: str) -> str:
    """A caption from a random template of ``mode`` / ``language``; ``names`` fill the slots (already translated).

    A slot spelled with a capital (``{Fg}``) gets the name with its first letter upper-cased.
    """
    templates = TEMPLATES[(mode, language)]
    template = templates[int(rng.integers(len(templates)))]
    quoted = " ".join(text.split()) if language == "en" else _join_lines(text)
    values = dict(names, text=quoted)
    values.update({key[:1].upper() + key[1:]: value[:1].upper() + value[1:] for key, value in names.items()})
    return template.format(**values)


def _join_lines(text: str) -> str:
    """Lines joined for a caption: no space between two Chinese characters, one space otherwise."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    joined = ""
    for line in lines:
        if joined and not (_is_cjk(joined[-1]) and _is_cjk(line[0])):
            joined += " "
        joined += line
    return joined


def _is_cjk(char: str) -> bool:
    return "\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef"
