"""Decoding: every input of the broken-input corpus yields an image or a drop reason, never an exception."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from pipelines.decode import EXIF_ORIENTATION_TAG, DecodeConfig, DecodeResult, decode_image

REASON_PREFIXES = ("broken_file:", "too_large:")


def _gradient(height: int, width: int) -> np.ndarray:
    """RGB uint8 image with distinct colours per corner, so orientation mistakes show."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([255 * x // max(width - 1, 1), 255 * y // max(height - 1, 1), np.full_like(x, 60)], -1).astype(
        np.uint8
    )


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with only a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG with its SOF0 frame header rewritten to claim ``width`` x ``height``."""
    data = bytearray(_jpeg(_gradient(16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _assert_accounted(result: DecodeResult) -> None:
    assert isinstance(result, DecodeResult)
    if result.ok:
        assert result.image is not None and result.image.dtype == np.uint8
        assert result.image.ndim == 3 and result.image.shape[2] == 3 and min(result.image.shape[:2]) >= 1
    else:
        assert result.image is None
        assert result.drop_reason.startswith(REASON_PREFIXES), result.drop_reason


def test_empty_random_and_truncated_inputs_are_dropped_with_reasons():
    rng = np.random.default_rng(0)
    jpeg = _jpeg(_gradient(120, 160))
    png = cv2.imencode(".png", _gradient(120, 160))[1].tobytes()
    expected = {
        b"": "broken_file:empty",
        rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(): "broken_file:unidentified",
        jpeg[: len(jpeg) // 2]: "broken_file:truncated",
        png[: len(png) // 2]: "broken_file:truncated",
        jpeg[:20]: "broken_file:header",
    }
    for data, reason in expected.items():
        result = decode_image(data)
        assert result.drop_reason == reason, (len(data), result.drop_reason)
        assert result.file_size == len(data)


def test_header_claiming_30000_squared_is_refused_before_decoding():
    for data in (_png_claiming(30000, 30000), _jpeg_claiming(30000, 30000)):
        assert decode_image(data).drop_reason == "too_large:decompression_bomb"  # PIL's own guard, at open
    for data in (_png_claiming(10000, 9000), _jpeg_claiming(10000, 9000)):
        result = decode_image(data)  # 90 Mpx: over our 67 Mpx budget, under PIL's guard
        assert result.drop_reason == "too_large:decompression_bomb"
        assert (result.width, result.height) == (10000, 9000)  # read from the header, kept as metadata
    # The budget is configurable: a 200x200 image over a 10,000-pixel budget is refused too.
    small = _jpeg(_gradient(200, 200))
    assert decode_image(small, DecodeConfig(max_pixels=10_000)).drop_reason == "too_large:decompression_bomb"
    assert decode_image(small, DecodeConfig(max_pixels=40_000)).ok


def test_png_with_alpha_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, 16:, 3] = 255  # right half opaque, left half fully transparent
    rgba[:8, :16, 3] = 128  # half-transparent red over white
    result = decode_image(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert result.ok
    np.testing.assert_array_equal(result.image[20, 0], [255, 255, 255])
    np.testing.assert_array_equal(result.image[20, 20], [255, 0, 0])
    np.testing.assert_allclose(result.image[0, 0], [255, 127, 127], atol=1)


def test_16_bit_png_is_scaled_to_8_bits():
    grey16 = np.tile(np.array([0, 257 * 100, 65535], dtype=np.uint16), (8, 4))
    result = decode_image(cv2.imencode(".png", grey16)[1].tobytes())
    assert result.ok
    np.testing.assert_array_equal(result.image[0, :3, 0], [0, 100, 255])
    assert (result.image[..., 0] == result.image[..., 2]).all()
    rgb16 = np.zeros((8, 8, 3), dtype=np.uint16)
    rgb16[..., 2] = 65535  # red in OpenCV's BGR order
    result = decode_image(cv2.imencode(".png", rgb16)[1].tobytes())
    assert result.ok
    np.testing.assert_array_equal(result.image[0, 0], [255, 0, 0])


def test_palette_png_with_and_without_transparency():
    palette_image = Image.fromarray(_gradient(24, 24)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    result = decode_image(_pil_bytes(palette_image, "PNG"))
    assert result.ok and result.image.shape == (24, 24, 3)
    np.testing.assert_allclose(result.image.astype(int), np.asarray(palette_image.convert("RGB")), atol=0)
    transparent_index = palette_image.getpixel((0, 0))
    result = decode_image(_pil_bytes(palette_image, "PNG", transparency=transparent_index))
    assert result.ok
    np.testing.assert_array_equal(result.image[0, 0], [255, 255, 255])


def test_cmyk_and_grayscale_jpegs_decode_to_rgb():
    rgb = _gradient(64, 96)
    result = decode_image(_pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert result.ok and result.format == "JPEG"
    assert np.abs(result.image.astype(int) - rgb).mean() < 6
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    result = decode_image(cv2.imencode(".jpg", grey)[1].tobytes())
    assert result.ok and result.image.shape == (64, 96, 3)
    assert (result.image[..., 0] == result.image[..., 1]).all()
    assert np.abs(result.image[..., 0].astype(int) - grey).mean() < 3


def test_one_pixel_images():
    for data in (_jpeg(np.full((1, 1, 3), 200, np.uint8)), cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1]):
        result = decode_image(bytes(data))
        assert result.ok and result.image.shape == (1, 1, 3)
        assert (result.width, result.height) == (1, 1)


def test_animated_gif_gives_the_first_frame():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (20, 10), color) for color in colors]
    data = _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    result = decode_image(data)
    assert result.ok and result.format == "GIF"
    assert result.image.shape == (10, 20, 3)
    np.testing.assert_array_equal(result.image[5, 5], [255, 0, 0])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_recorded(orientation):
    stored = Image.fromarray(_gradient(40, 80))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    data = _pil_bytes(stored, "JPEG", quality=95, exif=exif.tobytes())
    result = decode_image(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert result.ok and result.orientation == orientation
    assert result.image.shape == expected.shape
    assert (result.width, result.height) == (expected.shape[1], expected.shape[0])
    assert np.abs(result.image.astype(int) - expected).mean() < 2


def test_large_jpeg_is_decoded_reduced_and_keeps_original_metadata():
    rgb = cv2.GaussianBlur(_gradient(1600, 2000), (0, 0), 2)
    data = _jpeg(rgb)
    result = decode_image(data)
    assert result.ok and result.reduction == 4
    assert result.native.shape[:2] == (400, 500)  # DCT-scaled decode
    assert result.image.shape[:2] == (384, 480)  # analysis copy: short side 384
    assert (result.width, result.height, result.file_size) == (2000, 1600, len(data))
    reference = cv2.resize(rgb, (480, 384), interpolation=cv2.INTER_AREA)
    assert np.abs(result.image.astype(int) - reference).mean() < 3
    small = decode_image(data, DecodeConfig(analysis_short_side=1600))
    assert small.reduction == 1 and small.image.shape[:2] == (1600, 2000)


def test_other_formats_decode():
    rgb = _gradient(30, 50)
    for fmt in ("BMP", "TIFF", "WEBP", "PNG"):
        result = decode_image(_pil_bytes(Image.fromarray(rgb), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
        assert result.ok and result.format == fmt
        np.testing.assert_array_equal(result.image, rgb)


def test_mpo_gives_the_main_image():
    main, second = Image.fromarray(_gradient(300, 400)), Image.new("RGB", (400, 300), (0, 0, 0))
    result = decode_image(_pil_bytes(main, "MPO", save_all=True, append_images=[second], quality=95))
    assert result.ok and result.format == "MPO"
    assert np.abs(result.image.astype(int) - _gradient(300, 400)).mean() < 2


_VALID_JPEG = _jpeg(cv2.GaussianBlur(_gradient(96, 128), (0, 0), 1))
_VALID_PNG = cv2.imencode(".png", _gradient(48, 64))[1].tobytes()


@st.composite
def _mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([_VALID_JPEG, _VALID_PNG])))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        else:
            del data[max(position, 1) :]
        if not data:
            break
    return bytes(data)


@settings(max_examples=300, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_byte_mutations_of_valid_images_never_raise(data):
    result = decode_image(data, DecodeConfig(max_pixels=4_000_000))
    _assert_accounted(result)
    assert result.file_size == len(data)


def test_decode_bug_is_not_a_drop(monkeypatch):
    """Only the exceptions bad bytes raise become drop reasons: a bug of ours inside the decoding (a TypeError in the
    JPEG path, an AttributeError in the PIL path) propagates instead of dropping a good image as a broken file."""
    import pipelines.decode as decode

    jpeg = _jpeg(_gradient(40, 60))
    png = _pil_bytes(Image.fromarray(_gradient(40, 60)), "PNG")
    assert decode_image(jpeg).ok and decode_image(png).ok

    def jpeg_bug(data, reduction):
        raise TypeError("a bug in our JPEG path")

    def pil_bug(pil_image):
        raise AttributeError("a bug in our PIL path")

    monkeypatch.setattr(decode, "_decode_jpeg_cv2", jpeg_bug)
    monkeypatch.setattr(decode, "_decode_pil", pil_bug)
    with pytest.raises(TypeError, match="a bug in our JPEG path"):
        decode_image(jpeg)
    with pytest.raises(AttributeError, match="a bug in our PIL path"):
        decode_image(png)
    # Bad bytes are still reasons: these fail before either path runs.
    assert decode_image(png[:20]).drop_reason == "broken_file:header"
    assert decode_image(b"not an image at all").drop_reason == "broken_file:unidentified"
