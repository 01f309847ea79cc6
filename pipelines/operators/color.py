"""S2 saturation: unnaturally high colour saturation (posterised, over-processed images)."""

from __future__ import annotations

import cv2

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


class Saturation(Operator):
    """Mean HSV saturation of the analysis copy, in [0, 1]."""

    name = columns.SCORE_SATURATION
    stage = 2
    checks = (
        Check(
            name="saturation",
            stage=2,
            column=columns.SCORE_SATURATION,
            bounds=lambda thresholds: (None, thresholds.s2.max_saturation),
            low_reason="saturation:too_low",
            high_reason="saturation:too_high",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        # Every other pixel in each direction (INTER_NEAREST): the mean moves by about 1e-3 and the
        # conversion costs a quarter.
        height, width = image.rgb.shape[:2]
        half = cv2.resize(image.rgb, (max(1, width // 2), max(1, height // 2)), interpolation=cv2.INTER_NEAREST)
        hsv = cv2.cvtColor(half, cv2.COLOR_RGB2HSV)
        return cv2.mean(hsv)[1] / 255.0
