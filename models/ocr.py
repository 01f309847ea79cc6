"""Optical character recognition with RapidOCR (PP-OCR models shipped in the ``rapidocr`` wheel, on onnxruntime).

Shared by the producers (text detection, language split, text density), the text-rendering synthesiser (verifying
what it rendered), the evaluation (character and word accuracy) and the RL rewards (OCR reward). Nothing is
downloaded: the detection, direction and recognition models are files inside the installed package.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata

import numpy as np

from models.config import StrictModel


class OcrConfig(StrictModel):
    min_text_score: float = 0.5  # recognition confidence below which a line is dropped
    num_threads: int = 1  # onnxruntime intra-op threads per engine (one engine per actor)
    use_cuda: bool = False
    max_side: int = 2000  # images are scaled down to this long side before detection


@dataclasses.dataclass(frozen=True)
class TextLine:
    text: str
    score: float
    box: np.ndarray  # [4, 2] float32 corners (x, y) in the input image's pixels

    @property
    def height(self) -> float:
        """Line height: the mean length of the box's two short sides."""
        sides = np.linalg.norm(self.box - np.roll(self.box, -1, axis=0), axis=1)
        return float(min((sides[0] + sides[2]) / 2, (sides[1] + sides[3]) / 2))

    @property
    def area(self) -> float:
        x, y = self.box[:, 0], self.box[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


class OcrEngine:
    """One RapidOCR engine. ``read`` never raises on an image: a failure is an empty result."""

    def __init__(self, config: OcrConfig | None = None):
        from rapidocr import RapidOCR

        self.config = config or OcrConfig()
        params = {
            "Global.log_level": "error",
            "Global.text_score": self.config.min_text_score,
            "Global.max_side_len": self.config.max_side,
            "EngineConfig.onnxruntime.intra_op_num_threads": self.config.num_threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.use_cuda": self.config.use_cuda,
        }
        self.engine = RapidOCR(params=params)
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Text lines of an RGB uint8 ``[H, W, 3]`` image, top to bottom as the engine orders them."""
        try:
            result = self.engine(np.ascontiguousarray(image[:, :, ::-1]))  # RapidOCR expects BGR like OpenCV
        except Exception:  # noqa: BLE001 - the engine raises many types on degenerate inputs
            return []
        if result is None or result.txts is None:
            return []
        return [
            TextLine(text=text, score=float(score), box=np.asarray(box, dtype=np.float32))
            for text, score, box in zip(result.txts, result.scores, result.boxes, strict=True)
            if text and text.strip()
        ]


def is_han(char: str) -> bool:
    """A CJK unified ideograph (the Chinese characters the tiers count)."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2EBEF or 0xF900 <= code <= 0xFAFF
    )


def script_counts(text: str) -> dict[str, int]:
    """Counts of Han characters, Latin letters, other letters and digits in ``text``."""
    counts = {"han": 0, "latin": 0, "other": 0, "digit": 0}
    for char in text:
        if is_han(char):
            counts["han"] += 1
        elif char.isdigit():
            counts["digit"] += 1
        elif char.isalpha():
            name = unicodedata.name(char, "")
            counts["latin" if name.startswith("LATIN") else "other"] += 1
    return counts


def text_language(text: str) -> str:
    """``zh`` / ``en`` / ``other`` by the majority script, ``none`` without letters.

    A Han character carries about as much as an alphabetic word, so Han characters are weighed against words
    (runs of letters) of the other scripts: "你好 world" is Chinese, "hello world 世" English.
    """
    han = sum(1 for char in text if is_han(char))
    latin_words = other_words = 0
    for run in re.findall(r"[^\W\d_]+", "".join(" " if is_han(char) else char for char in text)):
        if all(unicodedata.name(char, "").startswith("LATIN") for char in run):
            latin_words += 1
        else:
            other_words += 1
    if han + latin_words + other_words == 0:
        return "none"
    if han >= max(latin_words, other_words):
        return "zh"
    return "en" if latin_words >= other_words else "other"


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance over characters."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for i, char_a in enumerate(first, 1):
        current = [i]
        for j, char_b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def text_accuracy(expected: str, read: str) -> float:
    """``1 - edit distance / len(expected)``, clipped to [0, 1] (the OCR reward of Flow-GRPO)."""
    if not expected:
        return 1.0 if not read else 0.0
    return max(0.0, 1.0 - edit_distance(expected, read) / len(expected))
