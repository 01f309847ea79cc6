"""Resolution: the original short side, checked at 256 px (S1) and again at 640 px (S5, 640p)."""

from __future__ import annotations

import math

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


class Resolution(Operator):
    """Short side of the original image in pixels, from the header (also for refused images)."""

    name = columns.SCORE_RESOLUTION
    stage = 1
    needs_pixels = False
    checks = (
        Check(
            name="resolution",
            stage=1,
            column=columns.SCORE_RESOLUTION,
            bounds=lambda thresholds: (thresholds.s1.min_short_side, None),
            low_reason="resolution:too_small",
            high_reason="resolution:too_large",
        ),
        Check(
            name="resolution_640p",
            stage=5,
            column=columns.SCORE_RESOLUTION,
            bounds=lambda thresholds: (thresholds.s5.min_short_side, None),
            low_reason="resolution_640p:too_small",
            high_reason="resolution_640p:too_large",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        decoded = image.decoded
        if decoded.width <= 0 or decoded.height <= 0:
            return math.nan
        return float(min(decoded.width, decoded.height))
