"""S2 entropy: low grey-histogram entropy flags large uniform areas (blank, flat graphics)."""

from __future__ import annotations

import numpy as np

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


class Entropy(Operator):
    """Shannon entropy of the 256-bin grey histogram, in bits (0 for one colour, 8 at most)."""

    name = columns.SCORE_ENTROPY
    stage = 2
    checks = (
        Check(
            name="entropy",
            stage=2,
            column=columns.SCORE_ENTROPY,
            bounds=lambda thresholds: (thresholds.s2.min_entropy, None),
            low_reason="entropy:too_low",
            high_reason="entropy:too_high",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        probabilities = image.grey_histogram
        probabilities = probabilities[probabilities > 0]
        return float(-(probabilities * np.log2(probabilities)).sum()) + 0.0
