"""Synthetic edit triplets (source image, instruction, target image) with exact ground truth.

Seven kinds, each a pure function of ``(config, index)``:

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
- ``compose`` (two input images): Picture 1 and Picture 2 are flat scenes; the target is Picture 2 with one shape of
  Picture 1 (named by colour and shape, unique in Picture 1, visible on Picture 2's background) pasted pixel for
  pixel, at its own place when that keeps apart from Picture 2's shapes, else at a free place drawn at random; some
  instructions name a side, and the shape then lies wholly in that half. ``Put the red star from Picture 1 into
  Picture 2.`` (``把图1中的红色五角星放进图2。``); ``references`` holds Picture 2, ``region`` the pasted pixels.
- ``inpaint``: a flat scene with a rectangle or an ellipse painted mid grey ``(128, 128, 128)``, a colour outside
  the palette, over part of one shape and some background (every shape it touches keeps 40 % in view); the target
  is the scene whole and ``region`` the grey pixels. ``Fill in the grey area.`` (``补全灰色区域。``)

Which kind row ``index`` gets follows a low-discrepancy sequence over the kind weights (golden-ratio steps), so any
run of consecutive rows holds the kinds in about their proportions; everything else is drawn from a generator
seeded with ``[seed, kind, index]``. A triplet that cannot be made in ``max_attempts`` draws (text too long for
the canvas, no font covering it) comes back with no images and an ``error``; in the dataset, with empty
``image_bytes`` and a ``source_error``.

Dataset columns: ``store.columns.SOURCE_COLUMNS`` plus ``rendered_text``; ``task`` is ``edit`` (text, colour,
background), ``edit_plus`` (compose: Picture 2 in ``source_image_bytes_2``), ``inpaint``, ``depth`` or
``novel_view``; ``source`` is ``synthetic/edit-<kind>``; ``key`` is ``edit-<kind>-s<seed>-<index>``.

    python -m pipelines.synth.edits --num 12 --out outputs/edit_preview.png

Modules: ``config`` (the config, the kinds, the triplet), ``text``, ``flat``, ``compose``, ``inpaint`` and
``views`` (the makers by kind), ``source`` (generation by row index, the Ray Data source, the preview).
"""

from pipelines.synth.edits.config import (
    EDIT_COLUMNS,
    EDIT_KINDS,
    TASK_OF_KIND,
    EditKind,
    EditSynthConfig,
    EditTriplet,
    kind_of,
)
from pipelines.synth.edits.flat import SHAPE_NAMES, FlatScene, sample_flat_scene, shape_polygon, unique_shapes
from pipelines.synth.edits.inpaint import BLANK_RGB
from pipelines.synth.edits.source import (
    EditGenerator,
    edit_key,
    generate_edit,
    preview_edits,
    source_name,
    synthetic_edit_dataset,
    triplets_batch,
)
from pipelines.synth.edits.views import sample_view, sample_view_change, view_instruction

__all__ = [
    "BLANK_RGB",
    "EDIT_COLUMNS",
    "EDIT_KINDS",
    "SHAPE_NAMES",
    "TASK_OF_KIND",
    "EditGenerator",
    "EditKind",
    "EditSynthConfig",
    "EditTriplet",
    "FlatScene",
    "edit_key",
    "generate_edit",
    "kind_of",
    "preview_edits",
    "sample_flat_scene",
    "sample_view",
    "sample_view_change",
    "shape_polygon",
    "source_name",
    "synthetic_edit_dataset",
    "triplets_batch",
    "unique_shapes",
    "view_instruction",
]
