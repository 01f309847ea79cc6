"""Clarity: variance of the Laplacian, checked in S2 and again, stricter, in S5 (640p).

The Laplacian is taken in ``CV_16S`` and reduced with ``cv2.meanStdDev``: 0.26 ms on a 512x512
image against 1.7 ms in float64 (docs/costs.md §1). The score depends on the scale it is measured
at; it is always measured on the analysis copy (384 px short side by default).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


def laplacian_variance(laplacian: np.ndarray) -> float:
    """Variance of an int16 Laplacian image."""
    _, std = cv2.meanStdDev(laplacian)
    return float(std[0, 0]) ** 2


class Blur(Operator):
    """Variance of the 3x3 Laplacian of the grey analysis copy; low means blurry."""

    name = columns.SCORE_BLUR
    stage = 2
    checks = (
        Check(
            name="blur",
            stage=2,
            column=columns.SCORE_BLUR,
            bounds=lambda thresholds: (thresholds.s2.min_blur, None),
            low_reason="blur:too_blurry",
            high_reason="blur:too_sharp",
        ),
        Check(
            name="blur_640p",
            stage=5,
            column=columns.SCORE_BLUR,
            bounds=lambda thresholds: (thresholds.s5.min_blur, None),
            low_reason="blur_640p:too_blurry",
            high_reason="blur_640p:too_sharp",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        return laplacian_variance(image.laplacian)
