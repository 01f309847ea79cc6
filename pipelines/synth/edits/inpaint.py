"""Inpaint: a flat scene with an area blanked out in mid grey; the target is the scene whole."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipelines.synth.edits.config import TASK_OF_KIND, EditSynthConfig, EditTriplet, instruction_language, pick
from pipelines.synth.edits.flat import sample_flat_scene
from pipelines.synth.render import Discarded

# The blank: mid grey, a colour outside the palette (between its light grey and dark grey), so no scene pixel has it.
BLANK_RGB: tuple[int, int, int] = (128, 128, 128)
INPAINT_EN = (
    "Fill in the grey area.",
    "Fill in the grey {outline}.",
    "Restore the part of the image hidden by the grey {outline}.",
    "Inpaint the grey area.",
)
INPAINT_ZH = ("补全灰色区域。", "填补图中的灰色区域。", "把灰色的{outline}补全。")
OUTLINES: dict[str, tuple[str, str]] = {"rectangle": ("rectangle", "矩形"), "ellipse": ("ellipse", "椭圆")}
MIN_KEPT = 0.4  # of every shape the blank touches, the part that stays in view: enough to tell what to draw


def blank_region(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """A rectangle or ellipse (a bool mask, and which) centred on an edge pixel of one shape, 50 to 100 % of the
    shape's extent a side; it covers part of that shape and some background, and leaves ``MIN_KEPT`` of every shape
    it touches in view."""
    height, width = labels.shape
    number = int(rng.integers(1, int(labels.max()) + 1))
    shape = labels == number
    inner = np.pad(shape, 1)
    inner = inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]  # all four neighbours in it
    rows, cols = np.nonzero(shape & ~inner)
    at = int(rng.integers(len(rows)))
    cy, cx = float(rows[at]) + 0.5, float(cols[at]) + 0.5
    all_rows, all_cols = np.nonzero(shape)
    extents = (all_cols.max() - all_cols.min() + 1, all_rows.max() - all_rows.min() + 1)
    half_w, half_h = (float(rng.uniform(0.5, 1.0)) * extent / 2 + 2 for extent in extents)
    outline = str(pick(rng, list(OUTLINES)))
    mask = Image.new("1", (width, height), 0)
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    draw = ImageDraw.Draw(mask)
    if outline == "rectangle":
        draw.rectangle(box, fill=1)
    else:
        draw.ellipse(box, fill=1)
    region = np.asarray(mask, dtype=bool)
    if not (region & (labels == 0)).any():
        raise Discarded("no_background")
    for touched in np.unique(labels[region]):
        other = labels == touched
        if touched and (other & ~region).sum() < MIN_KEPT * other.sum():
            raise Discarded("hidden")
    return region, outline


def make_inpaint(rng: np.random.Generator, config: EditSynthConfig) -> EditTriplet:
    """The source is a flat scene with ``blank_region`` painted ``BLANK_RGB``; the target the scene itself."""
    scene = sample_flat_scene(rng, *config.size)
    target = scene.image()
    if (target == BLANK_RGB).all(axis=2).any():
        raise Discarded("blank_in_scene")  # never for flat scenes; the rule the blank's colour keeps
    region, outline = blank_region(rng, scene.labels)
    source = target.copy()
    source[region] = BLANK_RGB
    language = instruction_language(rng, config)
    template = pick(rng, INPAINT_ZH if language == "zh" else INPAINT_EN)
    instruction = template.format(outline=OUTLINES[outline][1 if language == "zh" else 0])
    return EditTriplet(source, target, instruction, TASK_OF_KIND["inpaint"], "inpaint", region=region)
