"""Stage 6: Haar face detection, the mosaic / blur measure of the largest face, the S6 check and the categories.

Faces are synthesised (a shaded oval with brows, eyes, nose and mouth: the frontal cascade fires on it at every
blur tried) on a noisy background, so that blur inside the face box is measurable against the rest of the picture.
matplotlib's sample portrait, when installed, checks the same on a real face.
"""

from __future__ import annotations

import io
import math
import pathlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.operators.faces import (
    CategoryConfig,
    FaceScores,
    S6Thresholds,
    assign_category,
    face_checks,
    mosaic_score,
)
from store.columns import (
    CATEGORY,
    SCORE_FACE_AREA,
    SCORE_FACE_BLUR_RATIO,
    SCORE_FACE_DEGRADED,
    SCORE_FACE_MOSAIC,
    SCORE_NUM_FACES,
)

THRESHOLDS = SimpleNamespace(s6=S6Thresholds())
ROWS = ("sharp", "blurred", "mosaic", "no_face", "broken")


def synthetic_face(size: int = 384) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """[size, size, 3] uint8 face on a noisy background, and the face's box (x, y, w, h)."""
    grey = np.full((size, size), 90, np.uint8)
    centre, radius = size // 2, size // 4
    cv2.ellipse(grey, (centre, centre), (int(radius * 0.8), radius), 0, 0, 360, 200, -1)
    eye_y, eye_dx = centre - radius // 4, radius // 3
    for side in (-1, 1):
        cv2.ellipse(grey, (centre + side * eye_dx, eye_y - radius // 5), (radius // 5, radius // 18), 0, 0, 360, 60, -1)
        cv2.ellipse(grey, (centre + side * eye_dx, eye_y), (radius // 7, radius // 12), 0, 0, 360, 40, -1)
    cv2.ellipse(grey, (centre, centre + radius // 8), (radius // 14, radius // 5), 0, 0, 360, 160, -1)
    cv2.ellipse(grey, (centre, centre + radius // 2), (radius // 4, radius // 14), 0, 0, 360, 70, -1)
    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(grey, (0, 0), 1.5).astype(np.float64)
    shading = cv2.GaussianBlur(rng.normal(0, 1, grey.shape), (0, 0), 10)
    grey += 20 * shading / shading.std()  # uneven light and skin: neighbouring mosaic blocks differ
    grey += rng.normal(0, 8, grey.shape)  # fine texture, which a blur removes
    rgb = np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    side = int(2.2 * radius)
    return rgb, (centre - side // 2, centre - side // 2, side, side)


def mosaic(image: np.ndarray, box: tuple[int, int, int, int], block: int) -> np.ndarray:
    x, y, width, height = box
    small = cv2.resize(
        image[y : y + height, x : x + width], (width // block, height // block), interpolation=cv2.INTER_AREA
    )
    out = image.copy()
    out[y : y + height, x : x + width] = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    return out


def blur(image: np.ndarray, box: tuple[int, int, int, int], sigma: float) -> np.ndarray:
    x, y, width, height = box
    out = image.copy()
    out[y : y + height, x : x + width] = cv2.GaussianBlur(out[y : y + height, x : x + width], (0, 0), sigma)
    return out


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def batch_of(images: list[bytes]) -> dict[str, np.ndarray]:
    count = len(images)
    return {
        "image_bytes": np.array(images, dtype=object),
        "score_text_area": np.zeros(count),
        "score_text_chars": np.zeros(count),
    }


@pytest.fixture(scope="module")
def scorer() -> FaceScores:
    return FaceScores()


@pytest.fixture(scope="module")
def scored(scorer) -> dict[str, np.ndarray]:
    face, box = synthetic_face()
    background = np.random.default_rng(1).normal(120, 10, face.shape).clip(0, 255).astype(np.uint8)
    images = [png(face), png(blur(face, box, 3.0)), png(mosaic(face, box, 8)), png(background), b"GIF89a broken"]
    return scorer(batch_of(images))


def test_faces_are_found_and_measured(scored):
    assert list(scored[SCORE_NUM_FACES][:4]) == [1, 1, 1, 0]
    assert all(0.2 < area < 0.45 for area in scored[SCORE_FACE_AREA][:3])  # a 211 px box on 384 x 384
    assert scored[SCORE_FACE_AREA][3] == 0.0 and scored[SCORE_FACE_DEGRADED][3] == 0.0
    sharp, blurred, mosaicked = scored[SCORE_FACE_BLUR_RATIO][:3]
    assert 0.5 < sharp < 2.0 and blurred < 0.05  # the noise inside the face is gone after the blur
    assert scored[SCORE_FACE_MOSAIC][2] > 0.65 and max(scored[SCORE_FACE_MOSAIC][:2]) < 0.2
    assert list(scored[CATEGORY]) == ["portrait", "portrait", "portrait", "general", "general"]


def test_face_degraded_check(scored):
    (check,) = face_checks()
    assert check.stage == 6
    degraded = scored[SCORE_FACE_DEGRADED]
    assert list(check.passes(degraded, THRESHOLDS)) == [True, False, False, True, False]
    assert check.reason(degraded[1], THRESHOLDS) == "face_degraded:mosaic_or_blur"
    assert check.reason(degraded[2], THRESHOLDS) == "face_degraded:mosaic_or_blur"
    assert math.isnan(degraded[4])  # undecodable: S1 drops it, S6 reports it missing


def test_mosaic_score_on_regions():
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 255, (12, 12)).astype(np.uint8)
    clean_mosaic = cv2.resize(blocks, (120, 120), interpolation=cv2.INTER_NEAREST)
    resampled = cv2.resize(clean_mosaic, (83, 83), interpolation=cv2.INTER_AREA)  # 6.9 px blocks, smeared edges
    noise = cv2.GaussianBlur(rng.normal(128, 30, (120, 120)), (0, 0), 1.0).clip(0, 255).astype(np.uint8)
    stripes = np.tile(np.repeat(rng.integers(0, 255, 12).astype(np.uint8), 10), (120, 1))  # one axis only
    assert mosaic_score(clean_mosaic) > 0.8
    assert mosaic_score(resampled) > 0.5
    assert mosaic_score(noise) < 0.3
    assert mosaic_score(stripes) < 0.3
    assert mosaic_score(np.full((120, 120), 7, np.uint8)) == 0.0
    assert mosaic_score(np.zeros((8, 8), np.uint8)) == 0.0


REAL_FACE = pathlib.Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.mark.skipif(not REAL_FACE.is_file(), reason="matplotlib's sample portrait is not installed")
def test_real_portrait(scorer):
    rgb = np.asarray(Image.open(REAL_FACE).convert("RGB"))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    (box,) = [tuple(int(v) for v in face) for face in scorer.cascade.detectMultiScale(grey, 1.1, 5, minSize=(48, 48))]
    out = scorer(batch_of([png(rgb), png(mosaic(rgb, box, 16)), png(blur(rgb, box, 2.0))]))
    assert list(out[SCORE_NUM_FACES]) == [1, 1, 1]
    assert list(face_checks()[0].passes(out[SCORE_FACE_DEGRADED], THRESHOLDS)) == [True, False, False]


def test_assign_category():
    config = CategoryConfig()
    category = assign_category(
        face_area=np.array([0.2, 0.01, 0.2, 0.0, 0.0, np.nan, 0.3]),
        text_area=np.array([0.0, 0.0, 0.15, 0.01, 0.0, np.nan, 0.0]),
        text_chars=np.array([0, 3, 12, 80, 0, np.nan, 0]),
        image_type=np.array(["photo", "photo", "poster", "photo", "document", "", "screenshot"], dtype=object),
        config=config,
    )
    assert list(category) == [
        "portrait",  # face over 5% of the image
        "general",  # small face, a few characters
        "text_rendering",  # text area wins over the face
        "text_rendering",  # many characters
        "text_rendering",  # the annotation says document
        "general",  # nothing known
        "text_rendering",  # screenshot with a face in it
    ]
    assert list(assign_category(np.array([0.2]), np.array([0.0]), np.array([0.0]))) == ["portrait"]


def test_ocr_columns_are_required(scorer):
    with pytest.raises(ValueError, match="OcrScores"):
        scorer({"image_bytes": np.array([b""], dtype=object)})
