"""Mode "pure": a word, line or paragraph on a plain or gradient background, sized and spaced to the canvas."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipelines.synth import captions
from pipelines.synth.layout import draw_block, fit
from pipelines.synth.render import Discarded, RenderContext, Rendered, gradient, solid

# Largest font size as a fraction of the canvas height, by unit: a word may fill the canvas, a paragraph may not.
MAX_SIZE_FRACTION = {"word": 0.3, "line": 0.16, "paragraph": 0.09}


def render_pure(
    context: RenderContext, rng: np.random.Generator, width: int, height: int, background: np.ndarray | None = None
) -> Rendered:
    """One pure-mode image; raises ``Discarded`` when the text has no font or does not fit."""
    config = context.config
    text, unit, language = context.draw_text(rng)
    face = context.fonts.pick(rng, text)
    if face is None:
        raise Discarded("unrenderable", text)

    first = captions.pick_background(rng, config.min_contrast)
    if rng.random() < 0.4:
        second = captions.pick_background(rng, config.min_contrast)
        fg = captions.pick_text_color(rng, [first.rgb, second.rgb], config.min_contrast)
        pixels = gradient(width, height, first.rgb, second.rgb, float(rng.uniform(0, 2 * np.pi)))
        bg_en, bg_zh = f"{first.en}-to-{second.en} gradient", f"{first.zh}到{second.zh}渐变"
    else:
        fg = captions.pick_text_color(rng, [first.rgb], config.min_contrast)
        pixels = solid(width, height, first.rgb)
        bg_en, bg_zh = first.en, first.zh

    margin_x, margin_y = width * rng.uniform(0.06, 0.12), height * rng.uniform(0.06, 0.12)
    box = (margin_x, margin_y, width - margin_x, height - margin_y)
    max_size = max(config.min_font_px, int(height * MAX_SIZE_FRACTION[unit] * rng.uniform(0.6, 1.0)))
    block = fit(
        text,
        face,
        box[2] - box[0],
        box[3] - box[1],
        min_size=config.min_font_px,
        max_size=max_size,
        spacing=float(rng.uniform(1.1, 1.5)),
    )
    if block is None:
        raise Discarded("too_long", text)

    canvas = Image.fromarray(pixels)
    align = "center" if unit != "paragraph" or rng.random() < 0.3 else str(rng.choice(["left", "right"]))
    valign = "middle" if unit != "paragraph" or rng.random() < 0.5 else "top"
    draw_block(ImageDraw.Draw(canvas), block, box, fg.rgb, align, valign)

    caption_language = captions.caption_language(rng, config.caption_language, language)
    names = {"bg": bg_en, "fg": fg.en} if caption_language == "en" else {"bg": bg_zh, "fg": fg.zh}
    caption = captions.caption(rng, "pure", caption_language, text, **names)
    return Rendered(np.asarray(canvas), block.text, caption, language)
