"""Stage 4 OCR operators (language split, intensive text, small characters) and the S5 watermark check.

One ``OcrScores`` per module scores every rendered image in one batch (RapidOCR costs 0.3-1.5 s an image here).
"""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from models.ocr import OcrConfig
from pipelines.operators.stage import compute_stage, first_drop_reason
from pipelines.operators.text_ocr import (
    OcrScores,
    OcrScoresConfig,
    S4Thresholds,
    disabled_ocr_columns,
    parse_watermarks,
    text_ocr_checks,
    watermark_in_text,
)
from store.columns import (
    ANN_ERROR,
    ANN_WATERMARKS,
    OCR_COLUMNS,
    OCR_ERROR,
    OCR_TEXT,
    SAMPLE_ID,
    SCORE_OCR_ERROR,
    SCORE_TEXT_AREA,
    SCORE_TEXT_CHARS,
    SCORE_TEXT_LINES,
    SCORE_TEXT_MIN_HEIGHT,
    SCORE_WATERMARK,
    TEXT_LANGUAGE,
    WATERMARK_VERIFIED,
)

FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
ROWS = ("english", "chinese", "no_text", "dense", "footnote", "watermark", "broken")


def thresholds(allow_watermark: bool = False) -> SimpleNamespace:
    return SimpleNamespace(s4=S4Thresholds(), s5=SimpleNamespace(allow_watermark=allow_watermark))


def render(items: list[tuple[tuple[int, int], str, int]], size: tuple[int, int] = (640, 480)) -> bytes:
    """PNG of dark text items ((x, y), text, font size) on a light gradient."""
    width, height = size
    ramp = np.linspace(235, 250, width, dtype=np.float64)
    image = Image.fromarray(np.repeat(np.tile(ramp, (height, 1))[..., None], 3, axis=2).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for (x, y), text, font_size in items:
        draw.text((x, y), text, font=ImageFont.truetype(FONT, font_size), fill=(20, 20, 30))
    return _png(image)


def watermarked_photo() -> bytes:
    """A smooth colour field with a translucent white watermark across it."""
    rng = np.random.default_rng(0)
    field = np.stack(np.meshgrid(np.linspace(40, 160, 640), np.linspace(60, 140, 480)), -1)
    pixels = np.concatenate([field, np.full((480, 640, 1), 90.0)], -1) + rng.normal(0, 3, (480, 640, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).text(
        (110, 200), "shutterstock", font=ImageFont.truetype(FONT, 64), fill=(255, 255, 255, 150)
    )
    return _png(Image.alpha_composite(image, overlay).convert("RGB"))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scored() -> dict[str, np.ndarray]:
    images = {
        "english": render([((60, 180), "OPEN DAILY", 72)]),
        "chinese": render([((60, 180), "欢迎光临本店", 72)]),
        "no_text": render([]),
        "dense": render(
            [((6, 6 + 15 * i), "The quick brown fox jumps over the lazy dog 0123456789", 11) for i in range(31)]
        ),
        "footnote": render(
            [((60, 200), "Summer Sale", 96), ((60, 660), "Terms and conditions apply to all purchases", 9)], (960, 720)
        ),
        "watermark": watermarked_photo(),
        "broken": b"\xff\xd8\xff\xe0 not a jpeg",
    }
    watermarks = {"english": '["Getty Images"]', "watermark": '["Shutterstock"]', "chinese": "[]"}
    batch = {
        "image_bytes": np.array([images[name] for name in ROWS], dtype=object),
        "ann_watermark_list": np.array([watermarks.get(name, "[]") for name in ROWS], dtype=object),
        # The no-text row's annotation failed: its watermark score is unknown.
        "annotation_error": np.array(["unparsable:x" if name == "no_text" else "" for name in ROWS], dtype=object),
    }
    scorer = OcrScores(OcrScoresConfig(ocr=OcrConfig(num_threads=2)))
    out = scorer(batch)
    return {name: out[name] for name in out} | {"row": {name: index for index, name in enumerate(ROWS)}}


def row(scored: dict, name: str) -> int:
    return scored["row"][name]


def test_text_is_read_and_language_split(scored):
    assert list(scored[TEXT_LANGUAGE]) == ["en", "zh", "none", "en", "en", "en", ""]
    assert scored[OCR_TEXT][row(scored, "english")].replace(" ", "") == "OPENDAILY"
    assert scored[OCR_TEXT][row(scored, "chinese")] == "欢迎光临本店"
    assert scored[SCORE_TEXT_CHARS][row(scored, "chinese")] == 6
    assert scored[SCORE_TEXT_CHARS][row(scored, "english")] == 9
    assert scored[SCORE_TEXT_LINES][row(scored, "no_text")] == 0
    assert scored[SCORE_TEXT_LINES][row(scored, "dense")] >= 28


def test_intensive_text_check(scored):
    check = next(check for check in text_ocr_checks() if check.name == "text_area")
    dense, single = scored[SCORE_TEXT_AREA][row(scored, "dense")], scored[SCORE_TEXT_AREA][row(scored, "english")]
    assert dense > 0.4 and 0.05 < single < 0.2
    assert scored[SCORE_TEXT_AREA][row(scored, "no_text")] == 0.0
    assert check.reason(dense, thresholds()) == "text_area:intensive_text"
    assert check.reason(single, thresholds()) is None


def test_small_characters_check(scored):
    check = next(check for check in text_ocr_checks() if check.name == "text_height")
    heights = scored[SCORE_TEXT_MIN_HEIGHT]
    # A 72 px line on a 480 px image is about 0.16 of the short side; a 9 px footnote on 720 px about 0.02.
    assert 0.12 < heights[row(scored, "english")] < 0.25
    assert heights[row(scored, "footnote")] < 0.024
    assert heights[row(scored, "dense")] > 0.028  # dense, but legible: only the area check drops it
    assert math.isnan(heights[row(scored, "no_text")])
    passes = check.passes(heights, thresholds())
    assert passes[row(scored, "english")] and passes[row(scored, "dense")] and not passes[row(scored, "footnote")]
    assert passes[row(scored, "no_text")]  # nothing to read is not small print
    assert check.reason(heights[row(scored, "footnote")], thresholds()) == "text_height:small_characters"


def test_watermark_check_and_verification(scored):
    check = next(check for check in text_ocr_checks() if check.name == "watermark")
    assert check.stage == 5
    scores, verified = scored[SCORE_WATERMARK], scored[WATERMARK_VERIFIED]
    assert scores[row(scored, "watermark")] == 1.0 and verified[row(scored, "watermark")]
    assert scores[row(scored, "english")] == 1.0 and not verified[row(scored, "english")]  # listed, not in the text
    assert scores[row(scored, "chinese")] == 0.0 and not verified[row(scored, "chinese")]
    assert math.isnan(scores[row(scored, "no_text")])  # annotation failed: unknown
    assert check.reason(scores[row(scored, "watermark")], thresholds()) == "watermark"
    assert check.reason(scores[row(scored, "chinese")], thresholds()) is None
    assert check.reason(scores[row(scored, "watermark")], thresholds(allow_watermark=True)) is None
    assert [check.name for check in text_ocr_checks(watermark=False)] == ["ocr", "text_area", "text_height"]


def test_broken_image_is_recorded(scored):
    broken = row(scored, "broken")
    assert scored[OCR_ERROR][broken].startswith("no_image:broken_file")
    assert math.isnan(scored[SCORE_TEXT_AREA][broken]) and math.isnan(scored[SCORE_TEXT_LINES][broken])
    assert all(scored[OCR_ERROR][row(scored, name)] == "" for name in ROWS if name != "broken")
    # The engine read every decodable image; the broken one never reached it (it fails S1 as a broken file).
    assert [scored[SCORE_OCR_ERROR][row(scored, name)] for name in ROWS if name != "broken"] == [0.0] * 6
    assert math.isnan(scored[SCORE_OCR_ERROR][broken])


def test_ocr_engine_failure_is_recorded():
    """An OCR engine that fails is not "no text": the producers record ``ocr_error`` (a drop reason the funnel counts,
    never a pass of the text checks), and evaluation stops with the error instead of scoring 0."""
    from models.ocr import OcrError
    from pipelines.funnel import funnel_summary
    from training.evaluation.stages import OcrScores as EvaluationOcr
    from training.evaluation.text_accuracy import TEXT_EN

    def broken_engine(image):
        raise RuntimeError("onnxruntime session lost")

    images = [render([((60, 180), "OPEN DAILY", 72)]), render([])]
    scorer = OcrScores(OcrScoresConfig(ocr=OcrConfig(num_threads=2)))
    scorer.engine.engine = broken_engine
    out = scorer({"image_bytes": np.array(images, dtype=object)})
    assert list(out[OCR_ERROR]) == ["ocr_error:RuntimeError"] * 2
    assert list(out[SCORE_OCR_ERROR]) == [1.0, 1.0]
    checks = text_ocr_checks(watermark=False)
    assert list(compute_stage(out, thresholds(), checks)) == [3, 3]
    assert list(first_drop_reason(out, thresholds(), checks)) == ["ocr_error:RuntimeError"] * 2
    summary, _, _ = funnel_summary(out, thresholds(), checks)
    assert summary["drop_reasons"] == {"ocr_error:RuntimeError": 2}
    assert next(check for check in summary["checks"] if check["name"] == "ocr")["num_dropped_here"] == 2

    evaluation = EvaluationOcr.__new__(EvaluationOcr)  # the actor's state is its engine alone
    evaluation.engine = scorer.engine
    batch = {
        "task": np.array([TEXT_EN], dtype=object),
        "expected": np.array(["OPEN"], dtype=object),
        "image": np.stack([np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB"))]),
    }
    with pytest.raises(OcrError, match="onnxruntime session lost"):
        evaluation(batch)


def test_stage_and_reasons_from_ocr_checks(scored):
    checks = text_ocr_checks()
    stage = compute_stage(scored, thresholds(), checks)
    reasons = first_drop_reason(scored, thresholds(), checks)
    by_name = {name: (int(stage[index]), reasons[index]) for index, name in enumerate(ROWS)}
    assert by_name["chinese"] == (7, "")
    assert by_name["dense"] == (3, "text_area:intensive_text")
    assert by_name["footnote"] == (3, "text_height:small_characters")
    assert by_name["english"] == (4, "watermark")
    assert by_name["no_text"] == (7, "")  # no annotation: a watermark is unknown, not assumed


def test_watermark_list_parsing_and_matching():
    assert parse_watermarks('["Getty Images", " "]') == ["Getty Images"]
    assert parse_watermarks("[]") == []
    assert parse_watermarks("not json") is None
    assert parse_watermarks('{"a": 1}') is None
    assert watermark_in_text(["Shutter-stock"], "a photo\nSHUTTERST0CK")  # one misread character
    assert not watermark_in_text(["Getty Images"], "OPEN DAILY")
    assert not watermark_in_text(["x"], "x")  # one character is no evidence


def test_missing_image_column_is_an_error():
    with pytest.raises(ValueError, match="image_bytes"):
        OcrScores.__call__(SimpleNamespace(), {"caption": np.array(["a"], dtype=object)})


def test_ocr_switched_off_reads_nothing_and_keeps_the_annotations_watermarks():
    """``ocr.enabled: false`` (a corpus without text): the OCR columns are written without reading an image (the
    image bytes are not even there), the text measures NaN so no text check can drop a sample, the stage-4 checks
    are left out, and a watermark the annotation lists still counts (unverified), unknown where annotation failed."""
    batch = {
        SAMPLE_ID: np.array(["a", "b", "c"], dtype=object),
        ANN_WATERMARKS: np.array(['["Getty"]', "[]", '["x"]'], dtype=object),
        ANN_ERROR: np.array(["", "", "timeout"], dtype=object),
    }
    out = disabled_ocr_columns(batch)
    assert set(OCR_COLUMNS) <= set(out) and list(out[SAMPLE_ID]) == ["a", "b", "c"]
    assert list(out[OCR_TEXT]) == ["", "", ""] and list(out[OCR_ERROR]) == ["", "", ""]
    for name in (SCORE_TEXT_LINES, SCORE_TEXT_CHARS, SCORE_TEXT_AREA, SCORE_TEXT_MIN_HEIGHT, SCORE_OCR_ERROR):
        assert np.isnan(out[name]).all(), name
    assert out[SCORE_WATERMARK][0] == 1.0 and out[SCORE_WATERMARK][1] == 0.0 and math.isnan(out[SCORE_WATERMARK][2])
    assert not out[WATERMARK_VERIFIED].any()
    assert [check.name for check in text_ocr_checks(ocr=False)] == ["watermark"]
    assert text_ocr_checks(watermark=False, ocr=False) == ()
    assert OcrScoresConfig().disabled_note() is None
    assert "stage-4 checks left out" in OcrScoresConfig(enabled=False).disabled_note()
    without_annotation = disabled_ocr_columns({SAMPLE_ID: batch[SAMPLE_ID]})
    assert np.isnan(without_annotation[SCORE_WATERMARK]).all()
