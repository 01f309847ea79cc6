"""S5 compression artefacts: JPEG blockiness, the 8x8 block-boundary discontinuity ratio.

Measure: mean absolute horizontal (and vertical) grey differences, averaged per column phase
modulo the block period; the score is the largest phase mean over the second largest, averaged
over both directions. Block boundaries of a heavily quantised JPEG carry steps that the inside of
a block does not, so one phase stands out (ratio well above 1); clean images give about 1.0.
Taking the largest phase makes the measure independent of where the grid starts (crops, EXIF
flips); comparing with the second largest, not the mean of the others, keeps content that
repeats every 2 or 4 pixels (dithering, pixel patterns) from scoring as blocky. Content with an
exact 8-pixel period cannot be told from blocking.

It must run on the file's pixel grid, before any resize: on ``DecodeResult.native``, where a
JPEG decoded with DCT scaling 1/r keeps blocks of 8/r pixels (r <= 4, so blocks of 2 at least).
A centred crop of ``CROP_SIZE`` pixels keeps the cost fixed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns

CROP_SIZE = 512
JPEG_BLOCK = 8
# Grey levels added to both sides of the ratio so flat images (no gradients at all) score 1.0.
_EPSILON = 0.25


def blockiness(grey: np.ndarray, period: int) -> float:
    """Block-boundary discontinuity ratio of a grey image with blocks of ``period`` pixels."""
    height, width = grey.shape
    num_columns = (width - 1) // period * period
    num_rows = (height - 1) // period * period
    if min(num_columns, num_rows) < 4 * period:
        return math.nan
    column_steps = cv2.absdiff(grey[:, 1 : num_columns + 1], grey[:, :num_columns])
    row_steps = cv2.absdiff(grey[1 : num_rows + 1, :], grey[:num_rows, :])
    column_means = cv2.reduce(column_steps, 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    row_means = cv2.reduce(row_steps, 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    return (_phase_ratio(column_means, period) + _phase_ratio(row_means, period)) / 2


def _phase_ratio(step_means: np.ndarray, period: int) -> float:
    phase_means = np.sort(step_means.reshape(-1, period).mean(axis=0, dtype=np.float64))
    return float((phase_means[-1] + _EPSILON) / (phase_means[-2] + _EPSILON))


class Blockiness(Operator):
    """JPEG blockiness of a centred crop of the natively decoded pixels (1.0 = no blocking)."""

    name = columns.SCORE_BLOCKINESS
    stage = 5
    checks = (
        Check(
            name="blockiness",
            stage=5,
            column=columns.SCORE_BLOCKINESS,
            bounds=lambda thresholds: (None, thresholds.s5.max_blockiness),
            low_reason="blockiness:too_low",
            high_reason="blockiness:compression_artifacts",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        native = image.decoded.native
        if native is None:
            return math.nan
        height, width = native.shape[:2]
        top, left = max(0, (height - CROP_SIZE) // 2), max(0, (width - CROP_SIZE) // 2)
        crop = native[top : top + CROP_SIZE, left : left + CROP_SIZE]
        grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        return blockiness(grey, JPEG_BLOCK // image.decoded.reduction)
