"""Stage 7 balance fields: resolution class, quality score, per-category quality rank and its check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.operators.balance import (
    S7Thresholds,
    add_quality_rank,
    balance_checks,
    balance_columns,
    quality_rank,
    quality_score,
    resolution_class,
)
from pipelines.operators.stage import compute_stage
from store.columns import QUALITY_RANK, QUALITY_SCORE, RESOLUTION_CLASS

THRESHOLDS = SimpleNamespace(s7=S7Thresholds())


def test_resolution_class():
    short_sides = np.array([100, 255, 256, 639, 640, 1327, 1328, 4000, np.nan])
    assert list(resolution_class(short_sides)) == [
        "below_256",
        "below_256",
        "256",
        "256",
        "640",
        "640",
        "1328",
        "1328",
        "below_256",
    ]


def test_quality_score_terms_and_weights():
    columns = {
        "score_blur": np.array([1000.0, 50.0, 223.6, 2000.0, np.nan]),
        "score_exposure": np.array([0.0, 0.3, 0.15, 0.0, np.nan]),
        "score_blockiness": np.array([1.1, 1.8, 1.45, 1.0, np.nan]),
    }
    score = quality_score(columns)
    np.testing.assert_allclose(score[:4], [1.0, 0.0, 0.5, 1.0], atol=1e-3)  # 223.6 = 10 ** mid(log10 50, log10 1000)
    assert math.isnan(score[4])
    # The aesthetic term weighs as much as the three technical ones together.
    columns["score_aesthetic"] = np.array([3.0, 7.0, 5.0, np.nan, 7.0])
    np.testing.assert_allclose(quality_score(columns), [0.5, 0.5, 0.5, 1.0, 1.0], atol=1e-3)
    assert quality_score({}).shape == (0,)


def test_balance_columns_requires_resolution():
    out = balance_columns({"score_resolution": np.array([700.0]), "score_blur": np.array([1000.0])})
    assert out[RESOLUTION_CLASS][0] == "640" and out[QUALITY_SCORE][0] == 1.0
    with pytest.raises(ValueError, match="score_resolution"):
        balance_columns({"score_blur": np.array([1.0])})


def test_quality_rank_within_category():
    quality = np.array([0.1, 0.5, 0.9, 0.3, 0.3, 0.8, np.nan, 0.99])
    category = np.array(
        ["general", "general", "general", "portrait", "portrait", "text_rendering", "general", "general"]
    )
    eligible = np.array([True, True, True, True, True, True, True, False])
    ranks = quality_rank(quality, category, eligible)
    np.testing.assert_allclose(ranks[:6], [0.0, 0.5, 1.0, 0.5, 0.5, 1.0])  # ties share; a lone sample is its best
    assert math.isnan(ranks[6]) and math.isnan(ranks[7])  # no score; not eligible (0.99 does not push others down)
    with pytest.raises(ValueError, match="differ in length"):
        quality_rank(quality, category[:3])


def test_quality_rank_check_keeps_top_of_each_category():
    (check,) = balance_checks()
    quality = np.linspace(0.0, 1.0, 8)
    category = np.array(["general"] * 4 + ["portrait"] * 4, dtype=object)
    out = add_quality_rank({QUALITY_SCORE: quality, "category": category})
    # Ranks 0, 1/3, 2/3, 1 in each category: the worst of each drops at min_quality_rank 0.25.
    assert list(check.passes(out[QUALITY_RANK], THRESHOLDS)) == [False, True, True, True] * 2
    assert check.reason(out[QUALITY_RANK][4], THRESHOLDS) == "quality_rank:low"
    assert check.reason(out[QUALITY_RANK][5], THRESHOLDS) is None
    assert list(compute_stage(out, THRESHOLDS, balance_checks())) == [6, 7, 7, 7] * 2
    with pytest.raises(ValueError, match="category"):
        add_quality_rank({QUALITY_SCORE: quality})
