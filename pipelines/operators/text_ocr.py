"""Stage 4 (text rendering) and the watermark part of stage 5, from one OCR pass per image.

``OcrScores`` is a Ray Data actor (RapidOCR loaded once in ``__init__``; map it with ``pipelines.pools.map_stage``
and ``OcrScoresConfig.pool``). It decodes ``image_bytes`` at ``image_short_side`` (640 px by default: the 640p
stages' scale, where a line of text must be legible), reads every text line once, and adds:

- ``ocr_text``: the lines read, joined with "\\n" (capped at ``MAX_OCR_TEXT_CHARS``);
- ``text_language``: ``en`` / ``zh`` / ``other`` / ``none``, the language split of S4 (docs/qwen_image.md §1)
  (``models.ocr.text_language``; "" when the image could not be read);
- ``score_text_lines``, ``score_text_chars``: lines and non-space characters read;
- ``score_text_area``: fraction of the image covered by the union of the text boxes ("intensive text": dense pages of
  small print drop; a poster headline covers 0.1 to 0.2, a full page of body text 0.4 to 0.5);
- ``score_text_min_height``: height of the smallest line over the image's short side ("small characters"); NaN
  without text, and then the check passes (``missing_passes``): there is nothing too small to read;
- ``score_watermark``: 1.0 when the annotation's ``ann_watermark_list`` names a watermark, 0.0 when it is empty, NaN
  when there is no annotation for the row (column absent, or ``annotation_error`` set); a listed watermark is
  looked for in the OCR text and ``watermark_verified`` records whether it was found (logos never are);
- ``ocr_error``: "" or why the image could not be read: ``no_image:<decode reason>`` (the sample already fails S1
  as a broken file) or ``ocr_error:<exception>`` when the OCR engine itself failed (``models.ocr.OcrError``);
- ``score_ocr_error``: 1.0 when the engine failed, 0.0 when it read the image, NaN without an image. Its S4 check
  drops the sample with the ``ocr_error`` reason: a sample whose text could not be measured never passes the text
  checks as if it had none. Any other exception is a bug and fails the batch.

Thresholds are ours (the report publishes none): ``S4Thresholds`` below, and ``S5Thresholds.allow_watermark``
(``bool = False``, to be added next to ``allow_qr_code``). A row whose annotation failed fails S5 with
``watermark:missing`` (its watermarks are unknown); with annotation switched off, build the checks with
``text_ocr_checks(watermark=False)``.

A corpus known to hold no text (the shape scenes of the demo) can switch the pass off (``OcrScoresConfig.enabled``):
``disabled_ocr_columns`` then writes the same columns without reading the images (no text, no language, NaN
measures; the annotation's watermark list still sets ``score_watermark``, unverified), and the stage-4 checks are
left out (``text_ocr_checks(ocr=False)``), as the CLIP checks are without a CLIP model.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pydantic

from models.config import StrictModel
from models.ocr import OcrConfig, OcrEngine, OcrError, TextLine, text_accuracy, text_language
from pipelines.decode import DecodeConfig, decode_image
from pipelines.operators.base import Check
from pipelines.pools import PoolConfig
from store.columns import (
    ANN_ERROR,
    ANN_WATERMARKS,
    IMAGE_BYTES,
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

LANGUAGES = ("en", "zh", "other", "none")
# A dense A4 page is about 3,000 characters; the cap only bounds pathological inputs in the Parquet output.
MAX_OCR_TEXT_CHARS = 20_000
# A watermark counts as found in the OCR text at this character accuracy (1 - edit distance / length) or better.
WATERMARK_MATCH_ACCURACY = 0.75


class S4Thresholds(pydantic.BaseModel):
    """Text rendering. Both scores are relative to the image, so they hold at any decode size."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # Union of text boxes over the image area. A headline poster covers 0.1-0.2, a page of 11 px body text at 640 px
    # 0.45: above 0.35 the image is a wall of text that teaches the model little about rendering.
    max_text_area: float = pydantic.Field(default=0.35, ge=0, le=1)
    # Smallest line height (box height, about 1.4x the glyph size) over the short side. At 640 px, 0.025 is a 16 px
    # line: one 16x16 latent patch (VAE /8, 2x2 packing), below which a generator cannot form a glyph.
    min_text_height_ratio: float = pydantic.Field(default=0.025, ge=0, le=1)


class OcrScoresConfig(StrictModel):
    ocr: OcrConfig = OcrConfig()
    image_short_side: int = pydantic.Field(default=640, ge=64)  # decode size the OCR reads at
    pool: PoolConfig = PoolConfig(batch_size=8)
    # False: no OCR pass, for a corpus known to hold no text (see the module docstring). RapidOCR is the producers'
    # most expensive CPU stage: 126 ms of a core per 256 px shape scene, 92% of the three image-reading stages
    # (benchmarks/scene_scoring.py).
    enabled: bool = True

    def disabled_note(self) -> str | None:
        """Why the text measures are missing from this run's funnel, or None when OCR runs."""
        if self.enabled:
            return None
        return (
            "OCR switched off (ocr.enabled: false): text lines, text area and small characters are not measured, "
            "their stage-4 checks left out, and the text_rendering category comes from the annotation alone"
        )


def text_area_fraction(lines: list[TextLine], height: int, width: int) -> float:
    """Fraction of an ``height`` x ``width`` image covered by the union of the line boxes."""
    if not lines or height <= 0 or width <= 0:
        return 0.0
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(line.box).astype(np.int32) for line in lines], 1)
    return float(mask.mean())


def parse_watermarks(value: object) -> list[str] | None:
    """The annotation's watermark list (a JSON list of strings); None when it is not one."""
    try:
        items = json.loads(value) if isinstance(value, str | bytes) else value
    except (ValueError, TypeError):
        return None
    if not isinstance(items, list | tuple | np.ndarray):
        return None
    return [str(item).strip() for item in items if str(item).strip()]


def _normalise(text: str) -> str:
    return "".join(char for char in text.casefold() if char.isalnum())


def watermark_in_text(watermarks: list[str], ocr_text: str) -> bool:
    """True when some listed watermark is read in ``ocr_text`` (case, spaces and punctuation ignored)."""
    text = _normalise(ocr_text)
    lines = [_normalise(line) for line in ocr_text.split("\n")]
    for watermark in map(_normalise, watermarks):
        if len(watermark) < 2:
            continue
        if watermark in text or any(
            text_accuracy(watermark, line) >= WATERMARK_MATCH_ACCURACY for line in lines if line
        ):
            return True
    return False


class OcrScores:
    """Ray Data actor: image bytes (+ annotation) -> OCR text, language, text density and watermark columns."""

    # The stage's contract (pipelines.contracts); the annotation's watermark list is read when it is there.
    READS: tuple[str, ...] = (IMAGE_BYTES,)
    WRITES: tuple[str, ...] = OCR_COLUMNS

    def __init__(self, config: OcrScoresConfig | None = None) -> None:
        self.config = config or OcrScoresConfig()
        self.engine = OcrEngine(self.config.ocr)
        self.decode_config = DecodeConfig(analysis_short_side=self.config.image_short_side)

    def read(self, data: bytes) -> tuple[list[TextLine], tuple[int, int], str]:
        """Lines of one image, the size it was read at, and "" or the reason it could not be read."""
        decoded = decode_image(data, self.decode_config)
        if not decoded.ok:
            return [], (0, 0), f"no_image:{decoded.drop_reason}"
        height, width = decoded.image.shape[:2]
        return self.engine.read(decoded.image), (height, width), ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if IMAGE_BYTES not in batch:
            raise ValueError(f"batch has no {IMAGE_BYTES!r} column; columns are {sorted(batch)}")
        count = len(batch[IMAGE_BYTES])
        texts, languages, errors = ([""] * count for _ in range(3))
        num_lines, num_chars, area, min_height, engine_failed = (np.full(count, np.nan) for _ in range(5))
        for row, data in enumerate(batch[IMAGE_BYTES]):
            try:
                lines, (height, width), errors[row] = self.read(bytes(data) if data is not None else b"")
            except OcrError as error:  # the engine's fault on this image: recorded, and the sample drops at S4
                cause = error.__cause__ or error
                errors[row], engine_failed[row] = f"{OCR_ERROR}:{type(cause).__name__}", 1.0
                continue
            if errors[row]:
                continue
            engine_failed[row] = 0.0
            texts[row] = "\n".join(line.text for line in lines)[:MAX_OCR_TEXT_CHARS]
            languages[row] = text_language(texts[row])
            num_lines[row] = len(lines)
            num_chars[row] = sum(len("".join(line.text.split())) for line in lines)
            area[row] = text_area_fraction(lines, height, width)
            if lines:
                min_height[row] = min(line.height for line in lines) / min(height, width)
        watermark, verified = self._watermarks(batch, texts)
        return {
            **batch,
            OCR_TEXT: np.array(texts, dtype=object),
            TEXT_LANGUAGE: np.array(languages, dtype=object),
            SCORE_TEXT_LINES: num_lines,
            SCORE_TEXT_CHARS: num_chars,
            SCORE_TEXT_AREA: area,
            SCORE_TEXT_MIN_HEIGHT: min_height,
            SCORE_WATERMARK: watermark,
            WATERMARK_VERIFIED: verified,
            OCR_ERROR: np.array(errors, dtype=object),
            SCORE_OCR_ERROR: engine_failed,
        }

    @staticmethod
    def _watermarks(batch: dict[str, np.ndarray], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        count = len(texts)
        watermark, verified = np.full(count, np.nan), np.zeros(count, dtype=bool)
        if ANN_WATERMARKS not in batch:
            return watermark, verified
        failed = batch.get(ANN_ERROR, np.full(count, "", dtype=object))
        for row in range(count):
            listed = None if failed[row] else parse_watermarks(batch[ANN_WATERMARKS][row])
            if listed is None:
                continue
            watermark[row] = 1.0 if listed else 0.0
            verified[row] = bool(listed) and watermark_in_text(listed, texts[row])
        return watermark, verified


def disabled_ocr_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The OCR columns of a run without OCR (``OcrScoresConfig.enabled`` False): no text read, the measures NaN,
    ``score_watermark`` from the annotation's list alone (never verified)."""
    count = len(batch[SAMPLE_ID])
    watermark, verified = OcrScores._watermarks(batch, [""] * count)
    unmeasured = (SCORE_TEXT_LINES, SCORE_TEXT_CHARS, SCORE_TEXT_AREA, SCORE_TEXT_MIN_HEIGHT, SCORE_OCR_ERROR)
    return {
        **batch,
        **{name: np.full(count, "", dtype=object) for name in (OCR_TEXT, TEXT_LANGUAGE, OCR_ERROR)},
        **{name: np.full(count, np.nan) for name in unmeasured},
        SCORE_WATERMARK: watermark,
        WATERMARK_VERIFIED: verified,
    }


# The contract of disabled_ocr_columns (pipelines.contracts): it writes OCR_COLUMNS (and reads the annotation's
# watermark list when it is there).
DISABLED_OCR_READS: tuple[str, ...] = (SAMPLE_ID,)


def text_ocr_checks(watermark: bool = True, ocr: bool = True) -> tuple[Check, ...]:
    """Stage-4 checks (the OCR engine read the image, intensive text, small characters) unless OCR is off, and,
    unless annotation is off, the S5 watermark check."""
    checks: list[Check] = [
        Check(
            name="ocr",
            stage=4,
            column=SCORE_OCR_ERROR,
            bounds=lambda t: (None, 0.0),
            low_reason=OCR_ERROR,
            high_reason=OCR_ERROR,
            detail_column=OCR_ERROR,  # "ocr_error:<exception>"
            missing_passes=True,  # no image: the sample already fails S1 as a broken file
        ),
        Check(
            name="text_area",
            stage=4,
            column=SCORE_TEXT_AREA,
            bounds=lambda t: (None, t.s4.max_text_area),
            low_reason="text_area:low",
            high_reason="text_area:intensive_text",
        ),
        Check(
            name="text_height",
            stage=4,
            column=SCORE_TEXT_MIN_HEIGHT,
            bounds=lambda t: (t.s4.min_text_height_ratio, None),
            low_reason="text_height:small_characters",
            high_reason="text_height:high",
            missing_passes=True,  # no text line: nothing too small
        ),
    ]
    if not ocr:
        checks = []
    if watermark:
        checks.append(
            Check(
                name="watermark",
                stage=5,
                column=SCORE_WATERMARK,
                bounds=lambda t: (None, 1.0 if t.s5.allow_watermark else 0.0),
                low_reason="watermark:low",
                high_reason="watermark",
                missing_passes=True,  # no usable annotation: unknown is not a watermark (the QR / barcode checks stay)
            )
        )
    return tuple(checks)
