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
import pydantic

from models.config import StrictModel

# Below this short side an image holds no legible glyph: it has no text, and is not worth an engine call.
MIN_TEXT_SIDE = 8
# Long side over short side above which an image is padded before detection (see ``_pad_to_aspect``).
MAX_SIDE_RATIO = 4.0


class OcrConfig(StrictModel):
    min_text_score: float = 0.5  # recognition confidence below which a line is dropped
    num_threads: int = 1  # onnxruntime intra-op threads per engine (one engine per actor)
    use_cuda: bool = False
    max_side: int = 2000  # images are scaled down to this long side before detection
    # The detector scales every image's short side up to at least this (RapidOCR's default, for small print in
    # photographs). Sources whose text is large for their size (the shape scenes' words) read as well at their own
    # size, several times faster: 0.8 s -> 0.1 s per 256 px scene here.
    detect_short_side: int = pydantic.Field(default=736, ge=32)


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


class OcrError(RuntimeError):
    """The OCR engine failed on an image it should have read: an infrastructure fault, never "no text"."""


class OcrEngine:
    """One RapidOCR engine.

    ``read`` returns no lines for an image without legible text, including one too small to hold a glyph (short side
    under ``MIN_TEXT_SIDE``). An engine that fails raises ``OcrError``: the producers record it as the ``ocr_error``
    drop reason, evaluation and rewards stop with it. An image of the wrong type or shape is our bug: ``ValueError``.
    """

    def __init__(self, config: OcrConfig | None = None):
        from rapidocr import RapidOCR

        self.config = config or OcrConfig()
        params = {
            "Global.log_level": "error",
            "Global.text_score": self.config.min_text_score,
            "Global.max_side_len": self.config.max_side,
            "Det.limit_side_len": self.config.detect_short_side,
            "EngineConfig.onnxruntime.intra_op_num_threads": self.config.num_threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.use_cuda": self.config.use_cuda,
        }
        self.engine = RapidOCR(params=params)
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Text lines of an RGB uint8 ``[H, W, 3]`` image, top to bottom as the engine orders them."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            description = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"OCR reads RGB uint8 [H, W, 3] images, got {description}")
        height, width = image.shape[:2]
        if min(height, width) < MIN_TEXT_SIDE:
            return []
        padded = _pad_to_aspect(image, MAX_SIDE_RATIO)
        try:
            result = self.engine(np.ascontiguousarray(padded[:, :, ::-1]))  # RapidOCR expects BGR like OpenCV
        except Exception as error:  # noqa: BLE001 - re-raised: whatever the engine raises is its fault, not the image's
            raise OcrError(f"OCR engine failed on a {width}x{height} image: {type(error).__name__}: {error}") from error
        if result is None or result.txts is None:
            return []
        return [
            TextLine(text=text, score=float(score), box=np.asarray(box, dtype=np.float32))
            for text, score, box in zip(result.txts, result.scores, result.boxes, strict=True)
            if text and text.strip()
        ]


def _pad_to_aspect(image: np.ndarray, max_aspect: float) -> np.ndarray:
    """``image`` padded at the bottom or right, with its median border colour, to at most ``max_aspect``: 1.

    The detector scales the short side up to its working size, so a thin strip (2000x30) became a 50,000-pixel-long
    canvas and took 50 s, and a 1000x1 strip did not finish in a minute. Padding at the far edges keeps every box in
    the original image's coordinates.
    """
    height, width = image.shape[:2]
    if max(height, width) <= max_aspect * min(height, width):
        return image
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    colour = np.median(border, axis=0).astype(np.uint8)
    new_height = max(height, int(np.ceil(width / max_aspect)))
    new_width = max(width, int(np.ceil(height / max_aspect)))
    canvas = np.empty((new_height, new_width, 3), dtype=np.uint8)
    canvas[:] = colour
    canvas[:height, :width] = image
    return canvas


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
