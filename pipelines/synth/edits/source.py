"""Triplets by row index (one generator per config and process), the Ray Data source, and the preview grid."""

from __future__ import annotations

import argparse
import functools
import pathlib
import re

import numpy as np
import ray.data

from models.imageio import save_png, to_grid
from models.ray_runtime import local_read_blocks
from pipelines.pools import map_stage
from pipelines.sources import make_batch
from pipelines.synth.edits.compose import make_compose
from pipelines.synth.edits.config import (
    EDIT_COLUMNS,
    EDIT_KINDS,
    TASK_OF_KIND,
    EditSynthConfig,
    EditTriplet,
    kind_of,
    logger,
)
from pipelines.synth.edits.flat import make_background_edit, make_color_edit
from pipelines.synth.edits.inpaint import make_inpaint
from pipelines.synth.edits.text import make_text_replace
from pipelines.synth.edits.views import make_depth, make_novel_view
from pipelines.synth.preview import short_label, thumbnail
from pipelines.synth.render import Discarded, RenderContext, encode
from store.columns import RENDERED_TEXT

MAKERS = {
    "color": make_color_edit,
    "background": make_background_edit,
    "depth": make_depth,
    "novel_view": make_novel_view,
    "compose": make_compose,
    "inpaint": make_inpaint,
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
            extra_source_images=[[encode(image, synth) for image in t.references] for t in made],
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
    return map_stage(
        ray.data.range(num_samples, override_num_blocks=local_read_blocks()),
        EditStage,
        config.pool,
        config_json=config.model_dump_json(),
    )


# Preview.
def preview_edits(config: EditSynthConfig, num_triplets: int, columns: int = 2) -> np.ndarray:
    """A contact sheet uint8 ``[H, W, 3]``: each cell is input | target (Picture 1 | Picture 2 | target for a
    multi-image edit), labelled with the instruction; cells are as wide as the widest, padded with white."""
    if num_triplets < 1:
        raise ValueError(f"num_triplets must be at least 1, got {num_triplets}")
    generator = EditGenerator(config)
    cells, labels = [], []
    gap = np.full((256, 6, 3), 255, dtype=np.uint8)
    for index in range(num_triplets):
        triplet = generator.generate(index)
        if triplet.source is None or triplet.target is None:
            logger.warning("row %d (%s) failed: %s", index, triplet.kind, triplet.error)
            continue
        images = [triplet.source, *triplet.references, triplet.target]
        parts = [part for image in images for part in (gap, thumbnail(image, 256))][1:]
        cells.append(np.concatenate(parts, axis=1))
        instruction = re.sub(r"\s+", " ", triplet.instruction)
        labels.append(f"[{triplet.kind}] {instruction}")
    if not cells:
        raise ValueError("no triplet could be made: check the fonts and the text settings")
    width = max(cell.shape[1] for cell in cells)
    cells = [np.pad(cell, ((0, 0), (0, width - cell.shape[1]), (0, 0)), constant_values=255) for cell in cells]
    labels = [short_label(label, width) for label in labels]
    return to_grid(np.stack(cells), columns=min(columns, len(cells)), labels=labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a contact sheet of synthetic edit triplets.")
    parser.add_argument("--num", type=int, default=12, help="triplets (rows 0 .. num - 1)")
    parser.add_argument("--out", default="outputs/edit_preview.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = save_png(preview_edits(EditSynthConfig(seed=args.seed), args.num), pathlib.Path(args.out))
    print(path)
