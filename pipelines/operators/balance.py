"""Stage 7: the fields the trainer balances on, and "keep top quality per category".

Per batch (``balance_columns``, a plain function for ``map_batches``):

- ``resolution_class``: the largest training scale the original image reaches on its short side, ``"1328"``, ``"640"``
  or ``"256"`` (docs/qwen_image.md §1: S7 trains 640p and 1328p jointly; S1 starts at 256p), else ``"below_256"``;
- ``quality_score`` in [0, 1]: a weighted mean of the quality terms the batch has (a missing or NaN term is left
  out; NaN when none is there). Each term maps a stored score onto [0, 1] between the point where an earlier
  check would drop it and the point where it is clearly good (``QUALITY_TERMS``):
  sharpness ``log10(score_blur)`` from 50 (S2's floor) to 1000 (sharp photos score 100-1400 at 384 px), exposure
  ``1 - score_exposure / 0.3`` (S5's ceiling), compression ``score_blockiness`` from 1.8 (JPEG quality 10) to 1.1
  (quality 90), aesthetic ``score_aesthetic`` from 3 to 7 on LAION's 1-10 scale (most web images score 4-6). The
  aesthetic term weighs as much as the three technical ones together when the aesthetic head is configured.

Over the whole table (``quality_rank``, pure numpy): the percentile of ``quality_score`` among the samples of the same
``category`` (0 the worst, 1 the best, ties share their mean rank), over the samples that are ``eligible`` (pass
stages 1-6: ranking broken or blurry images in would lift every survivor's rank). With Ray Data, run it per group:
``dataset.groupby("category").map_groups(add_quality_rank)`` after an ``eligible`` column is written; or over the
written Parquet columns. The S7 check keeps ranks at or above ``S7Thresholds.min_quality_rank``.
"""

from __future__ import annotations

import numpy as np
import pydantic

from pipelines.operators.base import Check
from store.columns import (
    CATEGORY,
    ELIGIBLE,
    QUALITY_RANK,
    QUALITY_SCORE,
    RESOLUTION_CLASS,
    SCORE_AESTHETIC,
    SCORE_BLOCKINESS,
    SCORE_BLUR,
    SCORE_EXPOSURE,
    SCORE_RESOLUTION,
)

# Short-side scales of the curriculum, largest first.
RESOLUTION_CLASSES = (1328, 640, 256)
BELOW_SMALLEST = "below_256"


class QualityTerm(pydantic.BaseModel):
    """Maps a score onto [0, 1]: 0 at ``worst``, 1 at ``best`` (either order), linear in between (log10 if asked)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    column: str
    worst: float
    best: float
    weight: float = pydantic.Field(gt=0)
    log: bool = False

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        worst, best = self.worst, self.best
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                scores = np.log10(np.where(scores > 0, scores, np.nan))
            worst, best = np.log10(worst), np.log10(best)
        return np.clip((scores - worst) / (best - worst), 0.0, 1.0)


QUALITY_TERMS: tuple[QualityTerm, ...] = (
    QualityTerm(column=SCORE_BLUR, worst=50.0, best=1000.0, weight=1.0, log=True),
    QualityTerm(column=SCORE_EXPOSURE, worst=0.3, best=0.0, weight=1.0),
    QualityTerm(column=SCORE_BLOCKINESS, worst=1.8, best=1.1, weight=1.0),
    QualityTerm(column=SCORE_AESTHETIC, worst=3.0, best=7.0, weight=3.0),
)


class S7Thresholds(pydantic.BaseModel):
    """Balanced multi-scale."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # Keep the top 75% of each category by quality_score (drop its bottom quarter).
    min_quality_rank: float = pydantic.Field(default=0.25, ge=0, le=1)


def resolution_class(short_side: np.ndarray) -> np.ndarray:
    """Object column: ``"1328"`` / ``"640"`` / ``"256"`` / ``"below_256"`` from the original short side (pixels)."""
    short_side = np.nan_to_num(np.asarray(short_side, dtype=np.float64), nan=0.0)
    classes = np.full(len(short_side), BELOW_SMALLEST, dtype=object)
    for scale in reversed(RESOLUTION_CLASSES):  # smallest first, so larger scales overwrite
        classes[short_side >= scale] = str(scale)
    return classes


def quality_score(columns: dict[str, np.ndarray], terms: tuple[QualityTerm, ...] = QUALITY_TERMS) -> np.ndarray:
    """Weighted mean of the available quality terms per row, in [0, 1]; NaN where no term is available."""
    num_rows = len(next(iter(columns.values()))) if columns else 0
    total, weights = np.zeros(num_rows), np.zeros(num_rows)
    for term in terms:
        if term.column not in columns:
            continue
        values = term(columns[term.column])
        present = ~np.isnan(values)
        total[present] += term.weight * values[present]
        weights[present] += term.weight
    with np.errstate(invalid="ignore"):
        return np.where(weights > 0, total / np.maximum(weights, 1e-12), np.nan)


# The contract of balance_columns (pipelines.contracts); the quality terms' scores are read when they are there.
BALANCE_READS: tuple[str, ...] = (SCORE_RESOLUTION,)
BALANCE_WRITES: tuple[str, ...] = (RESOLUTION_CLASS, QUALITY_SCORE)


def balance_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``map_batches`` function: the batch plus ``resolution_class`` and ``quality_score``."""
    if SCORE_RESOLUTION not in batch:
        raise ValueError(f"batch has no {SCORE_RESOLUTION!r} column: run the CPU operators (ScoreOperators) first")
    return {
        **batch,
        RESOLUTION_CLASS: resolution_class(batch[SCORE_RESOLUTION]),
        QUALITY_SCORE: quality_score(batch),
    }


def quality_rank(quality: np.ndarray, category: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Percentile of each row's quality within its category, in [0, 1]; NaN for ineligible or NaN-quality rows.

    Ties share their mean rank; a category with a single ranked sample gives it 1.0 (it is its category's best).
    """
    quality = np.asarray(quality, dtype=np.float64)
    category = np.asarray(category, dtype=object).astype(str)
    if len(quality) != len(category):
        raise ValueError(f"quality ({len(quality)} rows) and category ({len(category)} rows) differ in length")
    ranked = ~np.isnan(quality)
    if eligible is not None:
        ranked &= np.asarray(eligible, dtype=bool)
    ranks = np.full(len(quality), np.nan)
    for name in np.unique(category[ranked]):
        rows = np.flatnonzero(ranked & (category == name))
        _, inverse, counts = np.unique(quality[rows], return_inverse=True, return_counts=True)
        below = np.cumsum(counts) - counts  # samples strictly worse than each distinct value
        mean_rank = below + (counts - 1) / 2.0  # 0-based mean rank of each tie group
        ranks[rows] = mean_rank[inverse] / (len(rows) - 1) if len(rows) > 1 else 1.0
    return ranks


def add_quality_rank(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch plus ``quality_rank``, over all its rows (``map_groups`` per category, or the whole table)."""
    for name in (QUALITY_SCORE, CATEGORY):
        if name not in batch:
            raise ValueError(f"batch has no {name!r} column: run balance_columns and FaceScores first")
    return {**batch, QUALITY_RANK: quality_rank(batch[QUALITY_SCORE], batch[CATEGORY], batch.get(ELIGIBLE))}


def balance_checks() -> tuple[Check, ...]:
    """Stage-7 check: keep the top quality of each category (thresholds in ``FilterThresholds.s7``)."""
    return (
        Check(
            name=QUALITY_RANK,
            stage=7,
            column=QUALITY_RANK,
            bounds=lambda t: (t.s7.min_quality_rank, None),
            low_reason="quality_rank:low",
            high_reason="quality_rank:high",
        ),
    )
