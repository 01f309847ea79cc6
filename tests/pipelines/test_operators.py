"""CPU operators of stages 1, 2 and 5: each one on an image built to pass it and one built to fail it."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.decode import EXIF_ORIENTATION_TAG
from pipelines.operators.abnormal import barcode_detector_available
from pipelines.operators.base import Check
from pipelines.operators.registry import OperatorConfig, ScoreOperators, build_operators, operator_checks
from pipelines.operators.thresholds import FilterThresholds
from store import columns

OPERATORS = build_operators()
CHECKS = {check.name: check for check in operator_checks(OPERATORS)}
DEFAULTS = FilterThresholds()


def photo_like(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """RGB uint8 with a photograph's statistics: smooth fields, sharp shapes, text, a detailed patch, grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([110 + 50 * np.sin(x / width * 3 + c) * np.cos(y / height * 2 - c) for c in range(3)], -1)
    image = image.astype(np.uint8)
    for _ in range(12):
        color = tuple(int(v) for v in rng.integers(20, 236, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, center, int(rng.integers(10, height // 4)), color, -1, cv2.LINE_AA)
    detail = cv2.GaussianBlur(rng.normal(0, 1, (height // 3, width // 3)).astype(np.float32), (0, 0), 1.2)
    patch = image[: height // 3, : width // 3].astype(np.float32) + 60 * detail[..., None]
    image[: height // 3, : width // 3] = patch.clip(0, 255).astype(np.uint8)
    cv2.putText(image, "Hello 2025", (width // 8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (250, 250, 250), 3)
    grain = rng.normal(0, 3, image.shape)
    return (image + grain).clip(0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = ".png", quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    return cv2.imencode(fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def score(data: bytes) -> dict[str, float]:
    """Every operator's score of one encoded image."""
    batch = np.empty(1, dtype=object)
    batch[0] = data
    out = ScoreOperators()({columns.IMAGE_BYTES: batch})
    return {name: values[0] for name, values in out.items()}


def reason(check_name: str, scores: dict[str, float], thresholds: FilterThresholds = DEFAULTS) -> str | None:
    check = CHECKS[check_name]
    return check.reason(float(scores[check.column]), thresholds)


@pytest.fixture(scope="module")
def photo_scores() -> dict[str, float]:
    return score(encode(photo_like(720, 960), ".jpg"))


def test_a_photo_passes_every_check(photo_scores):
    failing = {name: reason(name, photo_scores) for name in CHECKS if name != "duplicate"}
    assert {name: why for name, why in failing.items() if why} == {}
    assert photo_scores[columns.DECODE_ERROR] == ""
    assert (photo_scores[columns.ORIG_WIDTH], photo_scores[columns.ORIG_HEIGHT]) == (960, 720)


def test_broken_file(photo_scores):
    assert photo_scores[columns.SCORE_BROKEN_FILE] == 0.0
    data = encode(photo_like(), ".jpg")
    broken = score(data[: len(data) // 3])
    assert broken[columns.SCORE_BROKEN_FILE] == 1.0
    assert broken[columns.DECODE_ERROR] == "broken_file:truncated"
    assert reason("broken_file", broken) == "broken_file"
    # Metadata operators still score a broken file; pixel operators leave NaN.
    assert broken[columns.SCORE_FILE_SIZE] == len(data) // 3
    assert np.isnan(broken[columns.SCORE_BLUR]) and broken[columns.SCORE_PHASH] == 0


def test_file_size(photo_scores):
    assert photo_scores[columns.SCORE_FILE_SIZE] > 20_000
    tiny = score(encode(np.full((300, 300, 3), 128, np.uint8)))  # a flat PNG compresses to a few hundred bytes
    assert tiny[columns.SCORE_FILE_SIZE] < 2048
    assert reason("file_size", tiny) == "file_size:too_small"


def test_resolution_at_256_and_640():
    small = score(encode(photo_like(200, 320)))
    medium = score(encode(photo_like(300, 400)))
    large = score(encode(photo_like(700, 800)))
    assert [s[columns.SCORE_RESOLUTION] for s in (small, medium, large)] == [200, 300, 700]
    assert reason("resolution", small) == "resolution:too_small"
    assert reason("resolution", medium) is None
    assert reason("resolution_640p", medium) == "resolution_640p:too_small"
    assert reason("resolution_640p", large) is None


def test_orientation():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.fromarray(photo_like(300, 400)).save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    rotated = score(buffer.getvalue())
    upright = score(encode(photo_like(300, 400), ".jpg"))
    assert rotated[columns.SCORE_ORIENTATION] == 6 and upright[columns.SCORE_ORIENTATION] == 1
    assert (rotated[columns.ORIG_WIDTH], rotated[columns.ORIG_HEIGHT]) == (300, 400)  # as displayed
    # Corrected while decoding, so it passes by default; a strict config drops it.
    assert reason("orientation", rotated) is None
    strict = FilterThresholds.model_validate({"s2": {"max_orientation": 1}})
    assert reason("orientation", rotated, strict) == "orientation:rotated_or_flipped"
    assert reason("orientation", upright, strict) is None


def test_blur_at_s2_and_s5(photo_scores):
    image = photo_like(480, 640)
    sharp = score(encode(image))
    soft = score(encode(cv2.GaussianBlur(image, (0, 0), 1.0)))
    blurry = score(encode(cv2.GaussianBlur(image, (0, 0), 3.0)))
    assert sharp[columns.SCORE_BLUR] > 5 * soft[columns.SCORE_BLUR] > 5 * blurry[columns.SCORE_BLUR]
    assert reason("blur", sharp) is None and reason("blur_640p", sharp) is None
    assert reason("blur", blurry) == "blur:too_blurry"
    assert reason("blur_640p", blurry) == "blur_640p:too_blurry"
    assert photo_scores[columns.SCORE_BLUR] > DEFAULTS.s5.min_blur


def test_luma(photo_scores):
    assert 0.3 < photo_scores[columns.SCORE_LUMA] < 0.7
    dark = score(encode(np.full((300, 300, 3), 8, np.uint8)))
    bright = score(encode(np.full((300, 300, 3), 250, np.uint8)))
    assert dark[columns.SCORE_LUMA] == pytest.approx(8 / 255, abs=1e-3)
    assert reason("luma", dark) == "luma:too_dark"
    assert reason("luma", bright) == "luma:too_bright"


def test_saturation(photo_scores):
    assert photo_scores[columns.SCORE_SATURATION] < 0.6
    stripes = np.zeros((300, 300, 3), np.uint8)
    for index, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]):
        stripes[:, index * 60 : (index + 1) * 60] = color
    saturated = score(encode(stripes))
    assert saturated[columns.SCORE_SATURATION] == pytest.approx(1.0, abs=1e-3)
    assert reason("saturation", saturated) == "saturation:too_high"


def test_entropy(photo_scores):
    assert photo_scores[columns.SCORE_ENTROPY] > 5.0
    two_tone = np.full((300, 300, 3), 40, np.uint8)
    two_tone[:, 150:] = 200
    flat = score(encode(two_tone))
    assert flat[columns.SCORE_ENTROPY] == pytest.approx(1.0, abs=1e-6)
    assert reason("entropy", flat) == "entropy:too_low"


def test_texture(photo_scores):
    assert photo_scores[columns.SCORE_TEXTURE] < 0.15
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    noisy = score(encode(noise))
    assert noisy[columns.SCORE_TEXTURE] > 0.8
    assert reason("texture", noisy) == "texture:noisy"
    assert noisy[columns.SCORE_BLUR] > 1000  # blur alone cannot tell noise from detail


def test_exposure(photo_scores):
    assert photo_scores[columns.SCORE_EXPOSURE] < 0.05
    clipped = np.zeros((300, 400, 3), np.uint8)
    clipped[:, 200:] = 255
    clipped[100:200, 50:350] = photo_like(100, 300)
    scores = score(encode(clipped))
    assert scores[columns.SCORE_EXPOSURE] == pytest.approx(0.75, abs=0.01)
    assert reason("luma", scores) is None  # mean luma looks fine; the clipping is what fails
    assert reason("exposure", scores) == "exposure:clipped"


def test_blockiness():
    image = photo_like(480, 640)
    clean = score(encode(image, ".jpg", quality=95))
    blocky = score(encode(image, ".jpg", quality=8))
    assert clean[columns.SCORE_BLOCKINESS] < 1.25
    assert blocky[columns.SCORE_BLOCKINESS] > 2.0
    assert reason("blockiness", clean) is None
    assert reason("blockiness", blocky) == "blockiness:compression_artifacts"
    # A large JPEG decoded at 1/2 keeps its 4-pixel block grid and still shows the artefacts.
    large = photo_like(900, 1200)
    assert score(encode(large, ".jpg", quality=95))[columns.SCORE_BLOCKINESS] < 1.25
    assert score(encode(large, ".jpg", quality=8))[columns.SCORE_BLOCKINESS] > DEFAULTS.s5.max_blockiness


def _paste(image: np.ndarray, grey_patch: np.ndarray, top: int, left: int) -> np.ndarray:
    out = image.copy()
    out[top : top + grey_patch.shape[0], left : left + grey_patch.shape[1]] = grey_patch[..., None]
    return out


def test_qr_code(photo_scores):
    assert photo_scores[columns.SCORE_QR_CODE] == 0.0
    code = cv2.QRCodeEncoder.create().encode("https://example.com/product?id=12345")
    code = cv2.resize(code, (200, 200), interpolation=cv2.INTER_NEAREST)
    with_code = score(encode(_paste(photo_like(480, 640), code, 40, 360), ".jpg"))
    assert with_code[columns.SCORE_QR_CODE] == 1.0
    assert reason("qr_code", with_code) == "qr_code:detected"
    allowed = FilterThresholds.model_validate({"s5": {"allow_qr_code": True}})
    assert reason("qr_code", with_code, allowed) is None


def _ean13(digits: str, module: int = 3, height: int = 90, quiet: int = 12) -> np.ndarray:
    """An EAN-13 barcode, black bars on white, [height, width] uint8."""
    left = [
        "0001101",
        "0011001",
        "0010011",
        "0111101",
        "0100011",
        "0110001",
        "0101111",
        "0111011",
        "0110111",
        "0001011",
    ]
    right = ["".join("1" if bit == "0" else "0" for bit in code) for code in left]
    even = [code[::-1] for code in right]
    parity = ["LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL"]
    numbers = [int(digit) for digit in digits]
    bits = "101"
    for index, number in enumerate(numbers[1:7]):
        bits += (left if parity[numbers[0]][index] == "L" else even)[number]
    bits += "01010" + "".join(right[number] for number in numbers[7:13]) + "101"
    row = np.array([0 if bit == "1" else 255 for bit in "0" * quiet + bits + "0" * quiet], np.uint8)
    return np.tile(np.repeat(row, module), (height, 1))


@pytest.mark.skipif(not barcode_detector_available(), reason="this OpenCV build has no cv2.barcode")
def test_barcode(photo_scores):
    assert photo_scores[columns.SCORE_BARCODE] == 0.0
    with_code = score(encode(_paste(photo_like(480, 640), _ean13("4006381333931"), 60, 40), ".jpg"))
    assert with_code[columns.SCORE_BARCODE] == 1.0
    assert reason("barcode", with_code) == "barcode:detected"
    allowed = FilterThresholds.model_validate({"s5": {"allow_barcode": True}})
    assert reason("barcode", with_code, allowed) is None


def test_score_batch_is_columnar_and_keeps_input_columns():
    images = [encode(photo_like(300, 400, seed), ".jpg") for seed in range(3)] + [b"", b"not an image"]
    batch = {columns.IMAGE_BYTES: np.array(images, dtype=object), columns.SAMPLE_ID: np.array(list("abcde"))}
    out = ScoreOperators(OperatorConfig(detector_short_side=256))(batch)
    assert list(out[columns.SAMPLE_ID]) == list("abcde")
    for operator in OPERATORS:
        assert out[operator.name].shape == (5,) and out[operator.name].dtype == operator.dtype
    assert out[columns.SCORE_PHASH].dtype == np.int64 and len(set(out[columns.SCORE_PHASH][:3])) == 3
    assert list(out[columns.DECODE_ERROR]) == ["", "", "", "broken_file:empty", "broken_file:unidentified"]
    assert list(out[columns.SCORE_BROKEN_FILE]) == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="image_bytes"):
        ScoreOperators()({columns.SAMPLE_ID: np.array(["a"])})


def test_every_operator_has_a_named_column_stage_and_check():
    names = [operator.name for operator in OPERATORS]
    assert len(names) == len(set(names)) and all(name.startswith("score_") for name in names)
    assert {operator.stage for operator in OPERATORS} == {1, 2, 5}
    assert all(operator.checks for operator in OPERATORS)
    assert len(CHECKS) == sum(len(operator.checks) for operator in OPERATORS)  # check names are unique


def test_thresholds_and_config_reject_unknown_keys():
    with pytest.raises(ValueError, match="min_blurr"):
        FilterThresholds.model_validate({"s2": {"min_blurr": 10}})
    with pytest.raises(ValueError, match="detector_size"):
        OperatorConfig.model_validate({"detector_size": 10})
    with pytest.raises(ValueError, match="stage"):
        Check("bad", 9, "score_x", lambda thresholds: (None, None), "low", "high")
