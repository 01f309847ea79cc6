"""Shared building blocks of the operators: the analysis image, the operator base and the check.

``AnalysisImage`` wraps one decode result and computes derived arrays (grey, histogram,
Laplacian, detector-sized copies) once, so that operators sharing them pay for them once: this
is what keeps all operators together under the cost of a full decode (docs/costs.md §1).

``Check`` is declarative: a score column, the stage, and bounds read from the thresholds. The
same object gives the drop reason of one stored score (``reason``) and a vectorised pass mask
over a whole column (``passes``), so thresholds can be re-applied to stored scores without
re-decoding anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import cv2
import numpy as np

from pipelines.decode import DecodeResult, resize_short_side

NUM_STAGES = 7

Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Check:
    """A threshold on one score column: a sample passes when ``lower <= score <= upper``.

    ``bounds`` maps the thresholds object (``FilterThresholds``) to ``(lower, upper)``; ``None``
    leaves that side open. A missing score (NaN) fails with ``"<name>:missing"``, or passes when
    ``missing_passes`` (a measure that does not apply to every sample). When
    ``detail_column`` is set, a failing sample's reason is read from that string column
    (the decoder's own reason for broken files).
    """

    name: str
    stage: int
    column: str
    bounds: Callable[[Any], Bounds]
    low_reason: str
    high_reason: str
    detail_column: str | None = None
    # True for measures that do not apply to every sample (no text line, no annotation): a missing score passes.
    missing_passes: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.stage <= NUM_STAGES:
            raise ValueError(f"check {self.name!r}: stage must be in 1..{NUM_STAGES}, got {self.stage}")

    def reason(self, score: float, thresholds: Any) -> str | None:
        """Drop reason for one stored score, or None when it passes."""
        lower, upper = self.bounds(thresholds)
        if math.isnan(score):
            return None if self.missing_passes else f"{self.name}:missing"
        if lower is not None and score < lower:
            return self.low_reason
        if upper is not None and score > upper:
            return self.high_reason
        return None

    def passes(self, scores: np.ndarray, thresholds: Any) -> np.ndarray:
        """Boolean pass mask over a score column."""
        lower, upper = self.bounds(thresholds)
        scores = np.asarray(scores, dtype=np.float64)
        missing = np.isnan(scores)
        mask = ~missing
        if lower is not None:
            mask &= scores >= lower
        if upper is not None:
            mask &= scores <= upper
        return mask | missing if self.missing_passes else mask


class AnalysisImage:
    """One decoded sample as the operators see it; derived arrays are computed on first use."""

    def __init__(self, decoded: DecodeResult) -> None:
        self.decoded = decoded
        self._grey_by_short_side: dict[int, np.ndarray] = {}

    @property
    def rgb(self) -> np.ndarray:
        """Analysis copy, [H, W, 3] RGB uint8."""
        if self.decoded.image is None:
            raise ValueError(f"no pixels to analyse: {self.decoded.drop_reason}")
        return self.decoded.image

    @cached_property
    def grey(self) -> np.ndarray:
        """[H, W] uint8, BT.601 luma."""
        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)

    @cached_property
    def grey_histogram(self) -> np.ndarray:
        """[256] float64 probabilities of the grey levels."""
        counts = cv2.calcHist([self.grey], [0], None, [256], [0, 256]).ravel().astype(np.float64)
        return counts / max(counts.sum(), 1.0)

    @cached_property
    def laplacian(self) -> np.ndarray:
        """[H, W] int16 3x3 Laplacian of the grey copy (CV_16S: 6x cheaper than float64)."""
        return cv2.Laplacian(self.grey, cv2.CV_16S)

    def grey_at(self, short_side: int) -> np.ndarray:
        """Grey copy downscaled to at most ``short_side`` on its short side, cached per size."""
        if short_side not in self._grey_by_short_side:
            self._grey_by_short_side[short_side] = resize_short_side(self.grey, short_side)
        return self._grey_by_short_side[short_side]


class Operator:
    """Base of all operators: ``name`` is the score column, ``stage`` the stage it belongs to.

    ``needs_pixels = False`` marks operators scored from metadata alone, also for samples whose
    decode failed; the others get NaN (or ``missing_value``) there. ``checks`` are the threshold
    checks that read this operator's column; a check may sit in a later stage than the operator
    (S5 re-checks S2's blur score with its own threshold).
    """

    name: ClassVar[str]
    stage: ClassVar[int]
    dtype: ClassVar[type] = np.float64
    missing_value: ClassVar[float | int] = math.nan
    needs_pixels: ClassVar[bool] = True
    checks: ClassVar[tuple[Check, ...]] = ()

    def score(self, image: AnalysisImage) -> float:
        raise NotImplementedError
