"""Text layout for the synthesiser: line breaking, fitting a text into a box, drawing it, reading order.

Breaking follows the script: Latin words break at spaces (a word wider than the box breaks between letters), Han
characters break anywhere, and closing punctuation never starts a line. ``fit`` finds the largest font size at
which the wrapped text fits its box; a text that does not fit at the smallest allowed size is not drawn.
"""

from __future__ import annotations

import dataclasses
import re

from PIL import ImageDraw, ImageFont

from pipelines.synth.fonts import FontFace

_TOKEN = re.compile(r"\s+|[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+")
NO_LINE_START = set("，。、；：！？）》」』”’,.;:!?)%")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def tokens(text: str) -> list[tuple[str, bool]]:
    """``(token, space_before)`` pairs; closing punctuation is glued to the token before it."""
    result: list[tuple[str, bool]] = []
    space = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token.isspace():
            space = True
            continue
        if result and not space and token[0] in NO_LINE_START:
            previous, previous_space = result[-1]
            result[-1] = (previous + token, previous_space)
        else:
            result.append((token, space and bool(result)))
        space = False
    return result


def wrap(text: str, font: ImageFont.FreeTypeFont, max_width: float, break_words: bool = True) -> list[str] | None:
    """Lines of ``text`` no wider than ``max_width`` (explicit newlines start new lines).

    A token wider than the line is broken between characters, or, with ``break_words=False``, makes the result None.
    """
    lines: list[str] = []
    space_width = font.getlength(" ")
    for paragraph in text.split("\n"):
        current, width = "", 0.0
        for token, space_before in tokens(paragraph):
            token_width = font.getlength(token)
            gap = space_width if space_before and current else 0.0
            if current and width + gap + token_width <= max_width:
                current, width = current + (" " if gap else "") + token, width + gap + token_width
                continue
            if current:
                lines.append(current)
            current, width = "", 0.0
            if token_width <= max_width:
                current, width = token, token_width
                continue
            if not break_words:
                return None
            for char in token:  # a token wider than the box: break between characters
                char_width = font.getlength(char)
                if current and width + char_width > max_width:
                    lines.append(current)
                    current, width = "", 0.0
                current, width = current + char, width + char_width
        if current:
            lines.append(current)
    return lines


@dataclasses.dataclass(frozen=True)
class Block:
    """A text laid out in one face and size."""

    lines: tuple[str, ...]
    face: FontFace
    size: int
    line_height: int

    @property
    def font(self) -> ImageFont.FreeTypeFont:
        return self.face.font(self.size)

    @property
    def height(self) -> int:
        return self.line_height * len(self.lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _line_height(font: ImageFont.FreeTypeFont, spacing: float) -> int:
    ascent, descent = font.getmetrics()
    return max(1, round((ascent + descent) * spacing))


def fit(
    text: str,
    face: FontFace,
    width: float,
    height: float,
    *,
    min_size: int,
    max_size: int,
    spacing: float = 1.15,
    max_lines: int | None = None,
) -> Block | None:
    """The largest size in ``[min_size, max_size]`` at which ``text`` wraps into ``width`` x ``height``; None if none."""

    def layout(size: int, break_words: bool) -> Block | None:
        font = face.font(size)
        lines = wrap(text, font, width, break_words)
        if not lines:
            return None
        block = Block(tuple(lines), face, size, _line_height(font, spacing))
        return block if block.height <= height and (max_lines is None or len(lines) <= max_lines) else None

    if max_size < min_size:
        return None
    # Words are broken only when no size keeps them whole ("thickne / ss" reads as two words).
    break_words = layout(min_size, False) is None
    if break_words and layout(min_size, True) is None:
        return None
    low, high = min_size, max_size  # invariant: layout(low) fits
    while low < high:
        middle = (low + high + 1) // 2
        if layout(middle, break_words) is not None:
            low = middle
        else:
            high = middle - 1
    return layout(low, break_words)


def draw_block(
    draw: ImageDraw.ImageDraw,
    block: Block,
    box: Box,
    fill: tuple[int, ...],
    align: str = "left",
    valign: str = "top",
) -> list[tuple[Box, str]]:
    """Draw ``block`` inside ``box``; returns each drawn line with its pixel box."""
    x0, y0, x1, y1 = box
    font = block.font
    ascent, _ = font.getmetrics()
    top = {"top": y0, "middle": (y0 + y1 - block.height) / 2, "bottom": y1 - block.height}[valign]
    drawn = []
    for number, line in enumerate(block.lines):
        line_width = font.getlength(line)
        left = {"left": x0, "center": (x0 + x1 - line_width) / 2, "right": x1 - line_width}[align]
        y = top + number * block.line_height
        draw.text((left, y + ascent), line, font=font, fill=fill, anchor="ls")
        drawn.append(((left, y, left + line_width, y + block.line_height), line))
    return drawn


def reading_order(lines: list[tuple[Box, str]]) -> list[str]:
    """Rows of text top to bottom: boxes whose vertical centres are within half a line height form one row, whose
    texts are joined left to right with a space."""
    ordered = sorted(lines, key=lambda item: (item[0][1] + item[0][3]) / 2)
    rows: list[list[tuple[Box, str]]] = []
    for item in ordered:
        centre = (item[0][1] + item[0][3]) / 2
        if rows:
            last = rows[-1][-1][0]
            if abs(centre - (last[1] + last[3]) / 2) < 0.5 * max(1.0, min(last[3] - last[1], item[0][3] - item[0][1])):
                rows[-1].append(item)
                continue
        rows.append([item])
    return [" ".join(text for _, text in sorted(row, key=lambda item: item[0][0])) for row in rows]
