"""S2 rotation / flip: the EXIF orientation tag found in the file (the decoder has applied it)."""

from __future__ import annotations

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


class Orientation(Operator):
    """EXIF orientation 1..8 (1 = stored upright, also when there is no EXIF)."""

    name = columns.SCORE_ORIENTATION
    stage = 2
    checks = (
        Check(
            name="orientation",
            stage=2,
            column=columns.SCORE_ORIENTATION,
            bounds=lambda thresholds: (1, thresholds.s2.max_orientation),
            low_reason="orientation:invalid",
            high_reason="orientation:rotated_or_flipped",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        return float(image.decoded.orientation)
