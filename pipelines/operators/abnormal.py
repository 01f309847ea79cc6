"""S5 abnormal elements: QR codes and 1-D barcodes, with OpenCV's detectors.

Detection (no decoding of the payload) runs on a grey copy with a short side of
``short_side`` pixels (320 by default). The detectors dominate the cost of all operators, and
it grows with the pixel count. Measured on this kind of machine on photo-like images: the
classic ``cv2.QRCodeDetector`` takes 5 to 29 ms, ``cv2.QRCodeDetectorAruco`` 1.3 ms at 256 px and
4.6 ms at 512 px with its defaults and 0.6 ms at 320 px with one threshold window (used here);
``cv2.barcode.BarcodeDetector`` 1.2 ms at 320 px. At 320 px both found 27-30 of 30 codes placed
at 0.2-0.45 (QR) and 0.3-0.6 (barcode width) of the short side, with no false positive on 30
code-free images. Watermarks come from the annotation's ``watermark_list`` (another operator).
"""

from __future__ import annotations

import cv2

from pipelines.operators.base import AnalysisImage, Check, Operator
from store import columns

DEFAULT_DETECTOR_SHORT_SIDE = 320


def barcode_detector_available() -> bool:
    """Whether this OpenCV build ships ``cv2.barcode`` (opencv-python >= 4.8 and 5.x do)."""
    return hasattr(cv2, "barcode") and hasattr(cv2.barcode, "BarcodeDetector")


class QRCode(Operator):
    """1.0 when a QR code is detected, else 0.0."""

    name = columns.SCORE_QR_CODE
    stage = 5
    checks = (
        Check(
            name="qr_code",
            stage=5,
            column=columns.SCORE_QR_CODE,
            bounds=lambda thresholds: (None, None if thresholds.s5.allow_qr_code else 0.5),
            low_reason="qr_code:absent",
            high_reason="qr_code:detected",
        ),
    )

    def __init__(self, short_side: int = DEFAULT_DETECTOR_SHORT_SIDE) -> None:
        if short_side < 64:
            raise ValueError(f"detector short_side must be at least 64 pixels, got {short_side}")
        self.short_side = short_side
        self._detector = cv2.QRCodeDetectorAruco()
        # One adaptive-threshold window instead of three (3, 13, 23): 2.7x faster at 320 px,
        # recall 27/30 against 29/30 on QR codes of 0.2-0.45 of the short side in photos.
        aruco = self._detector.getArucoParameters()
        aruco.adaptiveThreshWinSizeMin = aruco.adaptiveThreshWinSizeMax = 13
        self._detector.setArucoParameters(aruco)

    def score(self, image: AnalysisImage) -> float:
        found, _ = self._detector.detect(image.grey_at(self.short_side))
        return 1.0 if found else 0.0


class Barcode(Operator):
    """1.0 when a 1-D barcode (EAN, UPC, ...) is detected, else 0.0."""

    name = columns.SCORE_BARCODE
    stage = 5
    checks = (
        Check(
            name="barcode",
            stage=5,
            column=columns.SCORE_BARCODE,
            bounds=lambda thresholds: (None, None if thresholds.s5.allow_barcode else 0.5),
            low_reason="barcode:absent",
            high_reason="barcode:detected",
        ),
    )

    def __init__(self, short_side: int = DEFAULT_DETECTOR_SHORT_SIDE) -> None:
        if short_side < 64:
            raise ValueError(f"detector short_side must be at least 64 pixels, got {short_side}")
        if not barcode_detector_available():
            raise ValueError("this OpenCV build has no cv2.barcode; install opencv-python-headless >= 4.8")
        self.short_side = short_side
        self._detector = cv2.barcode.BarcodeDetector()

    def score(self, image: AnalysisImage) -> float:
        found, _ = self._detector.detect(image.grey_at(self.short_side))
        return 1.0 if found else 0.0
