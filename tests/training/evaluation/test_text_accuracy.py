"""Character and text accuracy: what the synthesiser renders scores 1, a blank image 0, per tier and per language."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.synth.text import char_tier
from training.evaluation.images import render_text
from training.evaluation.stages import OcrScores
from training.evaluation.text_accuracy import CHARS, TEXT_EN, TEXT_ZH, char_correct, char_rows, longtext_accuracy

# Three characters per tier, fixed so the test does not depend on a draw; their tiers are asserted below.
CHARACTERS = {"gb2312_level1": "中国字", "gb2312_level2": "蟮炷杪", "gbk_extra": "鐻葅禘"}


@pytest.fixture(scope="module")
def ocr_stage() -> OcrScores:
    return OcrScores()


def _score(stage: OcrScores, tasks: list[str], expected: list[str], images: np.ndarray) -> np.ndarray:
    batch = {
        "task": np.array(tasks, dtype=object),
        "expected": np.array(expected, dtype=object),
        "image": images,
    }
    return stage(batch)["score"]


def test_char_accuracy_on_rendered_text(ocr_stage: OcrScores) -> None:
    for tier, characters in CHARACTERS.items():
        assert all(char_tier(char) == tier for char in characters), tier
        rendered = np.stack([render_text(char, 128) for char in characters])
        blank = np.full_like(rendered, 255)
        tasks = [CHARS] * len(characters)
        assert _score(ocr_stage, tasks, list(characters), rendered).mean() == 1.0, tier
        assert _score(ocr_stage, tasks, list(characters), blank).mean() == 0.0, tier


def test_text_accuracy_on_rendered_text(ocr_stage: OcrScores) -> None:
    expected = ["Fresh Coffee Daily", "欢迎光临书店"]
    rendered = np.stack([render_text(text, 256) for text in expected])
    scores = _score(ocr_stage, [TEXT_EN, TEXT_ZH], expected, rendered)
    assert scores.tolist() == [1.0, 1.0]
    assert _score(ocr_stage, [TEXT_EN, TEXT_ZH], expected, np.full_like(rendered, 255)).tolist() == [0.0, 0.0]


def test_scoring_rules() -> None:
    assert char_correct("国", "国") == 1.0 and char_correct("国", "国家") == 0.0 and char_correct("国", "") == 0.0
    assert char_correct("国", " 国。") == 1.0  # punctuation and spaces are not characters of the answer
    assert longtext_accuracy("Hello big World", "hello world", "en") == pytest.approx(2 / 3)
    assert longtext_accuracy("Hello World", "world world hello", "en") == 1.0
    assert longtext_accuracy("欢迎光临", "欢迎光", "zh") == 0.75
    rows = char_rows(["gb2312_level1", "gbk_extra"], 5, "字“{}”", seed=0)
    assert [row["group"] for row in rows] == ["gb2312_level1"] * 5 + ["gbk_extra"] * 5
    assert all(char_tier(row["expected"]) == row["group"] and row["expected"] in row["prompt"] for row in rows)
    assert rows == char_rows(["gb2312_level1", "gbk_extra"], 5, "字“{}”", seed=0)
