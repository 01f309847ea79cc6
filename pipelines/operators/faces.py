"""Stage 6: faces (OpenCV's Haar cascade), faces hidden by mosaic or blur, and the general / portrait / text split.

``FaceScores`` is a Ray Data actor (the cascade loaded once per worker; map it with ``pipelines.pools.map_stage``
after ``OcrScores``, whose columns it reads). It decodes ``image_bytes`` at ``detect_short_side`` and adds:

- ``score_num_faces``: frontal faces detected;
- ``score_face_area``: area of the largest face box over the image area (0.0 without a face);
- ``score_face_mosaic``: how strongly the largest face's pixels follow a square grid (0 none, 1 a clean mosaic).
  Per column, the fraction of rows whose horizontal step exceeds ``MOSAIC_STEP`` grey levels: inside mosaic blocks
  it is near 0, on block edges near 1, whatever the contrast between blocks. That profile is high-passed (minus a
  9-wide moving average) and autocorrelated; a grid of period T peaks at lags T and 2T (the ``min`` of the two,
  maximised over T from 3 px to a quarter of the face; 2T within one lag, for grids resampled to a fractional
  period). The same on rows; the score is the smaller axis, so stripes along one axis do not count. Measured on a
  600 px portrait (matplotlib's grace_hopper.jpg) decoded at 256 and 384 px: the face as is, blurred, or saved at
  JPEG quality 30 scores 0.06 to 0.51 (the top from quality 30's own 8 px grid); mosaics of 9 to 37 cells across
  the face 0.67 to 0.96 (also after JPEG quality 75); JPEG quality 10 0.3 to 0.72. Coarser mosaics (9 cells or
  fewer) are often not detected as faces at all, and cartoon-flat faces, whose neighbouring blocks often have the
  same grey, score lower (0.45 to 0.75 on the synthetic face of the tests);
- ``score_face_blur_ratio``: variance of the Laplacian inside the face (its inner 70%, without the outline) over the
  variance outside the face box: about 1 for a sharp face, below 0.15 for a face blurred on a sharp picture. Whole
  pictures that are soft score about 1 here and are S2's concern. NaN when less than 10% of the image lies
  outside the face or the outside is flat (no reference);
- ``score_face_degraded``: ``max(mosaic, clip(-log10(blur_ratio) / 1.5, 0, 1))``: 0 for a face as sharp as its
  picture, 0.67 for one 10x softer, 1 from about 30x; 0.0 without a face, NaN when the image does not decode;
- ``category``: ``assign_category`` below.

Checks: stage 6 drops ``score_face_degraded`` above ``S6Thresholds.max_face_degraded``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pydantic

from models.config import StrictModel
from pipelines.decode import DecodeConfig, decode_image
from pipelines.operators.base import Check
from pipelines.pools import PoolConfig
from store.columns import (
    ANN_IMAGE_TYPE,
    CATEGORY,
    FACE_COLUMNS,
    IMAGE_BYTES,
    SCORE_FACE_AREA,
    SCORE_FACE_BLUR_RATIO,
    SCORE_FACE_DEGRADED,
    SCORE_FACE_MOSAIC,
    SCORE_NUM_FACES,
    SCORE_TEXT_AREA,
    SCORE_TEXT_CHARS,
)

CATEGORIES = ("general", "portrait", "text_rendering")
TEXT_IMAGE_TYPES = ("text_rendering", "document", "poster", "screenshot")
CASCADE_FILE = "haarcascade_frontalface_default.xml"
MIN_MOSAIC_PERIOD = 3
# A step between neighbouring pixels above this many grey levels counts as an edge (JPEG noise inside a block stays
# below it).
MOSAIC_STEP = 4
# Blur reference: the outside of the face must cover this much of the image and have some texture (Laplacian var).
MIN_OUTSIDE_FRACTION = 0.1
MIN_OUTSIDE_LAPLACIAN_VARIANCE = 4.0


class S6Thresholds(pydantic.BaseModel):
    """Category balance and portraits."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # score_face_degraded: 0.55 drops mosaics (0.67-0.94 measured) and faces about 7x softer than their picture
    # (blur ratio below 0.15; on a 600 px portrait a face blur of sigma 2 px gives 0.045-0.08, sigma 1 px 0.22-0.36)
    # and keeps natural faces (0.06-0.51, the top from JPEG quality 30 blocking).
    max_face_degraded: float = pydantic.Field(default=0.55, ge=0, le=1)


class CategoryConfig(StrictModel):
    """When a sample is a portrait or text rendering (docs/qwen_image.md §1, S6); text wins over a face."""

    portrait_min_face_area: float = pydantic.Field(default=0.05, ge=0, le=1)  # a head-and-shoulders shot is 0.1-0.3
    text_min_area: float = pydantic.Field(default=0.05, ge=0, le=1)  # a poster headline covers 0.1-0.2
    text_min_chars: int = pydantic.Field(default=30, ge=1)  # a paragraph; a shop sign in a street photo is fewer


class FaceScoresConfig(StrictModel):
    detect_short_side: int = pydantic.Field(default=384, ge=64)  # decode size the cascade scans
    scale_factor: float = pydantic.Field(default=1.1, gt=1.0)
    min_neighbors: int = pydantic.Field(default=5, ge=1)
    min_face_size: int = pydantic.Field(default=24, ge=12)  # pixels at detect_short_side (the cascade's window)
    category: CategoryConfig = CategoryConfig()
    pool: PoolConfig = PoolConfig(batch_size=16)


def mosaic_score(grey: np.ndarray) -> float:
    """Grid periodicity of a grey region in [0, 1] (see the module docstring); 0.0 for regions too small to tell."""
    axis_scores = []
    for axis in (1, 0):
        steps = np.abs(np.diff(grey.astype(np.int16), axis=axis)) > MOSAIC_STEP
        profile = steps.mean(axis=1 - axis, dtype=np.float32)
        length = len(profile)
        if length < 4 * MIN_MOSAIC_PERIOD + 2:
            return 0.0
        trend = cv2.blur(profile.reshape(1, -1), (9, 1), borderType=cv2.BORDER_REFLECT).ravel()
        high = profile - trend
        high -= high.mean()
        energy = float(high @ high)
        if energy <= 1e-9:
            return 0.0
        lags = np.arange(1, length // 2 + 2)
        autocorrelation = np.array([float(high[:-lag] @ high[lag:]) for lag in lags]) / energy * length
        autocorrelation /= length - lags  # unbiased: long lags sum fewer products
        best = 0.0
        for period in range(MIN_MOSAIC_PERIOD, length // 4 + 1):
            # The second peak may sit one lag off 2T when the grid was resampled to a fractional period.
            second = autocorrelation[2 * period - 2 : 2 * period + 1].max()
            best = max(best, min(autocorrelation[period - 1], second))
        axis_scores.append(best)
    return float(np.clip(min(axis_scores), 0.0, 1.0))


def blur_ratio(grey: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Laplacian variance inside the face (inner 70%) over that outside the box; NaN without a usable reference."""
    x, y, width, height = box
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    outside = np.ones(grey.shape, dtype=bool)
    outside[y : y + height, x : x + width] = False
    if outside.mean() < MIN_OUTSIDE_FRACTION:
        return math.nan
    reference = float(laplacian[outside].var())
    if reference < MIN_OUTSIDE_LAPLACIAN_VARIANCE:
        return math.nan
    margin_x, margin_y = int(0.15 * width), int(0.15 * height)
    inner = laplacian[y + margin_y : y + height - margin_y, x + margin_x : x + width - margin_x]
    return float(inner.var()) / reference


def degradation(mosaic: float, ratio: float) -> float:
    """``score_face_degraded`` from its two parts (a NaN ratio contributes nothing)."""
    blur = 0.0 if math.isnan(ratio) else float(np.clip(-math.log10(max(ratio, 1e-6)) / 1.5, 0.0, 1.0))
    return max(mosaic, blur)


def assign_category(
    face_area: np.ndarray,
    text_area: np.ndarray,
    text_chars: np.ndarray,
    image_type: np.ndarray | None = None,
    config: CategoryConfig | None = None,
) -> np.ndarray:
    """Object column of ``general`` / ``portrait`` / ``text_rendering`` (pure: re-run it on stored scores).

    Text rendering: the annotation calls the image text_rendering, document, poster or screenshot, or the OCR
    finds text over ``text_min_area`` of it or ``text_min_chars`` characters. Portrait: otherwise, a face over
    ``portrait_min_face_area``. NaN scores count as no text and no face.
    """
    config = config or CategoryConfig()
    face_area, text_area, text_chars = (
        np.nan_to_num(np.asarray(c, dtype=np.float64)) for c in (face_area, text_area, text_chars)
    )
    text = (text_area >= config.text_min_area) | (text_chars >= config.text_min_chars)
    if image_type is not None:
        text |= np.isin(np.asarray(image_type, dtype=object).astype(str), TEXT_IMAGE_TYPES)
    portrait = ~text & (face_area >= config.portrait_min_face_area)
    return np.where(text, "text_rendering", np.where(portrait, "portrait", "general")).astype(object)


class FaceScores:
    """Ray Data actor: image bytes + OCR (+ annotation) columns -> face scores and ``category``."""

    # The stage's contract (pipelines.contracts); the annotation's image type is read when it is there.
    READS: tuple[str, ...] = (IMAGE_BYTES, SCORE_TEXT_AREA, SCORE_TEXT_CHARS)
    WRITES: tuple[str, ...] = FACE_COLUMNS

    def __init__(self, config: FaceScoresConfig | None = None) -> None:
        self.config = config or FaceScoresConfig()
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if self.cascade.empty():
            raise ValueError(f"OpenCV has no {CASCADE_FILE}; install opencv-python-headless 4.x (5.x dropped it)")
        self.decode_config = DecodeConfig(analysis_short_side=self.config.detect_short_side)

    def measure(self, grey: np.ndarray) -> tuple[int, float, float, float]:
        """Faces, largest face area fraction, its mosaic score and blur ratio for one grey image."""
        size = self.config.min_face_size
        faces = self.cascade.detectMultiScale(
            grey, scaleFactor=self.config.scale_factor, minNeighbors=self.config.min_neighbors, minSize=(size, size)
        )
        if len(faces) == 0:
            return 0, 0.0, 0.0, math.nan
        x, y, width, height = (int(v) for v in max(faces, key=lambda face: face[2] * face[3]))
        box = (x, y, width, height)
        area = width * height / grey.size
        return len(faces), area, mosaic_score(grey[y : y + height, x : x + width]), blur_ratio(grey, box)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in (IMAGE_BYTES, SCORE_TEXT_AREA, SCORE_TEXT_CHARS) if name not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}: run OcrScores (pipelines.operators.text_ocr) before FaceScores")
        count = len(batch[IMAGE_BYTES])
        num_faces, area, mosaic, ratio, degraded = (np.full(count, np.nan) for _ in range(5))
        for row, data in enumerate(batch[IMAGE_BYTES]):
            decoded = decode_image(bytes(data) if data is not None else b"", self.decode_config)
            if not decoded.ok:
                continue
            try:
                grey = cv2.cvtColor(decoded.image, cv2.COLOR_RGB2GRAY)
                num_faces[row], area[row], mosaic[row], ratio[row] = self.measure(grey)
            except cv2.error:  # degenerate images (1 px wide) are left unscored
                continue
            degraded[row] = degradation(mosaic[row], ratio[row])
        category = assign_category(
            area, batch[SCORE_TEXT_AREA], batch[SCORE_TEXT_CHARS], batch.get(ANN_IMAGE_TYPE), self.config.category
        )
        return {
            **batch,
            SCORE_NUM_FACES: num_faces,
            SCORE_FACE_AREA: area,
            SCORE_FACE_MOSAIC: mosaic,
            SCORE_FACE_BLUR_RATIO: ratio,
            SCORE_FACE_DEGRADED: degraded,
            CATEGORY: category,
        }


def face_checks() -> tuple[Check, ...]:
    """Stage-6 check: faces with mosaic or blur (thresholds in ``FilterThresholds.s6``)."""
    return (
        Check(
            name="face_degraded",
            stage=6,
            column=SCORE_FACE_DEGRADED,
            bounds=lambda t: (None, t.s6.max_face_degraded),
            low_reason="face_degraded:low",
            high_reason="face_degraded:mosaic_or_blur",
        ),
    )
