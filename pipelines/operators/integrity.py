"""S1 file integrity: broken files (from the decoder) and files too small to be real images."""

from __future__ import annotations

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns


class BrokenFile(Operator):
    """1.0 when the bytes did not decode; the decoder's reason is kept in ``decode_error``."""

    name = columns.SCORE_BROKEN_FILE
    stage = 1
    needs_pixels = False
    checks = (
        Check(
            name="broken_file",
            stage=1,
            column=columns.SCORE_BROKEN_FILE,
            bounds=lambda thresholds: (None, 0.5),
            low_reason="broken_file",
            high_reason="broken_file",
            detail_column=columns.DECODE_ERROR,
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        return 0.0 if image.decoded.ok else 1.0


class FileSize(Operator):
    """Size of the encoded file in bytes."""

    name = columns.SCORE_FILE_SIZE
    stage = 1
    needs_pixels = False
    checks = (
        Check(
            name="file_size",
            stage=1,
            column=columns.SCORE_FILE_SIZE,
            bounds=lambda thresholds: (thresholds.s1.min_file_size_bytes, None),
            low_reason="file_size:too_small",
            high_reason="file_size:too_large",
        ),
    )

    def score(self, image: AnalysisImage) -> float:
        return float(image.decoded.file_size)
