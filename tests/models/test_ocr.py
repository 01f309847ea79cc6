"""RapidOCR offline: reads rendered English and Chinese; script counts, language and edit distance."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from models.ocr import OcrEngine, edit_distance, script_counts, text_accuracy, text_language

CJK_FONT = pathlib.Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine()


@pytest.mark.skipif(not CJK_FONT.exists(), reason="fonts-noto-cjk is not installed")
def test_reads_english_and_chinese(engine):
    canvas = Image.new("RGB", (640, 200), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(str(CJK_FONT), 40)
    draw.text((20, 20), "欢迎光临", fill="black", font=font)
    draw.text((20, 110), "Hello World", fill="black", font=font)
    lines = engine.read(np.asarray(canvas))
    texts = [line.text.replace(" ", "") for line in lines]
    assert texts == ["欢迎光临", "HelloWorld"]
    assert all(line.score > 0.8 for line in lines)
    assert 30 < lines[1].height < 70 and lines[1].area > 30 * 200
    assert engine.read(np.full((64, 64, 3), 255, np.uint8)) == []


def test_scripts_language_and_accuracy():
    assert script_counts("Qwen 图像 2025!") == {"han": 2, "latin": 4, "other": 0, "digit": 4}
    assert text_language("你好 world") == "zh" and text_language("hello world 世") == "en"
    assert text_language("Qwen-Image 模型") == "zh" and text_language("naïve café") == "en"
    assert text_language("Привет") == "other" and text_language("123 !!") == "none"
    assert edit_distance("kitten", "sitting") == 3
    assert text_accuracy("hello", "hello") == 1.0 and text_accuracy("hello", "hxllo") == pytest.approx(0.8)
    assert text_accuracy("ab", "completely different") == 0.0


def test_degenerate_images_are_read_or_refused(engine):
    """A strip 12x wider than high is padded before detection and still read; an image too small for a glyph has no
    text (not an engine call); an image of the wrong type is our bug, refused with the layout expected."""
    strip = Image.new("RGB", (720, 60), "white")
    ImageDraw.Draw(strip).text((10, 8), "HELLO WORLD", fill="black", font=ImageFont.load_default(size=40))
    lines = engine.read(np.asarray(strip))
    assert [line.text.replace(" ", "") for line in lines] == ["HELLOWORLD"]
    assert all(line.box[:, 1].max() <= 60 + 2 for line in lines)  # boxes stay in the strip's own coordinates
    assert engine.read(np.zeros((4, 1000, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="RGB uint8"):
        engine.read(np.zeros((64, 64, 3), np.float32))
