"""Robust image decoding for the producers: bytes in, an RGB analysis copy or a drop reason out.

`decode_image` never raises on bad input, and never hides a bug: it turns into drop reasons exactly the exceptions
that malformed bytes make the decoders raise (``BAD_INPUT_ERRORS``: what PIL documents and its own fuzzing accepts,
plus OpenCV's ``cv2.error``); anything else, a ``TypeError`` or ``AttributeError`` of ours, propagates.

It reads the header first (PIL opens lazily: size, mode and EXIF cost about 0.02 ms), refuses images whose header
claims more pixels than the budget before any pixel is decoded, and decodes JPEGs at reduced size (libjpeg DCT
scaling through ``cv2.IMREAD_REDUCED_COLOR_{2,4}``) when the image is much larger than the analysis copy the
operators work on. See docs/costs.md §1: a 2048x1536 JPEG costs 12.5 ms to
decode in full and 7.7 ms at 1/4.

Drop reasons are ``"<category>:<detail>"`` strings; the categories are ``broken_file`` and
``too_large``:

- ``broken_file:empty`` zero bytes; ``broken_file:unidentified`` not an image format PIL knows;
  ``broken_file:header`` a header that does not parse (or a known signature followed by garbage);
  ``broken_file:truncated`` the data ends before the image does; ``broken_file:decode`` any other decoder failure;
- ``too_large:decompression_bomb`` the header claims more than ``max_pixels`` pixels (or the decoder finds more).

Pixel conventions of the analysis copy: RGB uint8 ``[H, W, 3]``; transparency composited on
white; 16-bit samples scaled to 8 bits; palette, CMYK and grey images converted to RGB; the
first frame of an animation; EXIF orientation applied (and the tag found is recorded).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

# EXIF tag 0x0112; values 1..8 as defined by the EXIF 2.3 standard (1 = as stored).
EXIF_ORIENTATION_TAG = 0x0112
_JPEG_EOI = b"\xff\xd9"
# Leading bytes of the common formats: JPEG, PNG, GIF, WebP (RIFF), BMP, TIFF (both byte orders).
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
_JPEG_SOS = b"\xff\xda"
# DCT scaling by 8 would leave 1x1-pixel JPEG blocks, which makes the 8x8 block grid (and so the
# blockiness operator) unmeasurable; 4 keeps 2x2 blocks.
_MAX_JPEG_REDUCTION = 4
# The DCT-scaling bits alone (the *_GRAYSCALE_* constants carry no colour bit), combined with
# IMREAD_COLOR_RGB where OpenCV has it (>= 4.11): libjpeg then writes RGB directly, saving a cvtColor.
_CV2_REDUCTION_FLAGS = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4}
_CV2_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
# What malformed or truncated bytes make PIL and OpenCV raise: PIL's plugins raise OSError (UnidentifiedImageError
# and "image file is truncated" included), SyntaxError ("broken PNG file"), ValueError, EOFError, struct.error and
# NotImplementedError on unsupported variants; OpenCV raises cv2.error. Pillow's own fuzzing treats exactly these as
# expected. A MemoryError is not among them: the pixel budget is checked before any pixel is decoded.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    NotImplementedError,
    cv2.error,
)


class DecodeConfig(BaseModel):
    """How images are decoded.

    ``max_pixels`` defaults to 8192 x 8192 (67 Mpx): larger sources are rare in web corpora and
    would cost over 200 MB of RGB each. PIL's own guard (``Image.MAX_IMAGE_PIXELS`` x 2, 179 Mpx)
    applies on top and is reported with the same reason. ``analysis_short_side`` is the short side
    of the copy the operators score (larger images are decoded at reduced size, then downscaled);
    scores such as blur depend on this scale, so the thresholds in
    ``pipelines/operators/thresholds.py`` were set for this one value and hold only for it. 384 is
    1.5x the 256 px short side the first curriculum stages train at: detail finer than what the
    model sees there is still resolved, so a blurry or noisy image is judged at the scale it will be
    learned from. (The producer benchmark reports the cost this scale implies; it did not choose it.)
    """

    model_config = ConfigDict(extra="forbid")

    max_pixels: int = Field(default=8192 * 8192, gt=0)
    analysis_short_side: int = Field(default=384, ge=32)


@dataclass(frozen=True)
class DecodeResult:
    """The outcome of decoding one sample: an image, or a drop reason, plus header metadata.

    ``width`` / ``height`` are the original size as displayed (after EXIF orientation), 0 when
    the header could not be read. ``image`` is the analysis copy ``[H, W, 3]`` RGB uint8 with
    short side at most ``analysis_short_side``; treat it as read-only (it may be a view of
    decoder memory). ``native`` is the image as decoded before
    resizing, in stored orientation (EXIF not applied), for operators that need the pixel grid
    of the file (JPEG blockiness); its pixel grid is the file's divided by ``reduction``.
    """

    file_size: int
    width: int = 0
    height: int = 0
    orientation: int = 1
    format: str = ""
    reduction: int = 1
    image: np.ndarray | None = None
    native: np.ndarray | None = None
    drop_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.drop_reason is None


def decode_image(data: bytes, config: DecodeConfig | None = None) -> DecodeResult:
    """Decode ``data`` into an analysis copy; never raises on bad bytes (see the module docstring)."""
    config = config or DecodeConfig()
    file_size = len(data)
    if file_size == 0:
        return DecodeResult(file_size=0, drop_reason="broken_file:empty")
    try:
        with warnings.catch_warnings():
            # Our own pixel budget decides; PIL's DecompressionBombWarning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return DecodeResult(file_size=file_size, drop_reason="too_large:decompression_bomb")
    except UnidentifiedImageError:
        # PIL gives up the same way on a cut header and on bytes that are no image at all.
        reason = "broken_file:header" if data.startswith(_IMAGE_SIGNATURES) else "broken_file:unidentified"
        return DecodeResult(file_size=file_size, drop_reason=reason)
    except BAD_INPUT_ERRORS:
        return DecodeResult(file_size=file_size, drop_reason="broken_file:header")

    stored_width, stored_height = pil_image.size
    image_format = pil_image.format or ""
    if stored_width <= 0 or stored_height <= 0:
        return DecodeResult(file_size=file_size, format=image_format, drop_reason="broken_file:header")
    if stored_width * stored_height > config.max_pixels:
        return DecodeResult(
            file_size=file_size,
            width=stored_width,
            height=stored_height,
            format=image_format,
            drop_reason="too_large:decompression_bomb",
        )

    reduction = 1
    try:
        # MPO (phone cameras: a JPEG followed by more JPEGs) decodes as its first, main image.
        if image_format in ("JPEG", "MPO") and pil_image.mode in ("RGB", "L"):
            reduction = jpeg_reduction(min(stored_width, stored_height), config.analysis_short_side)
            native = _decode_jpeg_cv2(data, reduction)
        else:
            native = _decode_pil(pil_image)
        orientation = _read_orientation(pil_image)
    except _TruncatedError:
        reason = "broken_file:truncated"
        return DecodeResult(file_size, stored_width, stored_height, format=image_format, drop_reason=reason)
    except Image.DecompressionBombError:  # a decoder that finds more pixels than its header claimed
        return DecodeResult(
            file_size, stored_width, stored_height, format=image_format, drop_reason="too_large:decompression_bomb"
        )
    except BAD_INPUT_ERRORS as error:
        reason = "broken_file:truncated" if "truncated" in str(error).lower() else "broken_file:decode"
        return DecodeResult(file_size, stored_width, stored_height, format=image_format, drop_reason=reason)

    analysis = resize_short_side(native, config.analysis_short_side)
    analysis = apply_orientation(analysis, orientation)
    width, height = (stored_height, stored_width) if orientation >= 5 else (stored_width, stored_height)
    return DecodeResult(
        file_size=file_size,
        width=width,
        height=height,
        orientation=orientation,
        format=image_format,
        reduction=reduction,
        image=analysis,
        native=native,
    )


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1..8) into its displayed orientation."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


class _TruncatedError(Exception):
    """The data ends before the image does."""


def jpeg_reduction(short_side: int, analysis_short_side: int) -> int:
    """Largest DCT scaling (1, 2, 4) that still leaves at least ``analysis_short_side`` pixels."""
    reduction = 1
    while reduction < _MAX_JPEG_REDUCTION and short_side // (reduction * 2) >= analysis_short_side:
        reduction *= 2
    return reduction


def jpeg_decode_flags(reduction: int) -> int:
    """The ``cv2.imdecode`` flags of a JPEG decoded at 1/``reduction``, stored orientation, RGB where OpenCV can."""
    return _CV2_REDUCTION_FLAGS[reduction] | cv2.IMREAD_IGNORE_ORIENTATION | (_CV2_RGB_FLAG or cv2.IMREAD_COLOR)


def _decode_jpeg_cv2(data: bytes, reduction: int) -> np.ndarray:
    # OpenCV 4.x decodes a truncated JPEG with a grey tail (5.x refuses it): check the end marker.
    if _jpeg_is_truncated(data):
        raise _TruncatedError
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), jpeg_decode_flags(reduction))
    if rgb is not None and _CV2_RGB_FLAG is None:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
    if rgb is None:
        raise ValueError("cv2.imdecode could not decode the JPEG")
    return rgb


def _jpeg_is_truncated(data: bytes) -> bool:
    """True when the end-of-image marker is missing after the last scan."""
    if data.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
        return False
    # Trailing bytes after the image (camera trailers) are legal: entropy-coded data cannot contain
    # FF D9 (0xFF bytes are stuffed), so a complete file has an end marker after its last scan.
    return data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS)


def _decode_pil(pil_image: Image.Image) -> np.ndarray:
    """Full decode through PIL of the first frame; any mode to RGB uint8."""
    pil_image.load()
    mode = pil_image.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in pil_image.info else "RGB"
        pil_image = pil_image.convert(mode)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_grey_to_rgb(np.asarray(pil_image), mode)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(np.asarray(pil_image.convert("RGBA")))
    if mode != "RGB":
        pil_image = pil_image.convert("RGB")
    return np.ascontiguousarray(np.asarray(pil_image))


def _high_depth_grey_to_rgb(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        grey = np.nan_to_num(pixels, nan=0.0).clip(0, 255).astype(np.uint8)
    else:
        # 16-bit PNGs open as I;16 or I (32-bit); scale the 16-bit range onto 8 bits.
        grey = (pixels.astype(np.uint32).clip(0, 65535) // 257).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _read_orientation(pil_image: Image.Image) -> int:
    """EXIF orientation 1..8; 1 when absent or invalid (called after the pixels are loaded)."""
    try:
        orientation = pil_image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except BAD_INPUT_ERRORS:  # a corrupt EXIF block must not drop a decodable image
        return 1
    # The tag's value comes from the file: a tuple, a string or a float there is as good as absent.
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Downscale so the short side is ``short_side`` (images already smaller are returned as is)."""
    height, width = image.shape[:2]
    if min(height, width) <= short_side:
        return image
    scale = short_side / min(height, width)
    if width < height:
        return downscale(image, short_side, max(1, round(height * scale)))
    return downscale(image, max(1, round(width * scale)), short_side)


def downscale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-filtered downscale to ``width`` x ``height``, fast.

    ``cv2.INTER_AREA`` is quick only for integer factors (0.19 ms for 1024x768 -> 512x384,
    2.9 ms for 1024x768 -> 683x512): reduce by the integer part of the factor with it (dropping
    at most factor - 1 edge pixels), then finish the remaining factor, below 2, with INTER_LINEAR.
    """
    source_height, source_width = image.shape[:2]
    step_x, step_y = max(1, source_width // width), max(1, source_height // height)
    if step_x > 1 or step_y > 1:
        cropped = image[: source_height - source_height % step_y, : source_width - source_width % step_x]
        size = (cropped.shape[1] // step_x, cropped.shape[0] // step_y)
        image = cv2.resize(cropped, size, interpolation=cv2.INTER_AREA)
    if image.shape[1] != width or image.shape[0] != height:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image
