"""Mode "compositional": text on a physical medium (paper, board, sign) composited into a background photograph.

The medium is drawn flat (colour, frame, texture, text), lit with a soft gradient, warped by a mild perspective
(corner jitter and a small rotation, kept small enough for the text to stay legible), given a drop shadow and
blended into the background, then the whole image gets sensor-like noise.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from PIL import Image, ImageDraw

from pipelines.synth import captions
from pipelines.synth.layout import draw_block, fit
from pipelines.synth.render import Discarded, RenderContext, Rendered, solid


@dataclasses.dataclass(frozen=True)
class Medium:
    en: str
    zh: str
    surfaces: tuple[str, ...]  # palette names the surface may take ("*": any palette colour)
    texture: float  # noise standard deviation on the surface, in grey levels
    frame: tuple[int, int, int] | None  # frame colour for boards


MEDIA: tuple[Medium, ...] = (
    Medium("a sheet of paper", "一张纸", ("white", "cream"), 3.0, None),
    Medium("a whiteboard", "一块白板", ("white",), 2.0, (150, 150, 155)),
    Medium("a chalkboard", "一块黑板", ("dark green", "black", "dark grey"), 6.0, (110, 70, 40)),
    Medium("a {color} sign", "一块{color}招牌", ("*",), 2.0, None),
    Medium("a piece of cardboard", "一块纸板", ("cream", "light grey"), 5.0, None),
)
PALETTE_BY_NAME = {color.en: color for color in captions.PALETTE}
MAX_SIZE_FRACTION = {"word": 0.45, "line": 0.22, "paragraph": 0.12}  # of the medium's height


def _medium_surface(context: RenderContext, rng: np.random.Generator, medium: Medium) -> captions.Color:
    if medium.surfaces == ("*",):
        return captions.pick_background(rng, context.config.min_contrast)
    return PALETTE_BY_NAME[medium.surfaces[int(rng.integers(len(medium.surfaces)))]]


def _texture(rng: np.random.Generator, surface: np.ndarray, strength: float) -> np.ndarray:
    """Soft lighting across the surface plus grain (one luma channel: cheaper than per-channel noise)."""
    height, width = surface.shape[:2]
    light = np.linspace(rng.uniform(0.82, 1.0), rng.uniform(0.95, 1.08), width, dtype=np.float32)[None, :, None]
    grain = rng.standard_normal((height, width, 1), dtype=np.float32) * strength
    return np.clip(surface.astype(np.float32) * light + grain, 0, 255).astype(np.uint8)


def _quad(rng: np.random.Generator, width: int, height: int, medium_w: int, medium_h: int) -> np.ndarray:
    """Destination corners of the medium: placed inside the canvas, slightly rotated and perspective-jittered."""
    angle = np.deg2rad(rng.uniform(-5, 5))
    corners = np.array([[0, 0], [medium_w, 0], [medium_w, medium_h], [0, medium_h]], np.float32)
    corners -= corners.mean(axis=0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    jitter = rng.uniform(-0.05, 0.05, (4, 2)).astype(np.float32) * np.float32([medium_w, medium_h])
    quad = corners @ rotation.T + jitter
    low, high = quad.min(axis=0), quad.max(axis=0)
    span_x = max(0.0, width - (high[0] - low[0]))
    span_y = max(0.0, height - (high[1] - low[1]))
    offset = np.float32([rng.uniform(0, span_x) - low[0], rng.uniform(0, span_y) - low[1]])
    return quad + offset


def _composite(rng: np.random.Generator, background: np.ndarray, medium: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """``medium`` warped onto ``quad`` of ``background`` with a soft drop shadow, then grain over the whole image.

    Warping, shadow and blending work on the quad's bounding box only (about half the canvas, where most time went).
    """
    height, width = background.shape[:2]
    medium_h, medium_w = medium.shape[:2]
    shift = np.float32([width * rng.uniform(0.005, 0.02), height * rng.uniform(0.005, 0.02)])
    sigma = max(1.0, width * 0.01)
    reach = float(np.abs(shift).max()) + 3 * sigma
    x0, y0 = (max(0, int(v - reach)) for v in quad.min(axis=0))
    x1, y1 = min(width, int(quad[:, 0].max() + reach) + 1), min(height, int(quad[:, 1].max() + reach) + 1)
    roi_w, roi_h = x1 - x0, y1 - y0
    source = np.array([[0, 0], [medium_w, 0], [medium_w, medium_h], [0, medium_h]], np.float32)
    matrix = cv2.getPerspectiveTransform(source, (quad - np.float32([x0, y0])).astype(np.float32))
    warped = cv2.warpPerspective(medium, matrix, (roi_w, roi_h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones((medium_h, medium_w), np.float32), matrix, (roi_w, roi_h))
    shadow = cv2.warpAffine(mask, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (roi_w, roi_h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigma)[:, :, None]
    mask = mask[:, :, None]
    scene = background[y0:y1, x0:x1].astype(np.float32) * (1 - 0.45 * shadow)
    image = background.astype(np.float32)
    image[y0:y1, x0:x1] = scene * (1 - mask) + warped.astype(np.float32) * mask
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(1.0, 3.0))
    return np.clip(image, 0, 255).astype(np.uint8)


def render_compositional(
    context: RenderContext, rng: np.random.Generator, width: int, height: int, background: np.ndarray | None
) -> Rendered:
    """One compositional image over ``background`` (RGB ``[height, width, 3]``); raises ``Discarded`` like pure."""
    if background is None or background.shape[:2] != (height, width):
        raise ValueError(f"compositional mode needs a {width}x{height} RGB background")
    config = context.config
    text, unit, language = context.draw_text(rng)
    face = context.fonts.pick(rng, text)
    if face is None:
        raise Discarded("unrenderable", text)

    medium = MEDIA[int(rng.integers(len(MEDIA)))]
    surface = _medium_surface(context, rng, medium)
    fg = captions.pick_text_color(rng, [surface.rgb], config.min_contrast)
    medium_w = int(width * rng.uniform(0.55, 0.85))
    aspect = {"word": (0.3, 0.55), "line": (0.3, 0.6), "paragraph": (0.6, 1.1)}[unit]
    medium_h = min(int(height * 0.85), int(medium_w * rng.uniform(*aspect)))

    flat = Image.fromarray(solid(medium_w, medium_h, surface.rgb))
    draw = ImageDraw.Draw(flat)
    frame = 0
    if medium.frame is not None:
        frame = max(3, int(min(medium_w, medium_h) * 0.04))
        draw.rectangle((0, 0, medium_w - 1, medium_h - 1), outline=medium.frame, width=frame)
    margin = frame + int(min(medium_w, medium_h) * rng.uniform(0.07, 0.12))
    box = (margin, margin, medium_w - margin, medium_h - margin)
    # A little above the floor: perspective and blending soften strokes.
    min_size = config.min_font_px + 2
    max_size = max(min_size, int(medium_h * MAX_SIZE_FRACTION[unit]))
    block = fit(text, face, box[2] - box[0], box[3] - box[1], min_size=min_size, max_size=max_size, spacing=1.2)
    if block is None:
        raise Discarded("too_long", text)
    align = "center" if unit != "paragraph" else str(rng.choice(["left", "center"]))
    draw_block(draw, block, box, fg.rgb, align, "middle")
    flat_pixels = _texture(rng, np.asarray(flat), medium.texture)

    image = _composite(rng, background, flat_pixels, _quad(rng, width, height, medium_w, medium_h))
    caption_language = captions.caption_language(rng, config.caption_language, language)
    color_name = surface.en if caption_language == "en" else surface.zh
    medium_name = (medium.en if caption_language == "en" else medium.zh).format(color=color_name)
    fg_name = fg.en if caption_language == "en" else fg.zh
    caption = captions.caption(rng, "compositional", caption_language, text, medium=medium_name, fg=fg_name)
    return Rendered(image, block.text, caption, language)
