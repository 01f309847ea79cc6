"""Text replacement: a word or short line replaced by another in the same face, size, colour and box."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipelines.synth import captions
from pipelines.synth.edits.config import (
    MAX_TEXT_LINES,
    EditSynthConfig,
    EditTriplet,
    pick,
)
from pipelines.synth.layout import Block, Box, draw_block, fit
from pipelines.synth.pure import MAX_SIZE_FRACTION
from pipelines.synth.render import Discarded, RenderContext, gradient, solid
from pipelines.synth.text import draw

# Text replacement.
TEXT_EN = (
    'Replace the text "{old}" with "{new}".',
    'Change the text "{old}" to "{new}".',
    'Change "{old}" to "{new}".',
)
TEXT_ZH = ("把文字“{old}”改成“{new}”。", "将“{old}”替换为“{new}”。", "把图中的“{old}”换成“{new}”。")


def _ink(block: Block, box: Box, align: str, valign: str, width: int, height: int) -> np.ndarray:
    """The pixels a block covers when drawn: bool ``[H, W]``."""
    canvas = Image.new("L", (width, height), 0)
    draw_block(ImageDraw.Draw(canvas), block, box, (255,), align, valign)
    return np.asarray(canvas) > 0


def make_text_replace(context: RenderContext, rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    """A text-replacement triplet; raises ``Discarded`` when the texts have no common face or do not fit."""
    width, height = config.size
    unit = draw(rng, config.text_units)
    old, _, language = context.draw_text(rng, unit)
    new = old
    for _ in range(8):
        new = context.sampler.text(rng, unit, language)
        if "".join(new.split()).lower() != "".join(old.split()).lower():
            break
    else:
        raise Discarded("same_text", old)
    context.check_renderable(new)
    face = context.fonts.pick(rng, old + new)
    if face is None:
        raise Discarded("unrenderable", old + new)

    first = captions.pick_background(rng, config.min_contrast)
    if rng.random() < 0.4:
        second = captions.pick_background(rng, config.min_contrast)
        color = captions.pick_text_color(rng, [first.rgb, second.rgb], config.min_contrast)
        pixels = gradient(width, height, first.rgb, second.rgb, float(rng.uniform(0, 2 * np.pi)))
    else:
        color = captions.pick_text_color(rng, [first.rgb], config.min_contrast)
        pixels = solid(width, height, first.rgb)
    margin_x, margin_y = width * rng.uniform(0.06, 0.12), height * rng.uniform(0.06, 0.12)
    box = (margin_x, margin_y, width - margin_x, height - margin_y)
    max_size = max(config.min_font_px, int(height * MAX_SIZE_FRACTION[unit] * rng.uniform(0.6, 1.0)))
    spacing = float(rng.uniform(1.1, 1.4))
    # One size for both texts: the largest at which each of them fits the box.
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    sizes = []
    for text in (old, new):
        block = fit(text, face, box_width, box_height, min_size=config.min_font_px, max_size=max_size, spacing=spacing)
        if block is None or len(block.lines) > MAX_TEXT_LINES:
            raise Discarded("too_long", text)
        sizes.append(block.size)
    size = min(sizes)
    blocks = [
        fit(text, face, box_width, box_height, min_size=size, max_size=size, spacing=spacing, max_lines=MAX_TEXT_LINES)
        for text in (old, new)
    ]
    if blocks[0] is None or blocks[1] is None:  # a smaller size can break a line differently; rare
        raise Discarded("too_long", old if blocks[0] is None else new)
    align, valign = str(pick(rng, ["left", "center", "center", "right"])), str(pick(rng, ["top", "middle", "bottom"]))
    images = []
    for block in blocks:
        canvas = Image.fromarray(pixels.copy())
        draw_block(ImageDraw.Draw(canvas), block, box, color.rgb, align, valign)
        images.append(np.asarray(canvas))
    region = _ink(blocks[0], box, align, valign, width, height) | _ink(blocks[1], box, align, valign, width, height)

    instruction_language = captions.caption_language(rng, "match", language)
    templates = TEXT_ZH if instruction_language == "zh" else TEXT_EN
    instruction = pick(rng, templates).format(old=" ".join(old.split()), new=" ".join(new.split()))
    return EditTriplet(images[0], images[1], instruction, "edit", "text_replace", blocks[1].text, region=region)
