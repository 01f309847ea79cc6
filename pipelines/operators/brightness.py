"""Brightness: mean luma (S2, too dark / too bright) and exposure clipping (S5).

Both read the grey histogram that the entropy operator shares, so each costs a dot product.
"""

from __future__ import annotations

import numpy as np

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns

# Grey levels within this margin of 0 or 255 count as clipped (JPEG noise keeps true clipping
# from landing exactly on 0 / 255).
CLIP_MARGIN = 2
_LEVELS = np.arange(256, dtype=np.float64)


class Luma(Operator):
    """Mean BT.601 luma of the analysis copy, in [0, 1]."""

    name = columns.SCORE_LUMA
    stage = 2
    checks = (
        Check(
            name="luma",
            stage=2,
            column=columns.SCORE_LUMA,
            bounds=lambda thresholds: (thresholds.s2.min_luma, thresholds.s2.max_luma),
            low_reason="luma:too_dark",
            high_reason="luma:too_bright",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        return float(image.grey_histogram @ _LEVELS) / 255.0


class Exposure(Operator):
    """Fraction of grey pixels clipped to black or white (within ``CLIP_MARGIN`` levels)."""

    name = columns.SCORE_EXPOSURE
    stage = 5
    checks = (
        Check(
            name="exposure",
            stage=5,
            column=columns.SCORE_EXPOSURE,
            bounds=lambda thresholds: (None, thresholds.s5.max_exposure),
            low_reason="exposure:underexposed",
            high_reason="exposure:clipped",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        histogram = image.grey_histogram
        return float(histogram[: CLIP_MARGIN + 1].sum() + histogram[255 - CLIP_MARGIN :].sum())
