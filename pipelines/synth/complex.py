"""Mode "complex": structured layouts (slides, posters, UI cards, menus) defined as data, text filled in.

Templates live in ``templates.json`` beside this module (or a file named in the config): shapes (bars, panels,
rules, buttons) and text fields in canvas-relative boxes with alignment, font style, colour role and size. The
layout, alignment and formatting stay as designed; each field's placeholder is filled from the text sources.
Colours come from a theme drawn per image: ``bg``, ``panel``, ``accent``, ``text`` (readable on bg and panel) and
``on_accent`` (readable on accent).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Literal

import numpy as np
import pydantic
from PIL import Image, ImageDraw

from models.config import StrictModel
from pipelines.synth import captions
from pipelines.synth.fonts import FontFace
from pipelines.synth.layout import Block, Box, draw_block, fit, reading_order
from pipelines.synth.render import Discarded, RenderContext, Rendered, solid
from pipelines.synth.text import draw

TEMPLATES_PATH = pathlib.Path(__file__).with_name("templates.json")
KIND_NAMES = {
    "slide": ("presentation slide", "演示文稿页面"),
    "poster": ("poster", "海报"),
    "ui_card": ("app interface card", "应用界面卡片"),
    "menu": ("menu", "菜单"),
}
RelativeBox = tuple[float, float, float, float]


class Shape(StrictModel):
    kind: Literal["rect", "line"]
    box: RelativeBox
    color: Literal["accent", "panel", "text", "on_accent"]
    radius: float = 0.0  # corner radius, fraction of the canvas's short side
    width: float = 0.004  # line width, fraction of the canvas's short side


class Field(StrictModel):
    content: Literal["title", "subtitle", "paragraph", "bullets", "short", "number", "menu"]
    box: RelativeBox
    align: Literal["left", "center", "right"] = "left"
    valign: Literal["top", "middle", "bottom"] = "top"
    style: Literal["any", "regular", "bold", "serif", "sans"] = "any"
    color: Literal["text", "on_accent"] = "text"
    max_size: float = pydantic.Field(default=0.06, gt=0, le=0.5)  # largest font size, fraction of canvas height
    num_items: tuple[int, int] = (3, 5)  # bullets and menu rows, inclusive range


class Template(StrictModel):
    name: str
    kind: Literal["slide", "poster", "ui_card", "menu"]
    shapes: list[Shape] = []
    fields: list[Field]


@functools.lru_cache(maxsize=4)
def load_templates(path: str = str(TEMPLATES_PATH)) -> tuple[Template, ...]:
    """Templates from a JSON list; ``ValueError`` naming the file and the problem."""
    try:
        raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        return tuple(Template.model_validate(item) for item in raw)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load synthesis templates from {path}: {error}") from None


def _theme(rng: np.random.Generator, min_contrast: float) -> dict[str, captions.Color]:
    bg = captions.pick_background(rng, min_contrast)
    text = captions.pick_text_color(rng, [bg.rgb], min_contrast)
    panels = [c for c in captions.PALETTE if c != bg and captions.contrast(c.rgb, text.rgb) >= min_contrast]
    panel = panels[int(rng.integers(len(panels)))] if panels else bg
    accents = [c for c in captions.PALETTE if captions.contrast(c.rgb, bg.rgb) >= 1.5]
    accent = accents[int(rng.integers(len(accents)))] if accents else text
    on_accent = captions.pick_text_color(rng, [accent.rgb], min_contrast)
    return {"bg": bg, "panel": panel, "accent": accent, "text": text, "on_accent": on_accent}


def _pixels(box: RelativeBox, width: int, height: int) -> Box:
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def _content(context: RenderContext, rng: np.random.Generator, content: str, language: str) -> str:
    sampler = context.sampler
    if content == "title":
        return sampler.line(rng, language, int(rng.integers(1, 4)))
    if content == "subtitle":
        return sampler.line(rng, language, int(rng.integers(3, 6)))
    if content == "paragraph":  # the text files (``text_file_ratio``) feed paragraph fields
        return sampler.text(rng, "paragraph", language)
    if content == "number":
        return sampler.number(rng, "zh" if language == "zh" else "en")
    return sampler.word(rng, language) if rng.random() < 0.7 else sampler.number(rng, language)


def _face(context: RenderContext, rng: np.random.Generator, texts: list[str], style: str) -> FontFace:
    """One face for all ``texts`` of a field (a list keeps one typeface); ``Discarded`` if none covers them."""
    joined = "".join(texts)
    context.check_renderable(joined)
    face = context.fonts.pick(rng, joined, style)
    if face is None:
        raise Discarded("unrenderable", joined)
    return face


def _fit(context: RenderContext, text: str, face: FontFace, box: Box, max_size: int, lines: int) -> Block:
    min_size = context.config.min_font_px
    block = fit(text, face, box[2] - box[0], box[3] - box[1], min_size=min_size, max_size=max_size, max_lines=lines)
    if block is None:
        raise Discarded("too_long", text)
    return block


def _rows(
    context: RenderContext, rng: np.random.Generator, field: Field, box: Box, language: str, max_size: int
) -> list[tuple[Box, Block, str]]:
    """Bullets or menu rows in one face per column and one size: ``(box, block, align)`` per drawn text."""
    num_rows = int(rng.integers(field.num_items[0], field.num_items[1] + 1))
    row_height = (box[3] - box[1]) / num_rows
    size = min(max_size, int(row_height / 1.4))
    columns: list[list[tuple[Box, str]]] = [[], []]  # names / items, then prices
    for row in range(num_rows):
        top, bottom = box[1] + row * row_height, box[1] + (row + 1) * row_height
        if field.content == "bullets":
            item = context.sampler.line(rng, language, int(rng.integers(2, 5)))
            columns[0].append(((box[0] + 1.3 * size, top, box[2], bottom), item))
            continue
        name = " ".join(context.sampler.word(rng, language) for _ in range(int(rng.integers(1, 3))))
        symbol = "¥" if language == "zh" else "$"
        price = f"{symbol}{rng.integers(2, 200)}" + (f".{rng.integers(0, 100):02d}" if rng.random() < 0.4 else "")
        split = box[0] + 0.7 * (box[2] - box[0])
        columns[0].append(((box[0], top, split - 0.03 * (box[2] - box[0]), bottom), name))
        columns[1].append(((split, top, box[2], bottom), price))
    parts: list[tuple[Box, FontFace, str, str]] = []
    for column, align in zip(columns, ("left", "right"), strict=True):
        if column:
            face = _face(context, rng, [text for _, text in column], field.style)
            parts.extend((part_box, face, text, align) for part_box, text in column)
    common = min(_fit(context, text, face, part_box, size, 1).size for part_box, face, text, _ in parts)
    return [(part_box, _fit(context, text, face, part_box, common, 1), align) for part_box, face, text, align in parts]


def render_complex(
    context: RenderContext, rng: np.random.Generator, width: int, height: int, background: np.ndarray | None = None
) -> Rendered:
    """One complex-mode image from a random template; raises ``Discarded`` when a field cannot be filled."""
    config = context.config
    templates = load_templates()
    template = templates[int(rng.integers(len(templates)))]
    language = draw(rng, config.language_mix)
    theme = _theme(rng, config.min_contrast)
    short = min(width, height)

    canvas = Image.fromarray(solid(width, height, theme["bg"].rgb))
    painter = ImageDraw.Draw(canvas)
    for shape in template.shapes:
        x0, y0, x1, y1 = _pixels(shape.box, width, height)
        color = theme[shape.color].rgb
        if shape.kind == "line":
            painter.line((x0, y0, x1, y1), fill=color, width=max(1, round(shape.width * short)))
        else:
            painter.rounded_rectangle((x0, y0, x1, y1), radius=shape.radius * short, fill=color)

    drawn: list[tuple[Box, str]] = []
    for field in template.fields:
        box = _pixels(field.box, width, height)
        color = theme[field.color].rgb
        max_size = max(config.min_font_px, int(field.max_size * height))
        if field.content in ("bullets", "menu"):
            for part_box, block, align in _rows(context, rng, field, box, language, max_size):
                lines = draw_block(painter, block, part_box, color, align, "middle")
                drawn.extend(lines)
                if field.content == "bullets":
                    (_, top, _, bottom), _ = lines[0]
                    radius, centre = block.size * 0.18, (top + bottom) / 2
                    left = part_box[0] - 0.9 * block.size
                    painter.ellipse((left - radius, centre - radius, left + radius, centre + radius), fill=color)
            continue
        text = _content(context, rng, field.content, language)
        block = _fit(context, text, _face(context, rng, [text], field.style), box, max_size, 12)
        drawn.extend(draw_block(painter, block, box, color, field.align, field.valign))

    rendered_text = "\n".join(reading_order(drawn))
    caption_language = captions.caption_language(rng, config.caption_language, language)
    kind_en, kind_zh = KIND_NAMES[template.kind]
    names = (
        {"kind": kind_en, "bg": theme["bg"].en} if caption_language == "en" else {"kind": kind_zh, "bg": theme["bg"].zh}
    )
    caption = captions.caption(rng, "complex", caption_language, rendered_text, **names)
    return Rendered(np.asarray(canvas), rendered_text, caption, language)
