"""Stage computation from stored scores: highest stage passed, first drop reason, thresholds re-applied."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipelines.operators.base import Check
from pipelines.operators.dedup import add_duplicate_column
from pipelines.operators.registry import ScoreOperators, build_operators, operator_checks
from pipelines.operators.stage import check_masks, compute_stage, first_drop_reason
from pipelines.operators.thresholds import FilterThresholds
from store import columns

CHECKS = operator_checks(build_operators())
DEFAULTS = FilterThresholds()

GOOD = {
    columns.SCORE_BROKEN_FILE: 0.0,
    columns.SCORE_FILE_SIZE: 150_000.0,
    columns.SCORE_RESOLUTION: 800.0,
    columns.SCORE_DUPLICATE: 0.0,
    columns.SCORE_ORIENTATION: 1.0,
    columns.SCORE_BLUR: 400.0,
    columns.SCORE_LUMA: 0.5,
    columns.SCORE_SATURATION: 0.4,
    columns.SCORE_ENTROPY: 7.0,
    columns.SCORE_TEXTURE: 0.05,
    columns.SCORE_EXPOSURE: 0.01,
    columns.SCORE_BLOCKINESS: 1.05,
    columns.SCORE_QR_CODE: 0.0,
    columns.SCORE_BARCODE: 0.0,
}


def _table(*overrides: dict[str, float]) -> dict[str, np.ndarray]:
    """One row per override dict, the good scores elsewhere; decode_error '' unless given."""
    rows = [{**GOOD, **override} for override in overrides]
    table = {name: np.array([row[name] for row in rows], dtype=np.float64) for name in GOOD}
    table[columns.DECODE_ERROR] = np.array([row.get(columns.DECODE_ERROR, "") for row in rows], dtype=object)
    return table


def test_stage_is_the_highest_stage_fully_passed():
    table = _table(
        {},  # passes everything registered: S3, S4, S6, S7 have no checks yet, so 7
        {columns.SCORE_BLUR: 70.0},  # passes S2 (>= 50) but not S5 (>= 100): 4
        {columns.SCORE_LUMA: 0.01},  # fails S2: 1
        {columns.SCORE_RESOLUTION: 100.0},  # fails S1: 0
        {columns.SCORE_QR_CODE: 1.0, columns.SCORE_LUMA: 0.99},  # the earliest failure decides: 1
    )
    np.testing.assert_array_equal(compute_stage(table, DEFAULTS, CHECKS), [7, 4, 1, 0, 1])
    reasons = first_drop_reason(table, DEFAULTS, CHECKS)
    assert list(reasons) == ["", "blur_640p:too_blurry", "luma:too_dark", "resolution:too_small", "luma:too_bright"]


def test_broken_files_get_the_decoders_reason_and_missing_scores_fail():
    nan = math.nan
    broken = {columns.SCORE_BROKEN_FILE: 1.0, columns.SCORE_BLUR: nan, columns.DECODE_ERROR: "broken_file:truncated"}
    table = _table(broken, {columns.SCORE_ENTROPY: nan})
    np.testing.assert_array_equal(compute_stage(table, DEFAULTS, CHECKS), [0, 1])
    assert list(first_drop_reason(table, DEFAULTS, CHECKS)) == ["broken_file:truncated", "entropy:missing"]


def test_thresholds_are_reapplied_to_stored_scores():
    table = _table({columns.SCORE_SATURATION: 0.7}, {columns.SCORE_BLOCKINESS: 1.4})
    np.testing.assert_array_equal(compute_stage(table, DEFAULTS, CHECKS), [7, 7])
    strict = FilterThresholds.model_validate({"s2": {"max_saturation": 0.6}, "s5": {"max_blockiness": 1.2}})
    np.testing.assert_array_equal(compute_stage(table, strict, CHECKS), [1, 4])
    masks = check_masks(table, strict, CHECKS)
    assert list(masks["saturation"]) == [False, True] and list(masks["blockiness"]) == [True, False]


def test_checks_of_other_stages_can_be_added():
    caption_check = Check(
        name="caption_tokens",
        stage=3,
        column="score_caption_tokens",
        bounds=lambda thresholds: (None, 1024.0),
        low_reason="caption_tokens:too_short",
        high_reason="caption_tokens:too_long",
    )
    table = {**_table({}, {}, {columns.SCORE_LUMA: 0.0}), "score_caption_tokens": np.array([20.0, 5000.0, 20.0])}
    checks = [*CHECKS, caption_check]
    np.testing.assert_array_equal(compute_stage(table, DEFAULTS, checks), [7, 2, 1])
    assert first_drop_reason(table, DEFAULTS, checks)[1] == "caption_tokens:too_long"


def test_a_missing_column_is_an_error_that_names_it():
    table = _table({})
    del table[columns.SCORE_DUPLICATE]
    with pytest.raises(ValueError, match="score_duplicate"):
        compute_stage(table, DEFAULTS, CHECKS)
    without_dedup = [check for check in CHECKS if check.column != columns.SCORE_DUPLICATE]
    np.testing.assert_array_equal(compute_stage(table, DEFAULTS, without_dedup), [7])


def _photo(seed: int, height: int = 720, width: int = 960) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([120 + 60 * np.sin(x / 150 + c + seed) * np.cos(y / 110 - c) for c in range(3)], -1)
    image = image.astype(np.uint8)
    for _ in range(10):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(value) for value in rng.integers(0, 256, 3))
        cv2.circle(image, center, int(rng.integers(20, 160)), color, -1, cv2.LINE_AA)
    cv2.putText(image, f"sample {seed}", (80, 360), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6, cv2.LINE_AA)
    return (image + rng.normal(0, 3, image.shape)).clip(0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def test_end_to_end_from_bytes_to_stage():
    sharp = _jpeg(_photo(0))
    blurry = _jpeg(cv2.GaussianBlur(_photo(1), (0, 0), 4))
    small = _jpeg(cv2.resize(_photo(2), (400, 300), interpolation=cv2.INTER_AREA))
    batch = {
        columns.IMAGE_BYTES: np.array([sharp, sharp, blurry, small, sharp[:5000]], dtype=object),
        columns.SAMPLE_ID: np.array(["s1", "s0", "b", "m", "t"]),
    }
    scored = add_duplicate_column(ScoreOperators()(batch), DEFAULTS)
    reasons = list(first_drop_reason(scored, DEFAULTS, CHECKS))
    assert reasons == ["duplicate", "", "blur:too_blurry", "resolution_640p:too_small", "broken_file:truncated"]
    np.testing.assert_array_equal(compute_stage(scored, DEFAULTS, CHECKS), [0, 7, 1, 4, 0])
