"""Reading a synthetic image back with OCR and scoring it against the text that was rendered.

Both sides are normalised the same way before the character accuracy (``1 - edit distance / length``): Unicode
NFKC (full-width punctuation and digits become their ASCII forms) and no whitespace, since line breaks and spaces
are layout, not text. The OCR lines are put in reading order (rows top to bottom, left to right within a row).
"""

from __future__ import annotations

import unicodedata

import numpy as np

from models.ocr import OcrEngine, text_accuracy
from pipelines.synth.layout import reading_order


def normalise(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def read_text(engine: OcrEngine, image: np.ndarray) -> str:
    """The OCR text of an RGB image in reading order, rows joined by newlines."""
    lines = [
        (
            (
                float(line.box[:, 0].min()),
                float(line.box[:, 1].min()),
                float(line.box[:, 0].max()),
                float(line.box[:, 1].max()),
            ),
            line.text,
        )
        for line in engine.read(image)
    ]
    return "\n".join(reading_order(lines))


def ocr_accuracy(engine: OcrEngine, image: np.ndarray, rendered_text: str) -> tuple[float, str]:
    """``(character accuracy, OCR text)`` of an image against the text rendered into it."""
    read = read_text(engine, image)
    return text_accuracy(normalise(rendered_text), normalise(read)), read
