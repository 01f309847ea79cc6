"""Every CPU operator once over a batch: decode each image, score it with all operators.

Columnar in and out (``dict[str, np.ndarray]``, the batch format of Ray Data's ``map_batches``):
the input needs ``image_bytes``; the output is the input plus ``orig_width``, ``orig_height``,
``decode_error`` and one ``score_*`` column per operator. Edit triplets (a non-empty ``source_image_bytes``) get
every operator's score of their input image too, in ``source_image.<score column>`` columns (NaN on pairs): the
label pass applies each check to both images (``pipelines.curation.relabel``). Multi-image edits get the scores of
reference n in ``source_image_<n>.<score column>`` (NaN where a row has fewer), with its decoder's reason in
``source_image_<n>.decode_error``, and the label pass applies each check to every reference. ``ScoreOperators`` is the callable
class to hand to ``map_batches`` (it builds the OpenCV detectors once per worker)::

    dataset.map_batches(ScoreOperators, fn_constructor_kwargs={"config": OperatorConfig()},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=8))
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines.decode import DecodeConfig, decode_image
from pipelines.operators.abnormal import DEFAULT_DETECTOR_SHORT_SIDE, Barcode, QRCode
from pipelines.operators.base import AnalysisImage, Check, Operator
from pipelines.operators.brightness import Exposure, Luma
from pipelines.operators.color import Saturation
from pipelines.operators.compression import Blockiness
from pipelines.operators.dedup import PerceptualHash
from pipelines.operators.entropy import Entropy
from pipelines.operators.integrity import BrokenFile, FileSize
from pipelines.operators.orientation import Orientation
from pipelines.operators.resolution import Resolution
from pipelines.operators.sharpness import Blur
from pipelines.operators.texture import Texture
from store import columns


class OperatorConfig(BaseModel):
    """How the CPU operators measure (thresholds live in ``FilterThresholds``)."""

    model_config = ConfigDict(extra="forbid")

    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    # |Laplacian| in grey levels above which a pixel counts as high-frequency (texture operator).
    texture_laplacian_threshold: int = Field(default=40, ge=1, le=254)
    # Short side of the grey copy the QR / barcode detectors see (their cost grows with it).
    detector_short_side: int = Field(default=DEFAULT_DETECTOR_SHORT_SIDE, ge=64)


def build_operators(config: OperatorConfig | None = None) -> list[Operator]:
    """All CPU operators of stages 1, 2 and 5, in stage order (the order of drop reasons)."""
    config = config or OperatorConfig()
    return [
        BrokenFile(),
        FileSize(),
        Resolution(),
        PerceptualHash(),
        Orientation(),
        Blur(),
        Luma(),
        Saturation(),
        Entropy(),
        Texture(config.texture_laplacian_threshold),
        Exposure(),
        Blockiness(),
        QRCode(config.detector_short_side),
        Barcode(config.detector_short_side),
    ]


def operator_checks(operators: Sequence[Operator]) -> list[Check]:
    """The checks of ``operators`` sorted by stage (stable: registry order within a stage).

    Includes the duplicate check, whose column comes from the global pass
    (``dedup.add_duplicate_column``); other stages' checks are appended by their callers.
    """
    checks = [check for operator in operators for check in operator.checks]
    return sorted(checks, key=lambda check: check.stage)


def score_images(
    images: Sequence[bytes], operators: Sequence[Operator], decode_config: DecodeConfig
) -> dict[str, np.ndarray]:
    """Decode each image once and score it with every operator; one column per operator."""
    num_images = len(images)
    out: dict[str, np.ndarray] = {
        operator.name: np.full(num_images, operator.missing_value, dtype=operator.dtype) for operator in operators
    }
    out[columns.ORIG_WIDTH] = np.zeros(num_images, dtype=np.int64)
    out[columns.ORIG_HEIGHT] = np.zeros(num_images, dtype=np.int64)
    out[columns.DECODE_ERROR] = np.full(num_images, "", dtype=object)
    for row, data in enumerate(images):
        decoded = decode_image(bytes(data) if data is not None else b"", decode_config)
        image = AnalysisImage(decoded)
        out[columns.ORIG_WIDTH][row] = decoded.width
        out[columns.ORIG_HEIGHT][row] = decoded.height
        out[columns.DECODE_ERROR][row] = decoded.drop_reason or ""
        for operator in operators:
            if decoded.ok or not operator.needs_pixels:
                out[operator.name][row] = operator.score(image)
    return out


class ScoreOperators:
    """``map_batches`` stage: the input batch plus every operator's score column."""

    # The stage's contract (pipelines.contracts); the score columns are those of build_operators, in its order.
    READS: tuple[str, ...] = (columns.IMAGE_BYTES,)
    WRITES: tuple[str, ...] = (columns.ORIG_WIDTH, columns.ORIG_HEIGHT, columns.DECODE_ERROR, *columns.OPERATOR_SCORES)

    def __init__(self, config: OperatorConfig | None = None) -> None:
        self.config = config or OperatorConfig()
        # One worker per CPU: OpenCV's own thread pool would oversubscribe the cores.
        cv2.setNumThreads(1)
        self.operators = build_operators(self.config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if columns.IMAGE_BYTES not in batch:
            raise ValueError(f"batch has no {columns.IMAGE_BYTES!r} column; columns are {sorted(batch)}")
        scores = score_images(batch[columns.IMAGE_BYTES], self.operators, self.config.decode)
        if columns.SOURCE_IMAGE_BYTES in batch:
            scores.update(self._score_source_images(batch[columns.SOURCE_IMAGE_BYTES]))
        for index in range(2, columns.MAX_SOURCE_IMAGES + 1):
            if columns.source_image_bytes_column(index) in batch:
                scores.update(self._score_source_images(batch[columns.source_image_bytes_column(index)], index))
        return {**batch, **scores}

    def _score_source_images(self, sources: np.ndarray, index: int = 1) -> dict[str, np.ndarray]:
        """``source_image.<column>`` (reference ``index``: ``source_image_<n>.<column>``, with its decode error)
        for rows with that input image; NaN (or a missing value) elsewhere."""
        rows = [row for row, data in enumerate(sources) if data is not None and len(data)]
        out = {}
        scored = score_images([sources[row] for row in rows], self.operators, self.config.decode) if rows else {}
        for operator in self.operators:
            column = np.full(len(sources), np.nan if np.dtype(operator.dtype).kind == "f" else operator.missing_value)
            column = column.astype(operator.dtype)
            if rows:
                column[rows] = scored[operator.name]
            out[columns.source_image_column(operator.name, index)] = column
        if index > 1:
            errors = np.full(len(sources), "", dtype=object)
            if rows:
                errors[rows] = scored[columns.DECODE_ERROR]
            out[columns.source_image_column(columns.DECODE_ERROR, index)] = errors
        return out
