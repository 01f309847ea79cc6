"""The HTTP schema: OpenAI's images API (``POST /v1/images/generations``) plus our extensions, and its errors.

Request fields: ``prompt``, ``model``, ``n``, ``size`` ("WxH"), ``response_format`` (``b64_json`` only: this server
keeps no images to link to), ``user`` (accepted, as OpenAI does, and not used), and the extensions
``negative_prompt``, ``num_inference_steps``, ``true_cfg_scale``, ``seed``. Types are strict (``"n": "2"`` is an
error, not a 2) and unknown fields are errors, so a client's typo is reported instead of silently ignored.

Error convention (OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``): 400 for a body that is not
JSON or a field that is wrong, 401 for a missing or wrong API key, 404 for an unknown route or model, 413 for a body
over the limit, 503 with ``Retry-After`` when the queue is full or no generator replica answers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from collections.abc import Callable
from typing import Literal

import pydantic

from serving.config import Defaults, Limits
from serving.sizes import parse_size

MAX_SEED = 2**32 - 1


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


class ImageGenerationRequest(pydantic.BaseModel):
    """The JSON body of ``POST /v1/images/generations`` as sent; ``check_request`` applies the limits."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

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

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one sampler call."""
        return (self.width, self.height, self.num_steps, self.true_cfg_scale, self.negative_prompt)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


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
        raise ApiError(400, message, param=param, code="invalid_value") from None


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def check_request(
    request: ImageGenerationRequest, limits: Limits, defaults: Defaults, count_tokens: Callable[[str], int]
) -> GenerationJob:
    """Apply ``limits`` and ``defaults``; ``ApiError(400)`` names the first field out of bounds.

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
    try:
        width, height = parse_size(request.size or defaults.size, limits.max_pixels)
    except ValueError as error:
        raise _invalid("size", str(error)) from None
    steps = defaults.num_inference_steps if request.num_inference_steps is None else request.num_inference_steps
    if not 1 <= steps <= limits.max_steps:
        raise _invalid("num_inference_steps", f"must be between 1 and {limits.max_steps}, got {steps}")
    cfg = defaults.true_cfg_scale if request.true_cfg_scale is None else request.true_cfg_scale
    if not (math.isfinite(cfg) and 0 <= cfg <= limits.max_true_cfg_scale):
        raise _invalid("true_cfg_scale", f"must be between 0 and {limits.max_true_cfg_scale}, got {cfg}")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise _invalid("seed", f"must be between 0 and {MAX_SEED}, got {request.seed}")
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    return GenerationJob(
        prompt=request.prompt,
        negative_prompt=defaults.negative_prompt if request.negative_prompt is None else request.negative_prompt,
        width=width,
        height=height,
        num_steps=steps,
        true_cfg_scale=float(cfg),
        seeds=tuple(seed + index for index in range(request.n)),
    )
