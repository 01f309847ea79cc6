"""The HTTP schema: OpenAI's images API (``POST /v1/images/generations`` and ``/v1/images/edits``) plus our
extensions, and its errors.

Generation fields (a JSON body): ``prompt``, ``model``, ``n``, ``size`` ("WxH"), ``response_format`` (``b64_json``
only: this server keeps no images to link to), ``user`` (accepted, as OpenAI does, and not used), and the extensions
``negative_prompt``, ``num_inference_steps``, ``true_cfg_scale``, ``seed``. Types are strict (``"n": "2"`` is an
error, not a 2) and unknown fields are errors, so a client's typo is reported instead of silently ignored.

Edits (a ``multipart/form-data`` body) take the same fields as text, plus the source images as file parts named
``image`` or ``image[]`` (as the OpenAI client names a list; up to ``edit.max_images``), an optional ``mask`` file
(a PNG of the first image's size: transparent pixels, or white ones in a mask without alpha, mark the region to
change) and the extension ``strength`` (in (0, 1], masked edits only; default ``models.generation.DEFAULT_STRENGTH``).
One image is an edit (Qwen-Image-Edit); several are Edit-Plus references ("Picture 1", "Picture 2", ... in the
prompt); a mask makes it an inpainting guided by the instruction, of the first image. Form values are text, so
numbers are parsed from it (``n=2`` is a 2). ``size`` may be left out or ``"auto"``: the first image's aspect ratio at
the area of ``defaults.size`` (a masked edit's sides are multiples of 32). Uploads must be PNG, JPEG or WebP images;
they are decoded as the producers decode training sources (``pipelines.decode``: EXIF orientation applied,
transparency on white, the first frame).

Error convention (OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``): 400 for a body that is not
JSON (or multipart for edits), a field that is wrong or an image that cannot be used, 401 for a missing or wrong API
key, 404 for an unknown route or model, 413 for a body over the limit, 503 with ``Retry-After`` when the queue is
full or no generator replica answers.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import secrets
from collections.abc import Callable
from typing import Literal

import numpy as np
import pydantic
from PIL import Image

from models.generation import DEFAULT_STRENGTH, edit_source_size
from models.sampler import strength_start
from pipelines.decode import DecodeConfig, decode_image
from serving.config import Defaults, EditSettings, Limits
from serving.sizes import SIZE_MULTIPLE, parse_size

MAX_SEED = 2**32 - 1
# Form parts that carry the source images: the OpenAI client sends one file as "image", a list as "image[]".
IMAGE_FIELDS = ("image", "image[]")
# The form part that carries the mask (OpenAI's name).
MASK_FIELD = "mask"
# A masked edit's output sides: the instruction-guided inpainting resizes its image to sides of 32.
MASK_SIZE_MULTIPLE = 32


class ApiError(Exception):
    """A request the server refuses; becomes an OpenAI-shaped JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def error_type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class _ImageRequest(pydantic.BaseModel):
    """The fields both image routes take (the edit's source image travels beside them)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json"] | None = None
    user: str | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    true_cfg_scale: float | None = None
    seed: int | None = None


class ImageGenerationRequest(_ImageRequest):
    """The JSON body of ``POST /v1/images/generations`` as sent; ``check_request`` applies the limits."""

    model_config = pydantic.ConfigDict(strict=True)


class ImageEditRequest(_ImageRequest):
    """The text fields of ``POST /v1/images/edits``; form values are text, so numbers are parsed from it."""

    strength: float | None = None


@dataclasses.dataclass(frozen=True)
class EditUpload:
    """An edit form's files: the source images in the order sent, and the mask (None: none sent)."""

    images: tuple[bytes, ...]
    mask: bytes | None = None


@dataclasses.dataclass(frozen=True)
class GenerationJob:
    """A request that passed every check, defaults filled in: what the ingress sends the generator.

    ``seeds`` holds one seed per image (the request's ``seed``, ``seed + 1``, ...), so image ``i`` of a request is
    the same whatever else shares its batch.
    """

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_steps: int
    true_cfg_scale: float
    seeds: tuple[int, ...]
    # The LoRA adapter the request's ``model`` names ("<served name>:<adapter>"); None: the base model.
    adapter: str | None = dataclasses.field(default=None, kw_only=True)

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one sampler call (one adapter, or the base, per call)."""
        return (self.adapter, self.width, self.height, self.num_steps, self.true_cfg_scale, self.negative_prompt)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _field_error(error: pydantic.ValidationError) -> ApiError:
    """The first field a ``ValidationError`` names, as an ``ApiError(400)``."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif first["type"] == "missing":
        message = f"{param!r} is required"
    elif param == "response_format":
        message = "response_format: only 'b64_json' is supported (this server keeps no images to link to)"
    else:
        message = f"{param}: {first['msg']}"
    return ApiError(400, message, param=param, code="invalid_value")


def parse_body(raw: bytes) -> ImageGenerationRequest:
    """Bytes -> request model; ``ApiError(400)`` for bad JSON or a field of the wrong type, naming the field."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as error:  # UnicodeDecodeError included
        raise ApiError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return ImageGenerationRequest.model_validate(data)
    except pydantic.ValidationError as error:
        raise _field_error(error) from None


def parse_edit_form(
    fields: list[tuple[str, str]], files: list[tuple[str, bytes]], max_images: int = 1
) -> tuple[ImageEditRequest, EditUpload]:
    """A multipart form's text ``fields`` and ``files`` (name, bytes) -> (request model, the uploads);
    ``ApiError(400)`` names the field that is missing, repeated, unknown or of the wrong type, and ``image`` when more
    than ``max_images`` images came."""
    masks = [data for name, data in files if name == MASK_FIELD]
    for name, _ in files:
        if name not in (*IMAGE_FIELDS, MASK_FIELD):
            raise ApiError(400, f"unknown file field {name!r}", param=name, code="invalid_value")
    if len(masks) > 1:
        raise _invalid("mask", f"one mask per request, got {len(masks)}")
    images = tuple(data for name, data in files if name in IMAGE_FIELDS)
    if len(images) > max_images:
        raise _invalid("image", f"at most {max_images} images per request, got {len(images)}")
    values: dict[str, str] = {}
    for name, value in fields:
        if name in (*IMAGE_FIELDS, MASK_FIELD):
            param = "mask" if name == MASK_FIELD else "image"
            raise _invalid(param, "must be a file part (for example curl -F image=@photo.png), not a text field")
        if name in values:
            raise _invalid(name, "given more than once")
        values[name] = value
    if not images:
        raise ApiError(400, "'image' is required: a PNG, JPEG or WebP file part", param="image", code="invalid_value")
    try:
        request = ImageEditRequest.model_validate(values)
    except pydantic.ValidationError as error:
        raise _field_error(error) from None
    return request, EditUpload(images, masks[0] if masks else None)


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def _check_fields(
    request: _ImageRequest, limits: Limits, defaults: Defaults, count_tokens: Callable[[str], int]
) -> dict:
    """Every field but ``size`` checked against ``limits``, defaults filled in: ``GenerationJob`` keyword arguments.

    A request without ``seed`` gets a random one, which the response reports.
    """
    if not request.prompt.strip():
        raise _invalid("prompt", "must not be empty")
    for param in ("prompt", "negative_prompt"):
        text = getattr(request, param)
        if text is not None and (num_tokens := count_tokens(text)) > limits.max_prompt_tokens:
            raise _invalid(param, f"{num_tokens} tokens; at most {limits.max_prompt_tokens} allowed")
    if not 1 <= request.n <= limits.max_n:
        raise _invalid("n", f"must be between 1 and {limits.max_n}, got {request.n}")
    steps = defaults.num_inference_steps if request.num_inference_steps is None else request.num_inference_steps
    if not 1 <= steps <= limits.max_steps:
        raise _invalid("num_inference_steps", f"must be between 1 and {limits.max_steps}, got {steps}")
    cfg = defaults.true_cfg_scale if request.true_cfg_scale is None else request.true_cfg_scale
    if not (math.isfinite(cfg) and 0 <= cfg <= limits.max_true_cfg_scale):
        raise _invalid("true_cfg_scale", f"must be between 0 and {limits.max_true_cfg_scale}, got {cfg}")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise _invalid("seed", f"must be between 0 and {MAX_SEED}, got {request.seed}")
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    return {
        "prompt": request.prompt,
        "negative_prompt": defaults.negative_prompt if request.negative_prompt is None else request.negative_prompt,
        "num_steps": steps,
        "true_cfg_scale": float(cfg),
        "seeds": tuple(seed + index for index in range(request.n)),
    }


def _check_size(text: str, limits: Limits) -> tuple[int, int]:
    try:
        return parse_size(text, limits.max_pixels)
    except ValueError as error:
        raise _invalid("size", str(error)) from None


def check_request(
    request: ImageGenerationRequest, limits: Limits, defaults: Defaults, count_tokens: Callable[[str], int]
) -> GenerationJob:
    """Apply ``limits`` and ``defaults``; ``ApiError(400)`` names the first field out of bounds."""
    fields = _check_fields(request, limits, defaults, count_tokens)
    width, height = _check_size(request.size or defaults.size, limits)
    return GenerationJob(width=width, height=height, **fields)


# --- edits ---------------------------------------------------------------------------------------------------------


def _image_format(data: bytes) -> str | None:
    """The upload's format from its leading bytes: PNG, JPEG or WEBP; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_source(data: bytes, *, max_pixels: int) -> np.ndarray:
    """An uploaded PNG, JPEG or WebP -> uint8 RGB ``[H, W, 3]``, upright, as the producers decode training sources.

    ``ApiError(400)`` with ``param="image"`` for anything else, a file that does not decode (truncated, corrupt) and a
    header declaring more than ``max_pixels`` pixels (refused before any pixel is decoded: a decompression bomb).
    """
    if not data:
        raise _invalid("image", "the uploaded file is empty")
    # Only these three formats reach a decoder: Pillow's other plugins never see an upload.
    if _image_format(data) is None:
        raise _invalid("image", "not a PNG, JPEG or WebP image")
    # Our pixel budget is checked on the header; PIL's own guard (Image.MAX_IMAGE_PIXELS) stays on behind it.
    decoded = decode_image(data, DecodeConfig(max_pixels=max_pixels, analysis_short_side=1 << 30))
    if decoded.ok:
        return decoded.image
    reason = decoded.drop_reason
    if reason.startswith("too_large"):
        message = f"this server takes images of at most {max_pixels} pixels"
        if decoded.width:  # the header's size when our budget refused it (none when PIL's guard did, in open)
            message = f"{decoded.width}x{decoded.height} has {decoded.width * decoded.height} pixels; {message}"
        raise _invalid("image", message)
    if reason == "broken_file:truncated":
        raise _invalid("image", "the file is truncated: it ends before the image does")
    raise _invalid("image", f"the file does not decode as a PNG, JPEG or WebP image ({reason})")


def check_source(data: bytes, edit: EditSettings) -> tuple[int, int]:
    """Decode the upload (every pixel: a truncated file must be caught here, not in the generator) and check its
    size against ``edit``; returns its upright (width, height)."""
    height, width = decode_source(data, max_pixels=edit.max_source_pixels).shape[:2]
    if min(width, height) < edit.min_source_side:
        raise _invalid("image", f"{width}x{height} is too small: at least {edit.min_source_side} pixels a side")
    if max(width, height) > edit.max_aspect_ratio * min(width, height):
        raise _invalid(
            "image", f"{width}x{height}: the long side may be at most {edit.max_aspect_ratio:g} times the short side"
        )
    return width, height


def default_edit_size(area: int, source_width: int, source_height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) of about ``area`` pixels with the source's aspect ratio, sides multiples of 16, at most
    ``max_pixels``; ``ValueError`` when no such size exists (an extreme aspect ratio on a small budget)."""
    exact_width = math.sqrt(area * source_width / source_height)
    exact_height = exact_width * source_height / source_width
    for step in (round, math.floor):  # rounding both sides up can pass the budget: then round down
        width = max(SIZE_MULTIPLE, step(exact_width / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        height = max(SIZE_MULTIPLE, step(exact_height / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if width * height <= max_pixels:
            return width, height
    raise ValueError(f"no size with the source's aspect ratio fits in {max_pixels} pixels; give one")


def decode_mask(data: bytes, *, max_pixels: int) -> np.ndarray:
    """An uploaded mask -> uint8 ``[H, W, 4]`` when it has transparency (transparent = change), else greyscale
    ``[H, W]`` (white = change), as ``models.generation.inpaint_mask`` reads either. ``ApiError(400)`` with
    ``param="mask"`` unless it is a PNG that decodes, of at most ``max_pixels`` pixels (checked on the header)."""
    if not data:
        raise _invalid("mask", "the uploaded file is empty")
    if _image_format(data) != "PNG":
        raise _invalid("mask", "not a PNG image (a mask is a PNG whose transparent pixels mark the region to change)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.width * image.height > max_pixels:
                raise _invalid("mask", f"{image.width}x{image.height} is more than this server's {max_pixels} pixels")
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            image.load()
            pixels = image.convert("RGBA") if has_alpha else image.convert("L")
    except ApiError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise _invalid("mask", f"the file does not decode as a PNG image ({type(error).__name__})") from None
    return np.asarray(pixels)


@dataclasses.dataclass(frozen=True)
class EditJob(GenerationJob):
    """An edit that passed every check: the job's fields, the source image as uploaded (the generator decodes it
    again: the file is a fraction of the pixels' size to send) and the areas the model resizes it to.

    ``references`` (with their upright sizes) are the images after the first: an Edit-Plus edit. ``mask``: the mask
    as uploaded (None: none), which makes the job an inpainting of the first image at ``strength``."""

    image: bytes = dataclasses.field(repr=False)
    # Upright size of the decoded upload.
    source_width: int
    source_height: int
    # ``TextToImage.edit_latents``'s ``source_area`` (None: the output's area) and ``vision_area``.
    source_area: int | None
    vision_area: int
    references: tuple[bytes, ...] = dataclasses.field(default=(), repr=False)
    reference_sizes: tuple[tuple[int, int], ...] = ()
    mask: bytes | None = dataclasses.field(default=None, repr=False)
    strength: float = DEFAULT_STRENGTH

    @property
    def kind(self) -> str:
        """ "edit", "edit_plus" (several images), "edit_inpaint" (a mask) or "edit_plus_inpaint" (both)."""
        return ("edit_plus" if self.references else "edit") + ("_inpaint" if self.mask is not None else "")

    def source_sizes(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each image as the VAE sees it, then as the vision tower sees it."""
        area = self.source_area if self.source_area is not None else self.width * self.height
        sizes = [(self.source_width, self.source_height), *self.reference_sizes]
        return tuple(edit_source_size(area, *size) for size in sizes) + tuple(
            edit_source_size(self.vision_area, *size) for size in sizes
        )

    def batch_key(self) -> tuple:
        """Edits share a sampler call only with edits of their kind (and ``strength``, when masked) whose images
        resize to the same sizes."""
        strength = self.strength if self.mask is not None else None
        return (self.kind, *super().batch_key(), strength, *self.source_sizes())

    def source_pixels(self) -> np.ndarray:
        """The source, uint8 RGB ``[H, W, 3]``, decoded as ``check_source`` decoded it."""
        return decode_source(self.image, max_pixels=self.source_width * self.source_height)

    def reference_pixels(self) -> list[np.ndarray]:
        """Every image, the first included, uint8 RGB ``[H, W, 3]``."""
        pixels = [self.source_pixels()]
        for data, (width, height) in zip(self.references, self.reference_sizes, strict=True):
            pixels.append(decode_source(data, max_pixels=width * height))
        return pixels

    def mask_pixels(self) -> np.ndarray:
        """The mask, as ``decode_mask`` gives it."""
        assert self.mask is not None
        return decode_mask(self.mask, max_pixels=self.source_width * self.source_height)


def check_mask(data: bytes, source_size: tuple[int, int], edit: EditSettings) -> None:
    """The mask decodes (``decode_mask``) and has the first image's upright size; else ``ApiError(400)``, ``mask``."""
    height, width = decode_mask(data, max_pixels=edit.max_source_pixels).shape[:2]
    if (width, height) != tuple(source_size):
        raise _invalid(
            "mask", f"{width}x{height}; it must be the (first) image's size, {source_size[0]}x{source_size[1]}"
        )


def check_edit_request(
    request: ImageEditRequest,
    upload: EditUpload | bytes,
    source_size: tuple[int, int] | list[tuple[int, int]],
    limits: Limits,
    defaults: Defaults,
    edit: EditSettings,
    count_tokens: Callable[[str], int],
) -> EditJob:
    """Apply ``limits`` and ``defaults`` to an edit whose uploads ``check_source`` (and ``check_mask``) passed
    (``source_size``: what ``check_source`` returned, one per image); without ``size`` (or with "auto") the output
    takes the first image's aspect ratio at ``defaults.size``'s area. A masked edit's sides must be multiples of
    ``MASK_SIZE_MULTIPLE``; ``strength`` applies to masked edits only."""
    if isinstance(upload, bytes):
        upload = EditUpload((upload,))
    sizes = [source_size] if isinstance(source_size, tuple) else list(source_size)
    fields = _check_fields(request, limits, defaults, count_tokens)
    masked = upload.mask is not None
    source_width, source_height = sizes[0]
    if request.size in (None, "auto"):
        default_width, default_height = parse_size(defaults.size, limits.max_pixels)
        area = default_width * default_height
        try:
            if masked:
                width, height = edit_source_size(area, source_width, source_height)
                if width * height > limits.max_pixels:
                    raise ValueError(f"no size with the image's aspect ratio fits in {limits.max_pixels} pixels")
            else:
                width, height = default_edit_size(area, source_width, source_height, limits.max_pixels)
        except ValueError as error:
            raise _invalid("size", str(error)) from None
    else:
        width, height = _check_size(request.size, limits)
    if masked and (width % MASK_SIZE_MULTIPLE or height % MASK_SIZE_MULTIPLE):
        raise _invalid("size", f"{width}x{height}: a masked edit's sides must be multiples of {MASK_SIZE_MULTIPLE}")
    strength = DEFAULT_STRENGTH
    if request.strength is not None:
        if not masked:
            raise _invalid("strength", "applies to masked edits only: send a mask, or leave strength out")
        strength = request.strength
        try:
            strength_start(fields["num_steps"], strength)
        except ValueError as error:
            raise _invalid("strength", str(error)) from None
    return EditJob(
        width=width,
        height=height,
        **fields,
        image=upload.images[0],
        source_width=source_width,
        source_height=source_height,
        source_area=edit.source_area,
        vision_area=edit.vision_area,
        references=upload.images[1:],
        reference_sizes=tuple(tuple(size) for size in sizes[1:]),
        mask=upload.mask,
        strength=float(strength),
    )
