"""S2 texture: noisy, non-semantic images (sensor noise, static, dense repetitive texture).

Measure: the fraction of pixels of the grey analysis copy whose 3x3 Laplacian magnitude exceeds
``laplacian_threshold`` grey levels. Photographs concentrate strong second derivatives on object
edges and text (typically under 25% of the pixels at 384 px); noise and fine texture put them
everywhere (40-70%). It reuses the Laplacian that the blur operator computes, so it costs one
comparison per pixel. The blur score cannot tell these apart: noise has a huge Laplacian variance.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


class Texture(Operator):
    """Fraction of high-frequency pixels of the analysis copy, in [0, 1]."""

    name = columns.SCORE_TEXTURE
    stage = 2
    checks = (
        Check(
            name="texture",
            stage=2,
            column=columns.SCORE_TEXTURE,
            bounds=lambda thresholds: (None, thresholds.s2.max_texture),
            low_reason="texture:too_smooth",
            high_reason="texture:noisy",
        ),
    )

    def __init__(self, laplacian_threshold: int = 40) -> None:
        if not 0 < laplacian_threshold < 255:
            raise ValueError(f"laplacian_threshold must be in 1..254, got {laplacian_threshold}")
        self.laplacian_threshold = laplacian_threshold

    def score(self, image: AnalysisImage) -> float:
        magnitude = cv2.convertScaleAbs(image.laplacian)  # saturates at 255, enough for a threshold
        return float(np.count_nonzero(magnitude > self.laplacian_threshold)) / magnitude.size
