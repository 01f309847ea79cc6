"""Compose: one shape of a flat scene (Picture 1) put into another flat scene (Picture 2), pasted pixel for pixel."""

from __future__ import annotations

import math

import numpy as np

from pipelines.synth.edits.config import TASK_OF_KIND, EditSynthConfig, EditTriplet, instruction_language, pick
from pipelines.synth.edits.flat import SHAPE_NAMES, _names, _visible, sample_flat_scene, unique_shapes
from pipelines.synth.render import Discarded

COMPOSE_EN = (
    "Put the {color} {shape} from Picture 1 into Picture 2.",
    "Add the {color} {shape} of Picture 1 to Picture 2.",
    "Place the {color} {shape} from Picture 1 in Picture 2.",
)
COMPOSE_ZH = (
    "把图1中的{color}{shape}放进图2。",
    "将图1的{color}{shape}添加到图2中。",
    "把图1里的{color}{shape}放到图2中。",
)
# A side of Picture 2 that the pasted shape then lies wholly in (its half of the picture).
SIDES: dict[str, tuple[str, str]] = {
    "left": ("in the left half of", "左半边"),
    "right": ("in the right half of", "右半边"),
    "top": ("in the top half of", "上半部分"),
    "bottom": ("in the bottom half of", "下半部分"),
}
SIDE_EN = (
    "Put the {color} {shape} from Picture 1 {side} Picture 2.",
    "Place the {color} {shape} of Picture 1 {side} Picture 2.",
)
SIDE_ZH = ("把图1中的{color}{shape}放到图2的{side}。", "将图1的{color}{shape}放在图2的{side}。")
SIDE_RATIO = 0.4  # rows whose instruction also names the side


def box_any(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels each way (a square neighbourhood), via a summed-area table."""
    height, width = mask.shape
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    rows, cols = np.arange(height), np.arange(width)
    top, bottom = np.clip(rows - radius, 0, height), np.clip(rows + radius + 1, 0, height)
    left, right = np.clip(cols - radius, 0, width), np.clip(cols + radius + 1, 0, width)
    total = table[bottom][:, right] - table[top][:, right] - table[bottom][:, left] + table[top][:, left]
    return total > 0


def _in_side(mask: np.ndarray, side: str | None) -> bool:
    """Whether ``mask`` lies wholly in the ``side`` half of the picture (always, for no side)."""
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    return {
        None: True,
        "left": cols.max() < width // 2,
        "right": cols.min() >= width - width // 2,
        "top": rows.max() < height // 2,
        "bottom": rows.min() >= height - height // 2,
    }[side]


def place(rng: np.random.Generator, shape: np.ndarray, occupied: np.ndarray, gap: int, side: str | None) -> np.ndarray:
    """Where ``shape`` (a bool mask) goes on a picture whose ``occupied`` pixels it must keep ``gap`` pixels from:
    the same place when that is free (and on ``side``), else a place drawn among the free ones; the moved mask."""
    near = box_any(occupied, gap)
    if not (shape & near).any() and _in_side(shape, side):
        return shape
    height, width = shape.shape
    rows, cols = np.nonzero(shape)
    top, left = rows.min(), cols.min()
    box_h, box_w = rows.max() - top + 1, cols.max() - left + 1
    row_range, col_range = (0, height - box_h), (0, width - box_w)
    if side == "left":
        col_range = (0, width // 2 - box_w)
    elif side == "right":
        col_range = (width - width // 2, width - box_w)
    elif side == "top":
        row_range = (0, height // 2 - box_h)
    elif side == "bottom":
        row_range = (height - height // 2, height - box_h)
    if row_range[0] > row_range[1] or col_range[0] > col_range[1]:
        raise Discarded("no_room")
    # Free places for the shape's bounding box: no grown occupied pixel inside it (a summed-area table).
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = near.astype(np.int64).cumsum(0).cumsum(1)
    ys, xs = np.arange(row_range[0], row_range[1] + 1), np.arange(col_range[0], col_range[1] + 1)
    hits = table[ys + box_h][:, xs + box_w] - table[ys][:, xs + box_w] - table[ys + box_h][:, xs] + table[ys][:, xs]
    free = np.argwhere(hits == 0)
    if not len(free):
        raise Discarded("no_room")
    dy, dx = free[int(rng.integers(len(free)))]
    moved = np.zeros_like(shape)
    moved[rows - top + ys[dy], cols - left + xs[dx]] = True
    return moved


def make_compose(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    """Picture 1 and Picture 2 are flat scenes; the target is Picture 2 with one shape of Picture 1 (named by colour
    and shape, a pair unique in Picture 1, visible on Picture 2's background) pasted where it keeps apart from
    Picture 2's shapes: at the same place if that is free, on the named side when the instruction names one."""
    first, second = sample_flat_scene(rng, *config.size), sample_flat_scene(rng, *config.size)
    candidates = [number for number in unique_shapes(first) if _visible(first.colors[number], second.background)]
    if not candidates:
        raise Discarded("invisible")
    number = int(pick(rng, candidates))
    side = str(pick(rng, list(SIDES))) if rng.random() < SIDE_RATIO else None
    gap = max(2, math.ceil(0.02 * min(config.size)))
    region = place(rng, first.labels == number + 1, second.labels != 0, gap, side)
    color = first.colors[number]
    target = second.image()
    target[region] = color.rgb
    language = instruction_language(rng, config)
    shape = SHAPE_NAMES[first.shapes[number]] if language == "zh" else first.shapes[number]
    if side is None:
        template = pick(rng, COMPOSE_ZH if language == "zh" else COMPOSE_EN)
        instruction = template.format(color=_names(color, language), shape=shape)
    else:
        template = pick(rng, SIDE_ZH if language == "zh" else SIDE_EN)
        words = SIDES[side][1 if language == "zh" else 0]
        instruction = template.format(color=_names(color, language), shape=shape, side=words)
    return EditTriplet(
        first.image(),
        target,
        instruction,
        TASK_OF_KIND["compose"],
        "compose",
        region=region,
        references=(second.image(),),
    )
