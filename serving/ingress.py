"""The HTTP ingress: a FastAPI app that checks every request before any model work, then asks the generator.

Routes: ``POST /v1/images/generations`` (OpenAI images API plus extensions, ``serving.schema``), ``POST
/v1/images/edits`` (the same as ``multipart/form-data`` with ``image`` files and an optional ``mask``), ``GET /v1/models``, ``GET /healthz``
(liveness, never needs the key) and ``GET /`` (the web page; it holds no data and sends the key the user types with
each generation, so it is not behind the key either).

Order of checks on a generation or an edit: API key (401) -> body size (413, from Content-Length before any byte is
read, and from the bytes read) -> JSON or form and field types (400) -> model (404) -> limits and, for an edit, the
image (400) -> the client's rate (429 + Retry-After, ``rate_limit.images``) -> queue (503 + Retry-After). A request
that is wrong is told so even while the server is busy or the client over its rate; only a valid one can get 429 or
503, and only a valid one is counted against the client's rate. The client is the key when one is set, else the
address (``serving.ratelimit``). An edit's body may be ``edit.max_upload_bytes`` (the generations route keeps
``limits.max_body_bytes``); its text fields are held to ``limits.max_body_bytes`` each.
"""

# No ``from __future__ import annotations`` here: with it, FastAPI (through Serve's class-based ingress) did not
# resolve the string annotation ``Request`` and took ``request`` for a required query parameter.
import asyncio
import base64
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.multipart import parse_options_header
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from models.tokenizer import build_qwen2_tokenizer
from serving.config import ServeSettings
from serving.page import render_page
from serving.ratelimit import BearerKey, InFlight, RateLimiter, busy, client_id
from serving.schema import (
    ApiError,
    EditUpload,
    GenerationJob,
    check_edit_request,
    check_mask,
    check_request,
    check_source,
    parse_body,
    parse_edit_form,
)
from serving.sizes import parse_size

logger = logging.getLogger(__name__)

# A generator replica that is gone (killed, its node lost) or not yet replaced: worth another try elsewhere.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
# Every answered generation or edit says how many times the ingress retried it on another generator replica.
RETRIES_HEADER = "X-Generator-Retries"
# How long the ingress keeps the generator's list of adapters before asking again.
ADAPTER_LIST_TTL_S = 1.0

app = FastAPI(title="Qwen-Image", docs_url=None, redoc_url=None, openapi_url=None)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def install_error_handlers(api: FastAPI, log: logging.Logger) -> None:
    """Every error of ``api`` in the OpenAI shape: ``ApiError``s as raised, unknown routes (404) and methods (405),
    and anything unexpected as 500 with the details in the replica's log only."""

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return error_response(ApiError(error.status_code, str(error.detail), code=code, headers=error.headers))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed")
        return error_response(ApiError(500, "internal error; see the server's log", code="internal_error"))


install_error_handlers(app, logger)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"request body is larger than {max_bytes} bytes", code="request_too_large")


def check_declared_length(request: Request, max_bytes: int) -> None:
    """413 when Content-Length says the body exceeds ``max_bytes``: before any of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length header is not a number", code="invalid_header")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)


async def _limited_stream(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused with 413 once more than ``max_bytes`` have come (chunked, or a Content-Length
    that lied)."""
    num_bytes = 0
    async for chunk in request.stream():
        num_bytes += len(chunk)
        if num_bytes > max_bytes:
            raise _too_large(max_bytes)
        yield chunk


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``max_bytes`` (declared or streamed)."""
    check_declared_length(request, max_bytes)
    body = bytearray()
    async for chunk in _limited_stream(request, max_bytes):
        body += chunk
    return bytes(body)


# Text fields plus a few images and a mask: more parts than this is not an edit request (``edit.max_images`` is
# held below this by the form check, which names the ``image`` parameter).
MAX_FORM_FIELDS = 32
MAX_FORM_FILES = 16


async def read_form(
    request: Request, max_bytes: int, max_field_bytes: int
) -> tuple[list[tuple[str, str]], list[tuple[str, bytes]]]:
    """A ``multipart/form-data`` body as (text fields, files), each (name, value), in the order sent.

    The body is parsed as it streams in (files over 1 MB spill to a temporary file) and refused with 413 once it is
    known to pass ``max_bytes``; a text field over ``max_field_bytes``, or a body that is not multipart, gets 400.
    """
    check_declared_length(request, max_bytes)
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1")[:60] or "none"
        message = f"send multipart/form-data (an 'image' file and a 'prompt' field); got Content-Type {shown!r}"
        raise ApiError(400, message, code="invalid_content_type")
    parser = MultiPartParser(
        request.headers,
        _limited_stream(request, max_bytes),
        max_files=MAX_FORM_FILES,
        max_fields=MAX_FORM_FIELDS,
        max_part_size=max_field_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        message = f"request body is not valid multipart/form-data: {error.message}"
        raise ApiError(400, message, code="invalid_form") from None
    try:
        fields, files = [], []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((name, await value.read()))
            else:
                fields.append((name, value))
        return fields, files
    finally:
        await form.close()


def check_uploads(upload: EditUpload, edit) -> list[tuple[int, int]]:
    """Each image's upright (width, height) (``check_source``), after checking the mask against the first."""
    sizes = [check_source(image, edit) for image in upload.images]
    if upload.mask is not None:
        check_mask(upload.mask, sizes[0], edit)
    return sizes


class MissingApiKey(RuntimeError):
    """An ingress replica that must require a key (``require_api_key``) and finds none in its environment."""


def api_key(settings: ServeSettings) -> BearerKey:
    """The key this replica checks requests against, read from ``settings.api_key_env`` in its environment. With
    ``require_api_key`` a missing or empty key is an error (the replica does not start) rather than an open server."""
    key = BearerKey(settings.api_key_env)
    if not key.required:
        if settings.require_api_key:
            raise MissingApiKey(
                f"require_api_key is set but the environment variable {settings.api_key_env} is unset or empty in "
                f"this replica's process (host {socket.gethostname()}): refusing to start with every route open. "
                f"Set {settings.api_key_env} in every pod that can host an Ingress replica (platform/kuberay/"
                "rayservice.yaml reads it from the Secret qwen-image-api-key)"
            )
        logger.warning("no API key set (%s): every route is open", settings.api_key_env)
    return key


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class Ingress:
    """Validates, authorises and queues requests; the generator deployment does the model work."""

    def __init__(self, settings: ServeSettings, generator: DeploymentHandle):
        self.key = api_key(settings)  # first: a replica that must not serve open stops before loading anything
        self.settings = settings
        self.generator = generator
        # The real Qwen2 vocabulary: prompt token caps count what the condition encoder will see.
        self.tokenizer = build_qwen2_tokenizer()
        limits = settings.rate_limit
        self.image_rate = RateLimiter(limits.images, what="image requests per client", max_clients=limits.max_clients)
        self.in_flight = InFlight(settings.queue.max_in_flight, settings.queue.retry_after_s)
        self.created = int(time.time())
        self.adapter_names: list[str] | None = None  # the generator's, asked again after ADAPTER_LIST_TTL_S
        self.adapters_asked = 0.0

    def authorize(self, request: Request) -> str:
        """401 unless the request carries the key (when one is set); the client the request counts against."""
        return client_id(request, self.key, self.settings.rate_limit)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def busy(self, message: str) -> ApiError:
        return busy(message, self.settings.queue.retry_after_s)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page(self, request: Request) -> str:
        defaults = self.settings.defaults
        width, height = parse_size(defaults.size, self.settings.limits.max_pixels)
        return render_page(
            title=self.settings.model.name,
            root_path=request.scope.get("root_path", ""),
            width=width,
            height=height,
            steps=defaults.num_inference_steps,
            max_steps=self.settings.limits.max_steps,
            edits=self.settings.edit.enabled,
        )

    async def model_ids(self) -> list[str]:
        """The base's id, then ``<name>:<adapter>`` for each adapter the generator serves (asked at most every
        ``ADAPTER_LIST_TTL_S``: a ``user_config`` change reaches clients within that)."""
        now = time.monotonic()
        if self.adapter_names is None or now - self.adapters_asked > ADAPTER_LIST_TTL_S:
            self.adapter_names = await self.generator.adapters.remote()
            self.adapters_asked = now
        name = self.settings.model.name
        return [name] + [f"{name}:{adapter}" for adapter in self.adapter_names]

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        """The base model and each served adapter (``<name>:<adapter>``)."""
        self.authorize(request)
        entries = [
            {"id": model_id, "object": "model", "created": self.created, "owned_by": "local"}
            for model_id in await self.model_ids()
        ]
        return {"object": "list", "data": entries}

    @app.post("/v1/images/generations")
    async def generations(self, request: Request, response: Response) -> dict:
        client = self.authorize(request)
        body = parse_body(await read_body(request, self.settings.limits.max_body_bytes))
        adapter = await self.check_model(body.model)
        job = check_request(body, self.settings.limits, self.settings.defaults, self.count_tokens)
        return await self.answer(dataclasses.replace(job, adapter=adapter), response, client)

    @app.post("/v1/images/edits")
    async def edits(self, request: Request, response: Response) -> dict:
        client = self.authorize(request)
        edit = self.settings.edit
        if not edit.enabled:
            raise ApiError(404, "image editing is turned off on this server", code="not_found")
        fields, files = await read_form(request, edit.max_upload_bytes, self.settings.limits.max_body_bytes)
        body, upload = parse_edit_form(fields, files, edit.max_images)
        adapter = await self.check_model(body.model)
        # Decoding a large photo takes a while: off the event loop, which serves every other request meanwhile.
        source_sizes = await asyncio.to_thread(check_uploads, upload, edit)
        job = check_edit_request(
            body, upload, source_sizes, self.settings.limits, self.settings.defaults, edit, self.count_tokens
        )
        return await self.answer(dataclasses.replace(job, adapter=adapter), response, client)

    async def check_model(self, model: str | None) -> str | None:
        """The adapter ``model`` names (None: the base, also when ``model`` is left out); 404 when it names
        nothing served."""
        if model is None or model == self.settings.model.name:
            return None
        served = await self.model_ids()
        if model in served:
            return model.partition(":")[2]
        raise self.unknown_model(model, served)

    def unknown_model(self, model: str, served: list[str]) -> ApiError:
        message = f"model {model!r} does not exist; this server serves {', '.join(repr(m) for m in served)}"
        return ApiError(404, message, param="model", code="model_not_found")

    async def answer(self, job: GenerationJob, response: Response, client: str) -> dict:
        """Count ``job`` against ``client``'s rate (429 when over), queue it (503 when full) and answer with its
        images, base64 PNGs with their seeds; the ``X-Generator-Retries`` header counts the retries on another
        replica it took."""
        self.image_rate.admit(client)
        with self.in_flight.slot():
            images, retries = await self.generate(job)
        if isinstance(images, dict):  # the replica asked does not serve the adapter (a user_config change)
            name = self.settings.model.name
            raise self.unknown_model(f"{name}:{images['unknown_adapter']}", await self.model_ids())
        response.headers[RETRIES_HEADER] = str(retries)
        data = [
            {"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed}
            for png, seed in zip(images, job.seeds, strict=True)
        ]
        return {"created": int(time.time()), "data": data}

    async def generate(self, job: GenerationJob) -> tuple[list[bytes], int]:
        """PNGs from the generator and the number of retries they took: a request is retried on another replica
        when the one asked dies or is gone."""
        queue = self.settings.queue
        attempt = 0
        while True:
            try:
                return await self.generator.generate.remote(job), attempt
            except BackPressureError as error:
                raise self.busy(f"server busy: {error}") from None
            except REPLICA_GONE as error:
                attempt += 1
                if attempt > queue.num_retries:
                    raise self.busy(f"no generator replica answered after {attempt} tries") from error
                logger.warning("generator replica lost (%s); retry %d", type(error).__name__, attempt)
                await asyncio.sleep(queue.retry_backoff_s * 2 ** (attempt - 1))
