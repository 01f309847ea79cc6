"""Compositional shape scenes: images whose captions say exactly what is drawn, for models that must visibly learn.

A scene is one or two flat objects, each with a colour (``COLOURS``), a shape (``SHAPES``), a position
(``POSITIONS``) and a size, on a neutral background that may carry grain or a soft gradient; or a short word in
large type on a plain background. The caption follows a small grammar (``caption``) that ``parse_caption`` reads
back, so a judge can score any image against any caption of the grammar, and the generator knows every scene's
ground truth.

Held-out combinations (``HELD_OUT_PAIRS`` colour-shape pairs and ``HELD_OUT_WORDS``) never appear in training
scenes (``split="train"``); ``split="held_out"`` draws only scenes that contain one. Scenes are pure functions of
``(seed, index)``.

    scene = sample_scene(np.random.default_rng([0, 7]), kinds=("one", "two"))
    image = render_scene(scene, 64)          # uint8 [64, 64, 3]
    caption(scene)                           # 'a big red circle on the left, on a white background'
    parse_caption(caption(scene)) == scene.spec()
"""

from __future__ import annotations

import dataclasses
import functools
import re

import cv2
import numpy as np

# Object colours: eight hues far apart in Lab, saturated enough to stand apart from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 30),
    "green": (40, 165, 60),
    "cyan": (30, 200, 215),
    "blue": (35, 70, 215),
    "purple": (130, 45, 185),
    "pink": (250, 120, 190),
}
# Backgrounds: neutrals, so that any object colour stands out from any background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 244),
    "light grey": (200, 200, 198),
    "dark grey": (70, 72, 76),
    "black": (20, 20, 22),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Centroid anchors as fractions of the width and height.
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
PAIRED_POSITIONS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))
SIZES: dict[str, float] = {"small": 0.14, "big": 0.19}  # object radius as a fraction of the image side
# Held out of training: every scene with one of these colour-shape pairs, and these words.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("purple", "circle"), ("orange", "star"), ("blue", "square")}
)
WORDS: tuple[str, ...] = (
    "SUN", "CAT", "DOG", "RED", "BOX", "MAP", "SKY", "TEA", "ICE", "OWL", "JAM", "FOX",
    "STAR", "MOON", "FISH", "BIRD", "TREE", "LAMP", "KITE", "ROSE", "BOAT", "CAKE", "SHOE", "RAIN",
    "APPLE", "HOUSE", "TRAIN", "CLOUD", "RIVER", "LIGHT", "PLANT", "CHAIR",
)  # fmt: skip
HELD_OUT_WORDS: frozenset[str] = frozenset({"OWL", "KITE", "CLOUD", "JAM"})
WORD_COLOURS: dict[str, tuple[int, int, int]] = {"black": (20, 20, 22), "white": (246, 246, 244)}
WORD_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    **{name: COLOURS[name] for name in ("yellow", "cyan", "pink", "orange")},
    "light grey": BACKGROUNDS["light grey"],
}
KINDS: tuple[str, ...] = ("one", "two", "word")
SPLITS: tuple[str, ...] = ("train", "held_out", "any")


@dataclasses.dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    position: str
    size: str = "big"


@dataclasses.dataclass(frozen=True)
class Scene:
    """What an image shows: objects on a background, or a word (``word`` set, ``objects`` empty)."""

    background: str
    objects: tuple[Shape, ...] = ()
    word: str = ""
    word_colour: str = ""
    texture: str = "plain"  # plain | grain | gradient (drawing only: not in the caption)

    def spec(self) -> Scene:
        """The scene as a caption states it (texture is not said)."""
        return dataclasses.replace(self, texture="plain")

    @property
    def held_out(self) -> bool:
        return self.word in HELD_OUT_WORDS or any((o.colour, o.shape) in HELD_OUT_PAIRS for o in self.objects)


def _article(size: str, colour: str, shape: str) -> str:
    return f"a {size} {colour} {shape}"


def _where(position: str) -> str:
    return (
        "in the centre"
        if position == "centre"
        else f"on the {position}"
        if position in ("left", "right")
        else (f"at the {position}")
    )


def caption(scene: Scene) -> str:
    """The scene in the grammar ``parse_caption`` reads."""
    if scene.word:
        return f'the word "{scene.word}" in {scene.word_colour} on {scene.background}'
    parts = [f"{_article(o.size, o.colour, o.shape)} {_where(o.position)}" for o in scene.objects]
    return f"{' and '.join(parts)}, on a {scene.background} background"


_OBJECT = re.compile(
    r"a (?P<size>small|big) (?P<colour>[a-z]+) (?P<shape>[a-z]+) "
    r"(?:in the (?P<centre>centre)|on the (?P<side>left|right)|at the (?P<end>top|bottom))"
)
_WORD = re.compile(r'the word "(?P<word>[A-Z]+)" in (?P<colour>[a-z ]+?) on (?P<background>[a-z ]+)$')
_OBJECTS = re.compile(r"^(?P<objects>.+), on an? (?P<background>[a-z ]+) background$")


def parse_caption(text: str) -> Scene:
    """The scene a caption of the grammar states; ``ValueError`` naming the caption for anything else."""
    text = text.strip()
    word = _WORD.match(text)
    if word:
        colour, background = word["colour"], word["background"]
        if colour not in WORD_COLOURS or background not in WORD_BACKGROUNDS:
            raise ValueError(f"unknown word colours in caption {text!r}")
        return Scene(background=background, word=word["word"], word_colour=colour)
    whole = _OBJECTS.match(text)
    if not whole or whole["background"] not in BACKGROUNDS:
        raise ValueError(f"not a shape-scene caption: {text!r}")
    objects = []
    for part in whole["objects"].split(" and "):
        found = _OBJECT.fullmatch(part)
        if not found or found["colour"] not in COLOURS or found["shape"] not in SHAPES:
            raise ValueError(f"cannot read object {part!r} in caption {text!r}")
        position = found["centre"] or found["side"] or found["end"]
        objects.append(Shape(found["colour"], found["shape"], position, found["size"]))
    return Scene(background=whole["background"], objects=tuple(objects))


def _pairs(split: str, rng: np.random.Generator, colours: tuple[str, ...], shapes: tuple[str, ...]) -> tuple[str, str]:
    pool = [(c, s) for c in colours for s in shapes]
    if split == "train":
        pool = [pair for pair in pool if pair not in HELD_OUT_PAIRS]
    elif split == "held_out":
        pool = [pair for pair in pool if pair in HELD_OUT_PAIRS]
    if not pool:
        raise ValueError(f"no colour-shape pair of {colours} x {shapes} is allowed in split {split!r}")
    return pool[int(rng.integers(len(pool)))]


def sample_scene(
    rng: np.random.Generator,
    kinds: tuple[str, ...] = ("one", "two"),
    split: str = "train",
    colours: tuple[str, ...] = tuple(COLOURS),
    shapes: tuple[str, ...] = SHAPES,
    positions: tuple[str, ...] = tuple(POSITIONS),
    sizes: tuple[str, ...] = tuple(SIZES),
    textures: tuple[str, ...] = ("plain", "grain", "gradient"),
) -> Scene:
    """One random scene of a kind in ``kinds``; ``split`` keeps held-out combinations out ("train"), in, or "any"."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    kind = kinds[int(rng.integers(len(kinds)))]
    texture = textures[int(rng.integers(len(textures)))]
    if kind == "word":
        words = [w for w in WORDS if split == "any" or (w in HELD_OUT_WORDS) == (split == "held_out")]
        background = list(WORD_BACKGROUNDS)[int(rng.integers(len(WORD_BACKGROUNDS)))]
        colour = "white" if background in ("cyan", "orange") and rng.random() < 0.5 else "black"
        return Scene(background=background, word=words[int(rng.integers(len(words)))], word_colour=colour)
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    size = sizes[int(rng.integers(len(sizes)))]
    if kind == "one":
        colour, shape = _pairs(split, rng, colours, shapes)
        position = positions[int(rng.integers(len(positions)))]
        return Scene(background, (Shape(colour, shape, position, size),), texture=texture)
    if kind != "two":
        raise ValueError(f"unknown scene kind {kind!r}: use one of {KINDS}")
    first_position, second_position = PAIRED_POSITIONS[int(rng.integers(len(PAIRED_POSITIONS)))]
    # A held-out two-object scene holds one held-out pair; its partner may be anything of the training split.
    first = _pairs(split, rng, colours, shapes)
    second = _pairs("train" if split == "held_out" else split, rng, colours, shapes)
    if rng.random() < 0.5:
        first, second = second, first
    return Scene(
        background,
        (Shape(*first, first_position, size), Shape(*second, second_position, size)),
        texture=texture,
    )


def scenes(num: int, seed: int = 0, start: int = 0, **kwargs) -> list[Scene]:
    """``num`` scenes, scene ``i`` drawn from ``default_rng([seed, i])`` (independent of batching)."""
    return [sample_scene(np.random.default_rng([seed, index]), **kwargs) for index in range(start, start + num)]


SUPERSAMPLE = 4


def _polygon(shape: str, cx: float, cy: float, radius: float) -> np.ndarray | None:
    if shape == "square":
        half = radius * 0.86  # same area as the circle of ``radius``, near enough: squares read as big as circles
        return np.array(
            [[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]]
        )
    if shape == "triangle":
        # Upright equilateral triangle whose centroid is (cx, cy); circumradius slightly above ``radius``.
        r = radius * 1.2
        angles = np.deg2rad([-90, 30, 150])
        return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    if shape == "star":
        r = radius * 1.15
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}: use one of {SHAPES}")


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` centred at pixel coordinates (``cx``, ``cy``) on a square canvas."""
    scale = SUPERSAMPLE
    canvas = np.zeros((size * scale, size * scale), np.uint8)
    polygon = _polygon(shape, cx * scale, cy * scale, radius * scale)
    if polygon is None:
        cv2.circle(canvas, (round(cx * scale), round(cy * scale)), round(radius * scale), 255, -1, cv2.LINE_AA)
    else:
        cv2.fillPoly(canvas, [np.round(polygon).astype(np.int32)], 255, cv2.LINE_AA)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(BACKGROUNDS.get(scene.background) or WORD_BACKGROUNDS[scene.background], np.float32)
    image = np.broadcast_to(base, (size, size, 3)).copy()
    if scene.texture == "gradient":
        ramp = np.linspace(-1, 1, size, dtype=np.float32) * rng.uniform(6, 14)
        image += ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
    elif scene.texture == "grain":
        image += rng.normal(0, 5, (size, size, 1)).astype(np.float32)
    return image


def object_centre(obj: Shape, size: int) -> tuple[float, float]:
    fx, fy = POSITIONS[obj.position]
    return fx * size, fy * size


def render_scene(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene drawn on a ``size`` x ``size`` RGB canvas (uint8); ``rng`` jitters positions and texture."""
    rng = rng if rng is not None else np.random.default_rng(0)
    image = _background(scene, size, rng)
    if scene.word:
        return _draw_word(scene, image, size)
    for obj in scene.objects:
        cx, cy = object_centre(obj, size)
        jitter = size * 0.03
        cx, cy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
        coverage = shape_mask(obj.shape, size, cx, cy, SIZES[obj.size] * size)[:, :, None]
        image = image * (1 - coverage) + np.asarray(COLOURS[obj.colour], np.float32) * coverage
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _word_font(pixels: int):
    import pathlib

    import matplotlib
    from PIL import ImageFont

    # DejaVu Sans Bold ships inside matplotlib (a dependency): the same face on every machine.
    path = pathlib.Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(path), pixels)


def _draw_word(scene: Scene, image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    pixels = int(size * (0.42 if len(scene.word) <= 3 else 0.34 if len(scene.word) == 4 else 0.27))
    font = _word_font(pixels)
    left, top, right, bottom = draw.textbbox((0, 0), scene.word, font=font)
    x = (size - (right - left)) / 2 - left
    y = (size - (bottom - top)) / 2 - top
    draw.text((x, y), scene.word, fill=WORD_COLOURS[scene.word_colour], font=font)
    return np.asarray(canvas)
