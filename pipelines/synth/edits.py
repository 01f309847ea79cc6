"""Synthetic edit triplets (source image, instruction, target image) with exact ground truth.

Five kinds, each a pure function of ``(config, index)``:

- ``text_replace``: a word or short line rendered like the synthesiser's pure mode (plain or gradient background,
  a font, colour and position); the target is the same image with the text replaced by another one in the same
  face, size, colour, alignment and box. ``Replace the text "OLD" with "NEW".`` (``把文字“旧”改成“新”。`` for
  Chinese text); ``rendered_text`` is the new text as drawn.
- ``color`` / ``background``: a flat 2-D scene of named-colour shapes (circle, square, triangle, star, diamond,
  hexagon) on a named-colour background, drawn without anti-aliasing; the target recolours one shape (named by
  colour and shape, unique in the scene) or the background. Only that shape's (or the background's) pixels change.
- ``depth``: a 3-D scene of ``pipelines.synth.scenes`` and its exact depth map as an image (near = bright, see
  ``scenes.depth_to_image``). ``Estimate the depth map of this image.``
- ``novel_view``: the same 3-D scene seen from the camera orbited about the scene centre by 15 to 90 degrees (left
  or right, sometimes also up or down). ``Rotate the camera 30 degrees to the left around the scene.``

Which kind row ``index`` gets follows a low-discrepancy sequence over the kind weights (golden-ratio steps), so any
run of consecutive rows holds the kinds in about their proportions; everything else is drawn from a generator
seeded with ``[seed, kind, index]``. A triplet that cannot be made in ``max_attempts`` draws (text too long for
the canvas, no font covering it) comes back with no images and an ``error``; in the dataset, with empty
``image_bytes`` and a ``source_error``.

Dataset columns: ``pipelines.schema.SOURCE_COLUMNS`` plus ``rendered_text``; ``task`` is ``edit`` (text, colour,
background), ``depth`` or ``novel_view``; ``source`` is ``synthetic/edit-<kind>``; ``key`` is
``edit-<kind>-s<seed>-<index>``.

    python -m pipelines.synth.edits --num 12 --out outputs/edit_preview.png
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import pathlib
import re
from typing import Literal

import numpy as np
import pydantic
import ray.data
from PIL import Image, ImageDraw

from models.config import StrictModel
from models.imageio import save_png, to_grid
from pipelines import schema
from pipelines.pools import PoolConfig, map_stage
from pipelines.sources import make_batch
from pipelines.synth import captions, scenes
from pipelines.synth.config import FontConfig, Language, SynthConfig, Tier
from pipelines.synth.layout import Block, Box, draw_block, fit
from pipelines.synth.preview import short_label, thumbnail
from pipelines.synth.pure import MAX_SIZE_FRACTION
from pipelines.synth.render import Discarded, RenderContext, encode, gradient, solid
from pipelines.synth.source import RENDERED_TEXT
from pipelines.synth.text import draw

logger = logging.getLogger(__name__)
EditKind = Literal["text_replace", "color", "background", "depth", "novel_view"]
EDIT_KINDS: tuple[str, ...] = ("text_replace", "color", "background", "depth", "novel_view")
TASK_OF_KIND: dict[str, str] = {
    "text_replace": "edit",
    "color": "edit",
    "background": "edit",
    "depth": "depth",
    "novel_view": "novel_view",
}
EDIT_COLUMNS: tuple[str, ...] = (*schema.SOURCE_COLUMNS, RENDERED_TEXT)
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

    ``region`` (bool ``[H, W]``) marks the pixels a 2-D edit may change (text ink, the shape, the background);
    None for depth and novel view, where every pixel may.
    """

    source: np.ndarray | None
    target: np.ndarray | None
    instruction: str
    task: str
    kind: str
    rendered_text: str = ""
    error: str = ""
    region: np.ndarray | None = None


def kind_of(config: EditSynthConfig, index: int) -> str:
    """The kind of row ``index``: the weight interval holding ``frac((index + 0.5) * golden ratio)``."""
    kinds = [kind for kind in EDIT_KINDS if config.kinds.get(kind, 0) > 0]
    weights = np.array([config.kinds[kind] for kind in kinds], dtype=np.float64)
    bounds = np.cumsum(weights / weights.sum())
    position = ((index + 0.5) * GOLDEN) % 1.0
    return kinds[min(int(np.searchsorted(bounds, position, side="right")), len(kinds) - 1)]


def _pick(rng: np.random.Generator, options: list | tuple):
    return options[int(rng.integers(len(options)))]


def _instruction_language(rng: np.random.Generator, config: EditSynthConfig) -> str:
    return "zh" if rng.random() < config.instruction_zh_ratio else "en"


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
    align, valign = str(_pick(rng, ["left", "center", "center", "right"])), str(_pick(rng, ["top", "middle", "bottom"]))
    images = []
    for block in blocks:
        canvas = Image.fromarray(pixels.copy())
        draw_block(ImageDraw.Draw(canvas), block, box, color.rgb, align, valign)
        images.append(np.asarray(canvas))
    region = _ink(blocks[0], box, align, valign, width, height) | _ink(blocks[1], box, align, valign, width, height)

    instruction_language = captions.caption_language(rng, "match", language)
    templates = TEXT_ZH if instruction_language == "zh" else TEXT_EN
    instruction = _pick(rng, templates).format(old=" ".join(old.split()), new=" ".join(new.split()))
    return EditTriplet(images[0], images[1], instruction, "edit", "text_replace", blocks[1].text, region=region)


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
        shape = str(_pick(rng, list(SHAPE_NAMES)))
        label = len(shapes) + 1
        if shape == "circle":
            canvas.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=label)
        else:
            turn = float(rng.uniform(-0.3, 0.3)) if shape != "diamond" else 0.0
            canvas.polygon(shape_polygon(shape, cx, cy, radius, turn), fill=label)
        placed.append((cx, cy, radius))
        shapes.append(shape)
        colors.append(_pick(rng, choices))
    if len(shapes) < 2:
        raise Discarded("no_room")
    return FlatScene(np.asarray(labels), background, tuple(shapes), tuple(colors))


def _names(color: captions.Color, language: str) -> str:
    return color.zh if language == "zh" else color.en


def make_color_edit(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    """Recolour one shape, named by colour and shape (a pair unique in the scene)."""
    scene = sample_flat_scene(rng, *config.size)
    pairs = [(color.en, shape) for color, shape in zip(scene.colors, scene.shapes, strict=True)]
    unique = [number for number, pair in enumerate(pairs) if pairs.count(pair) == 1]
    if not unique:
        raise Discarded("ambiguous")
    number = int(_pick(rng, unique))
    old = scene.colors[number]
    choices = [color for color in captions.PALETTE if _visible(color, scene.background) and color.en != old.en]
    new = _pick(rng, choices)
    language = _instruction_language(rng, config)
    shape = SHAPE_NAMES[scene.shapes[number]] if language == "zh" else scene.shapes[number]
    template = _pick(rng, COLOR_ZH if language == "zh" else COLOR_EN)
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
    new = _pick(rng, choices)
    language = _instruction_language(rng, config)
    template = _pick(rng, BACKGROUND_ZH if language == "zh" else BACKGROUND_EN)
    instruction = template.format(old=_names(scene.background, language), new=_names(new, language))
    source, target = scene.image(), scene.image(background=new)
    return EditTriplet(source, target, instruction, "edit", "background", region=scene.labels == 0)


# 3-D scenes: depth and novel views.
DEPTH_EN = (
    "Estimate the depth map of this image.",
    "Generate the depth map of this image.",
    "Predict the depth of this scene as a grayscale image, nearer is brighter.",
    "Turn this image into its depth map.",
)
DEPTH_ZH = ("估计这张图片的深度图。", "生成这张图片的深度图。", "预测这个场景的深度图，越近越亮。")
SIDE_ZH = {"left": "左", "right": "右", "up": "上", "down": "下"}


def sample_view(rng: np.random.Generator) -> tuple[scenes.Scene, scenes.Camera]:
    scene = scenes.sample_scene(rng)
    return scene, scenes.sample_camera(rng, scene)


def sample_view_change(rng: np.random.Generator, camera: scenes.Camera, config: EditSynthConfig) -> tuple[float, float]:
    """``(azimuth, elevation)`` in degrees (positive: left, up), keeping the camera 5 to 75 degrees above ground."""
    azimuth = float(_pick(rng, config.azimuths)) * (1 if rng.random() < 0.5 else -1)
    elevation = 0.0
    if config.elevations and rng.random() < config.elevation_ratio:
        offset = np.asarray(camera.position) - np.asarray(camera.look_at)
        current = math.degrees(math.asin(offset[1] / np.linalg.norm(offset)))
        options = [e * sign for e in config.elevations for sign in (1, -1) if 5 <= current + e * sign <= 75]
        elevation = float(_pick(rng, options)) if options else 0.0
    return azimuth, elevation


def view_instruction(rng: np.random.Generator, azimuth: float, elevation: float, language: str) -> str:
    side = "left" if azimuth > 0 else "right"
    tilt = "up" if elevation > 0 else "down"
    if language == "zh":
        turn = f"向{SIDE_ZH[side]}旋转{abs(azimuth):g}度"
        if elevation:
            turn += f"，再向{SIDE_ZH[tilt]}旋转{abs(elevation):g}度"
        return _pick(rng, ["将相机围绕场景{turn}。", "相机绕着场景{turn}。"]).format(turn=turn)
    turn = f"{abs(azimuth):g} degrees to the {side}"
    if elevation:
        turn += f" and {abs(elevation):g} degrees {tilt}"
    templates = ["Rotate the camera {turn} around the scene.", "Move the camera {turn} around the objects."]
    return _pick(rng, templates).format(turn=turn)


def make_depth(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    scene, camera = sample_view(rng)
    rgb, depth = scenes.render(scene, camera, *config.size)
    language = _instruction_language(rng, config)
    instruction = _pick(rng, DEPTH_ZH if language == "zh" else DEPTH_EN)
    return EditTriplet(rgb, scenes.depth_to_image(depth), instruction, "depth", "depth")


def make_novel_view(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    scene, camera = sample_view(rng)
    azimuth, elevation = sample_view_change(rng, camera, config)
    source, _ = scenes.render(scene, camera, *config.size)
    target, _ = scenes.render(scene, camera.orbit(azimuth, elevation), *config.size)
    instruction = view_instruction(rng, azimuth, elevation, _instruction_language(rng, config))
    return EditTriplet(source, target, instruction, "novel_view", "novel_view")


MAKERS = {
    "color": make_color_edit,
    "background": make_background_edit,
    "depth": make_depth,
    "novel_view": make_novel_view,
}


class EditGenerator:
    """Triplets of one config; the text context (fonts, vocabulary: seconds) is built on the first text row."""

    def __init__(self, config: EditSynthConfig):
        self.config = config
        self._context: RenderContext | None = None

    @property
    def context(self) -> RenderContext:
        if self._context is None:
            self._context = RenderContext.build(self.config.synth_config())
        return self._context

    def rng(self, kind: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, EDIT_KINDS.index(kind), index])

    def generate(self, index: int) -> EditTriplet:
        """The triplet of row ``index`` (a non-negative int)."""
        kind = kind_of(self.config, index)
        rng = self.rng(kind, index)
        reason = ""
        for _ in range(self.config.max_attempts):
            try:
                if kind == "text_replace":
                    return make_text_replace(self.context, rng, self.config)
                return MAKERS[kind](rng, self.config)
            except Discarded as discarded:
                reason = discarded.reason
        return EditTriplet(None, None, "", TASK_OF_KIND[kind], kind, error=f"edit_synth:{kind}:{reason}")


@functools.lru_cache(maxsize=4)
def _generator(config_json: str) -> EditGenerator:
    return EditGenerator(EditSynthConfig.model_validate_json(config_json))


def generate_edit(config: EditSynthConfig, index: int) -> EditTriplet:
    """The triplet of row ``index``: the same for the same ``(config, index)`` in any process."""
    return _generator(config.model_dump_json()).generate(index)


# Ray Data source.
def source_name(kind: str) -> str:
    return f"synthetic/edit-{kind}"


def edit_key(config: EditSynthConfig, kind: str, index: int) -> str:
    return f"edit-{kind}-s{config.seed}-{index:09d}"


def triplets_batch(config: EditSynthConfig, indices: list[int], triplets: list[EditTriplet]) -> dict[str, np.ndarray]:
    """``EDIT_COLUMNS`` for generated triplets (rows grouped by kind: ``make_batch`` takes one source name)."""
    synth = config.synth_config()  # its image_format and jpeg_quality are ours
    parts = []
    for kind in EDIT_KINDS:
        rows = [(index, t) for index, t in zip(indices, triplets, strict=True) if t.kind == kind]
        if not rows:
            continue
        made = [t for _, t in rows]
        batch = make_batch(
            source_name(kind),
            [encode(t.target, synth) if t.target is not None else b"" for t in made],
            [t.instruction for t in made],
            [edit_key(config, kind, index) for index, _ in rows],
            [""] * len(rows),
            [t.error for t in made],
            task=[t.task for t in made],
            source_images=[encode(t.source, synth) if t.source is not None else b"" for t in made],
        )
        batch[RENDERED_TEXT] = np.array([t.rendered_text for t in made], dtype=object)
        parts.append(batch)
    return {column: np.concatenate([part[column] for part in parts]) for column in EDIT_COLUMNS}


class EditStage:
    """Ray Data stage: ``range`` rows (``id``) in, triplet records out."""

    def __init__(self, config_json: str):
        self.config = EditSynthConfig.model_validate_json(config_json)
        self.generator = EditGenerator(self.config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(row) for row in batch["id"]]
        return triplets_batch(self.config, indices, [self.generator.generate(index) for index in indices])


def synthetic_edit_dataset(config: EditSynthConfig, num_samples: int) -> ray.data.Dataset:
    """Rows ``0 .. num_samples - 1`` as a Ray Dataset of ``EDIT_COLUMNS``, generated on ``config.pool``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return map_stage(ray.data.range(num_samples), EditStage, config.pool, config_json=config.model_dump_json())


# Preview.
def preview_edits(config: EditSynthConfig, num_triplets: int, columns: int = 2) -> np.ndarray:
    """A contact sheet uint8 ``[H, W, 3]``: each cell is source | target, labelled with the instruction."""
    if num_triplets < 1:
        raise ValueError(f"num_triplets must be at least 1, got {num_triplets}")
    generator = EditGenerator(config)
    cells, labels = [], []
    for index in range(num_triplets):
        triplet = generator.generate(index)
        if triplet.source is None or triplet.target is None:
            logger.warning("row %d (%s) failed: %s", index, triplet.kind, triplet.error)
            continue
        gap = np.full((256, 6, 3), 255, dtype=np.uint8)
        cells.append(np.concatenate([thumbnail(triplet.source, 256), gap, thumbnail(triplet.target, 256)], axis=1))
        instruction = re.sub(r"\s+", " ", triplet.instruction)
        labels.append(short_label(f"[{triplet.kind}] {instruction}", 518))
    if not cells:
        raise ValueError("no triplet could be made: check the fonts and the text settings")
    return to_grid(np.stack(cells), columns=min(columns, len(cells)), labels=labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a contact sheet of synthetic edit triplets.")
    parser.add_argument("--num", type=int, default=12, help="triplets (rows 0 .. num - 1)")
    parser.add_argument("--out", default="outputs/edit_preview.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = save_png(preview_edits(EditSynthConfig(seed=args.seed), args.num), pathlib.Path(args.out))
    print(path)


if __name__ == "__main__":
    main()
