"""Flat 2-D scenes of named-colour shapes: one shape, or the background, recoloured."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from pipelines.synth import captions
from pipelines.synth.edits.config import (
    MIN_SHAPE_CONTRAST,
    EditSynthConfig,
    EditTriplet,
    instruction_language,
    pick,
)
from pipelines.synth.render import Discarded

# Flat shapes: colour and background changes.
SHAPE_NAMES: dict[str, str] = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "五角星",
    "diamond": "菱形",
    "hexagon": "六边形",
}
COLOR_EN = (
    "Change the color of the {old} {shape} to {new}.",
    "Make the {old} {shape} {new}.",
    "Recolor the {old} {shape} to {new}.",
    "Turn the {old} {shape} {new}.",
)
COLOR_ZH = ("把{old}的{shape}改成{new}。", "将{old}{shape}的颜色改为{new}。", "把{old}的{shape}涂成{new}。")
BACKGROUND_EN = (
    "Change the background to {new}.",
    "Make the background {new}.",
    "Replace the {old} background with a {new} one.",
)
BACKGROUND_ZH = ("把背景改成{new}。", "将背景颜色换成{new}。", "把{old}的背景换成{new}。")


POLYGONS: dict[str, tuple[int, float]] = {  # corners and the angle of the first one
    "square": (4, math.pi / 4),
    "diamond": (4, 0.0),
    "triangle": (3, -math.pi / 2),
    "hexagon": (6, 0.0),
}


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Corners of ``shape`` centred at ``(cx, cy)`` within ``radius``, turned by ``angle`` radians."""
    if shape == "star":
        corners = [(radius if k % 2 == 0 else radius * 0.45, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    else:
        count, start = POLYGONS[shape]
        corners = [(radius, start + k * 2 * math.pi / count) for k in range(count)]
    return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for r, a in corners]


@dataclasses.dataclass(frozen=True)
class FlatScene:
    """Shapes on a background: ``labels`` uint8 ``[H, W]`` (0: background, k: shape k - 1), one colour each."""

    labels: np.ndarray
    background: captions.Color
    shapes: tuple[str, ...]
    colors: tuple[captions.Color, ...]

    def image(
        self, background: captions.Color | None = None, recolor: dict[int, captions.Color] | None = None
    ) -> np.ndarray:
        """The RGB image, with the background or shapes (by number) in other colours."""
        colors = [background or self.background, *self.colors]
        for number, color in (recolor or {}).items():
            colors[number + 1] = color
        return np.asarray([color.rgb for color in colors], dtype=np.uint8)[self.labels]


def _visible(color: captions.Color, other: captions.Color) -> bool:
    return color.en != other.en and captions.contrast(color.rgb, other.rgb) >= MIN_SHAPE_CONTRAST


def sample_flat_scene(rng: np.random.Generator, width: int, height: int) -> FlatScene:
    """2 to 5 shapes apart from each other, each visible on the background."""
    background = captions.pick_color(rng)
    choices = [color for color in captions.PALETTE if _visible(color, background)]
    labels = Image.new("L", (width, height), 0)
    canvas = ImageDraw.Draw(labels)
    placed: list[tuple[float, float, float]] = []
    shapes, colors = [], []
    side, num_shapes = min(width, height), int(rng.integers(2, 6))
    for _ in range(num_shapes * 20):  # rejection sampling of places that keep apart
        if len(shapes) == num_shapes:
            break
        radius = float(rng.uniform(0.09, 0.2)) * side
        cx, cy = float(rng.uniform(radius + 2, width - radius - 2)), float(rng.uniform(radius + 2, height - radius - 2))
        if any(math.hypot(cx - x, cy - y) < radius + r + 0.02 * side for x, y, r in placed):
            continue
        shape = str(pick(rng, list(SHAPE_NAMES)))
        label = len(shapes) + 1
        if shape == "circle":
            canvas.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=label)
        else:
            turn = float(rng.uniform(-0.3, 0.3)) if shape != "diamond" else 0.0
            canvas.polygon(shape_polygon(shape, cx, cy, radius, turn), fill=label)
        placed.append((cx, cy, radius))
        shapes.append(shape)
        colors.append(pick(rng, choices))
    if len(shapes) < 2:
        raise Discarded("no_room")
    return FlatScene(np.asarray(labels), background, tuple(shapes), tuple(colors))


def _names(color: captions.Color, language: str) -> str:
    return color.zh if language == "zh" else color.en


def unique_shapes(scene: FlatScene) -> list[int]:
    """The shapes (by number) whose colour and shape no other shape of the scene shares: a name that points at one."""
    pairs = [(color.en, shape) for color, shape in zip(scene.colors, scene.shapes, strict=True)]
    return [number for number, pair in enumerate(pairs) if pairs.count(pair) == 1]


def make_color_edit(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    """Recolour one shape, named by colour and shape (a pair unique in the scene)."""
    scene = sample_flat_scene(rng, *config.size)
    unique = unique_shapes(scene)
    if not unique:
        raise Discarded("ambiguous")
    number = int(pick(rng, unique))
    old = scene.colors[number]
    choices = [color for color in captions.PALETTE if _visible(color, scene.background) and color.en != old.en]
    new = pick(rng, choices)
    language = instruction_language(rng, config)
    shape = SHAPE_NAMES[scene.shapes[number]] if language == "zh" else scene.shapes[number]
    template = pick(rng, COLOR_ZH if language == "zh" else COLOR_EN)
    instruction = template.format(old=_names(old, language), shape=shape, new=_names(new, language))
    region = scene.labels == number + 1
    return EditTriplet(scene.image(), scene.image(recolor={number: new}), instruction, "edit", "color", region=region)


def make_background_edit(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    """Change the background colour to one every shape stays visible on."""
    scene = sample_flat_scene(rng, *config.size)
    choices = [
        color
        for color in captions.PALETTE
        if color.en != scene.background.en and all(_visible(color, shape) for shape in scene.colors)
    ]
    if not choices:
        raise Discarded("no_color")
    new = pick(rng, choices)
    language = instruction_language(rng, config)
    template = pick(rng, BACKGROUND_ZH if language == "zh" else BACKGROUND_EN)
    instruction = template.format(old=_names(scene.background, language), new=_names(new, language))
    source, target = scene.image(), scene.image(background=new)
    return EditTriplet(source, target, instruction, "edit", "background", region=scene.labels == 0)
