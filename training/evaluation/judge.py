"""An automatic judge for shape scenes (GenEval's idea): does an image show what its caption says?

Captions are those of ``pipelines.synth.shapes`` (one or two coloured shapes at named positions on a neutral
background, or a word). From the image alone the judge

1. models the background as a plane per colour channel fitted to the border pixels (robust: border pixels far from
   the first fit, an object touching the edge, are dropped and the plane refitted) and marks as foreground every
   pixel whose colour is more than ``foreground_distance`` from it;
2. splits the foreground into connected components, keeping those of at least ``min_area`` (a fraction of the
   image) as objects;
3. reads each object's **colour** as the palette colour nearest (in CIELAB) to the median colour of its pixels,
   its **shape** as the template (circle, square, upright triangle, star: the generator's own shapes, drawn with
   the object's centroid and area) that overlaps its mask best (intersection over union), and its **position** as
   the anchor (centre, left, right, top, bottom) nearest to its centroid;
4. matches the caption's objects to the detected ones by the assignment that agrees on the most attributes (ties:
   the nearest), and scores each attribute: correct when every object of the caption has it right; **count** is
   correct when as many objects are found as the caption names. Words are read with OCR (``models.ocr``): **text**
   is correct when the word read, upper-cased, is the caption's word.

``judge(image, caption)`` returns a ``Verdict``; ``score(images, captions)`` the accuracy per attribute and overall
(the share of images with every attribute right). The same verdicts are the reward of GRPO and build DPO pairs
(``reward``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import cv2
import numpy as np

from pipelines.synth import shapes

OBJECT_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position", "count")
ATTRIBUTES: tuple[str, ...] = (*OBJECT_ATTRIBUTES, "text")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    foreground_distance: float = 48.0  # RGB distance from the background model that makes a pixel an object's
    min_area: float = 0.006  # smallest object, as a fraction of the image's pixels
    border: int = 2  # width of the border ring the background is fitted to, in pixels at 64 px (scaled with size)


@dataclasses.dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    position: str
    centroid: tuple[float, float]  # fractions of width and height
    area: float  # fraction of the image
    shape_iou: tuple[float, ...] = ()  # the mask's overlap with each of ``shapes.SHAPES``' templates, in that order

    def shape_margin(self, shape: str) -> float:
        """How clearly the mask is ``shape``: its template's IoU minus the best other template's, in [-1, 1]
        (positive exactly when ``shape`` is the shape read)."""
        if len(self.shape_iou) != len(shapes.SHAPES):
            raise ValueError("this detection carries no template overlaps (shape_iou); detect() fills them")
        own = self.shape_iou[shapes.SHAPES.index(shape)]
        return own - max(iou for name, iou in zip(shapes.SHAPES, self.shape_iou, strict=True) if name != shape)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Per-attribute correctness (``None``: the attribute does not apply to this caption) and what was found."""

    colour: bool | None
    shape: bool | None
    position: bool | None
    count: bool | None
    text: bool | None
    detections: tuple[Detection, ...] = ()
    read: str = ""
    matched: tuple[Detection | None, ...] = ()  # per object of the caption, its detection (None: not found)

    @property
    def overall(self) -> bool:
        return all(value for value in self.scores().values())

    def scores(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in ATTRIBUTES if getattr(self, name) is not None}

    def label(self) -> str:
        """A short verdict for a picture's caption: ticks and crosses per attribute (a tick and a multiplication sign:
        the label font, Noto Sans CJK, has both; it has no ballot cross)."""
        return " ".join(f"{name}{'✓' if ok else '×'}" for name, ok in self.scores().items())


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[tuple[str, ...], np.ndarray]:
    names = tuple(shapes.COLOURS)
    return names, _lab(np.array([shapes.COLOURS[name] for name in names]))


def background_model(image: np.ndarray, border: int) -> np.ndarray:
    """A plane per channel fitted to the border ring (refitted without outliers): float ``[H, W, 3]``."""
    height, width = image.shape[:2]
    ring = np.zeros((height, width), bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    ys, xs = np.nonzero(ring)
    design = np.stack([np.ones_like(xs), xs / width, ys / height], axis=1).astype(np.float64)
    values = image[ys, xs].astype(np.float64)
    keep = np.ones(len(xs), bool)
    for _ in range(2):
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = np.linalg.norm(design @ coefficients - values, axis=1)
        keep = residual < max(12.0, 2.5 * float(np.median(residual[keep])))
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    full = np.stack([np.ones_like(grid_x), grid_x / width, grid_y / height], axis=-1).astype(np.float64)
    return full @ coefficients


def _template_area(shape: str, radius: float, size: int) -> float:
    centre = size / 2
    return float(shapes.shape_mask(shape, size, centre, centre, radius).sum())


@functools.lru_cache(maxsize=16)
def _area_per_radius2(shape: str) -> float:
    """Area of ``shape`` drawn at radius 1, measured once on a large canvas."""
    return _template_area(shape, 100.0, 256) / 100.0**2


def _shape_ious(component: np.ndarray, cx: float, cy: float) -> tuple[float, ...]:
    """The mask's IoU with each shape's template drawn at its centroid with its area, in ``shapes.SHAPES``' order."""
    size = component.shape[0]
    area = float(component.sum())
    ious = []
    for shape in shapes.SHAPES:
        radius = float(np.sqrt(area / _area_per_radius2(shape)))
        # The generator draws shapes around their centroid (an equilateral triangle's centroid is its centre).
        template = shapes.shape_mask(shape, size, cx, cy, radius) > 0.5
        union = np.logical_or(template, component).sum()
        ious.append(float(np.logical_and(template, component).sum() / max(union, 1)))
    return tuple(ious)


def _nearest_position(fx: float, fy: float) -> str:
    return min(
        shapes.POSITIONS, key=lambda name: np.hypot(fx - shapes.POSITIONS[name][0], fy - shapes.POSITIONS[name][1])
    )


def detect(image: np.ndarray, config: JudgeConfig = JudgeConfig()) -> list[Detection]:
    """The objects in a square uint8 RGB image, largest first."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"the judge takes square uint8 RGB images, got {image.dtype} {image.shape}")
    size = image.shape[0]
    background = background_model(image, max(1, round(config.border * size / 64)))
    distance = np.linalg.norm(image.astype(np.float64) - background, axis=2)
    mask = (distance > config.foreground_distance).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    names, palette = _palette()
    found = []
    for index in range(1, count):
        area = stats[index, cv2.CC_STAT_AREA]
        if area < config.min_area * size * size:
            continue
        component = labels == index
        cx, cy = centroids[index]
        colour = names[int(np.argmin(np.linalg.norm(palette - _lab(np.median(image[component], axis=0)), axis=1)))]
        ious = _shape_ious(component, float(cx), float(cy))
        shape = shapes.SHAPES[int(np.argmax(ious))]  # on a tie, the first in SHAPES
        position = _nearest_position(cx / size, cy / size)
        found.append(Detection(colour, shape, position, (cx / size, cy / size), area / (size * size), ious))
    return sorted(found, key=lambda detection: -detection.area)


def _agreement(expected: shapes.Shape, detection: Detection) -> tuple[int, float]:
    matches = (expected.colour == detection.colour) + (expected.shape == detection.shape)
    matches += expected.position == detection.position
    anchor = shapes.POSITIONS[expected.position]
    return matches, -float(np.hypot(anchor[0] - detection.centroid[0], anchor[1] - detection.centroid[1]))


def _match(expected: tuple[shapes.Shape, ...], found: list[Detection]) -> list[Detection | None]:
    """For each expected object, its detection (``None`` when fewer were found): the assignment with most agreement."""
    slots = list(found) + [None] * max(0, len(expected) - len(found))
    best, best_key = None, None
    for assignment in itertools.permutations(slots, len(expected)):
        key = [0, 0.0]
        for obj, detection in zip(expected, assignment, strict=True):
            if detection is not None:
                matches, nearness = _agreement(obj, detection)
                key[0] += matches
                key[1] += nearness
        if best_key is None or tuple(key) > best_key:
            best, best_key = list(assignment), tuple(key)
    return best


def judge(image: np.ndarray, caption: str | shapes.Scene, config: JudgeConfig = JudgeConfig(), ocr=None) -> Verdict:
    """The verdict on one image for one caption of the shape-scene grammar (or its parsed ``Scene``).

    ``ocr``: an ``models.ocr.OcrEngine`` for word captions (built on first use when not given)."""
    scene = shapes.parse_caption(caption) if isinstance(caption, str) else caption
    if scene.word:
        engine = ocr if ocr is not None else _ocr_engine()
        read = "".join(line.text for line in engine.read(image)).replace(" ", "").upper()
        return Verdict(None, None, None, None, read == scene.word, read=read)
    found = detect(image, config)
    matched = _match(scene.objects, found)
    pairs = list(zip(scene.objects, matched, strict=True))

    def every(attribute: str) -> bool:
        return all(d is not None and getattr(d, attribute) == getattr(o, attribute) for o, d in pairs)

    return Verdict(
        colour=every("colour"),
        shape=every("shape"),
        position=every("position"),
        count=len(found) == len(scene.objects),
        text=None,
        detections=tuple(found),
        matched=tuple(matched),
    )


@functools.lru_cache(maxsize=1)
def _ocr_engine():
    from models.ocr import OcrEngine

    return OcrEngine()


def score(images, captions, config: JudgeConfig = JudgeConfig()) -> dict[str, float]:
    """Accuracy per attribute over the images it applies to, ``overall`` over all, and ``n`` per attribute."""
    verdicts = [judge(np.asarray(image), caption, config) for image, caption in zip(images, captions, strict=True)]
    return summarise(verdicts)


def summarise(verdicts: list[Verdict]) -> dict[str, float]:
    result: dict[str, float] = {}
    for name in ATTRIBUTES:
        values = [getattr(v, name) for v in verdicts if getattr(v, name) is not None]
        if values:
            result[name] = float(np.mean(values))
            result[f"n_{name}"] = len(values)
    result["overall"] = float(np.mean([v.overall for v in verdicts])) if verdicts else 0.0
    return result


def reward(image: np.ndarray, caption: str, shape_margin: float = 0.0) -> float:
    """The judge as a reward: the share of the caption's attributes the image gets right, in [0, 1].

    ``shape_margin`` > 0 adds that weight times how clearly each object has its caption's shape (its template's IoU
    minus the best other's, ``Detection.shape_margin``; -1 for an object not found), averaged over the caption's
    objects. The share alone is the same for every image that gets everything right; the margin still ranks them,
    by how far each outline is from being read as another shape."""
    scene = shapes.parse_caption(caption)
    verdict = judge(image, scene)
    values = list(verdict.scores().values())
    value = float(np.mean(values)) if values else 0.0
    if shape_margin and not scene.word:
        pairs = zip(scene.objects, verdict.matched, strict=True)
        margins = [-1.0 if d is None else d.shape_margin(o.shape) for o, d in pairs]
        value += shape_margin * float(np.mean(margins))
    return value
