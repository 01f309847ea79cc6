"""Settings of the serving application, and reading them from a Serve config file.

A Serve config file (``configs/serve_*.yaml``, Serve's own schema, the file ``serve run`` takes) holds HTTP options
and one application whose ``args`` are a ``ServeSettings`` (what the model is, request limits, batching, the queue)
and whose ``deployments`` set each deployment's Serve options (``num_replicas`` or ``autoscaling_config``,
``max_ongoing_requests``, ``ray_actor_options.num_gpus``). ``serve run`` applies those options itself;
``jobs/serve.py`` reads the same file through ``load_serve_file``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Annotated, Literal

import pydantic
import yaml

from models.condition_encoder import MAX_PROMPT_TOKENS
from models.config import ConfigError, StrictModel, validate_config
from models.generation import DEFAULT_NEGATIVE_PROMPT, DEFAULT_TRUE_CFG
from models.placement import PlacementMode
from serving.ratelimit import RateLimit
from serving.sizes import parse_size
from store.header import resolve_edit_vision_area

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AdapterSettings(StrictModel):
    """A LoRA adapter served beside the base: clients ask for it as ``model: "<model.name>:<name>"``."""

    name: str = pydantic.Field(pattern=ADAPTER_NAME)
    # pytorch_lora_weights.safetensors in diffusers' format (what our trainers export, or another tool's), or a
    # folder holding it.
    path: str
    scale: float = 1.0


def _unique_names(adapters: list[AdapterSettings]) -> list[AdapterSettings]:
    names = [adapter.name for adapter in adapters]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"adapter names must be unique; repeated: {repeated}")
    return adapters


Adapters = Annotated[list[AdapterSettings], pydantic.AfterValidator(_unique_names)]


class GeneratorUserConfig(StrictModel):
    """The ``ImageGenerator`` deployment's ``user_config``: what Serve changes in running replicas."""

    adapters: Adapters = []


def parse_adapters(user_config: dict) -> list[AdapterSettings]:
    """The adapters of a generator ``user_config``; ``ConfigError`` names every bad key."""
    return validate_config(GeneratorUserConfig, user_config or {}, "ImageGenerator user_config").adapters


class VaeSettings(StrictModel):
    """How the VAE decodes a batch (``models.vae.LatentVAE.configure_decoding``): its working memory grows with the
    pixels of one call, about 2.8 GiB per 1328² image for the published VAE in bf16."""

    # A batch is decoded in slices of at most this many pixels (at least one image each); None: one call. The
    # default, 2 MiP, is one 1328² image or two 1024² ones: on a GPU decoding is a small part of a request's time.
    max_batch_pixels: pydantic.PositiveInt | None = 2 * 1024 * 1024
    # Images with a side above this many pixels are decoded in overlapping tiles (None: never). Tiles bound the
    # memory whatever the size, at the price of small differences near the seams.
    tile_size: pydantic.PositiveInt | None = None
    tile_overlap: pydantic.NonNegativeInt = 64

    @pydantic.model_validator(mode="after")
    def _tiles(self) -> VaeSettings:
        if self.tile_size is not None and (
            self.tile_size % 32 or self.tile_overlap % 8 or self.tile_overlap >= self.tile_size
        ):
            raise ValueError("vae.tile_size must be a multiple of 32 and vae.tile_overlap a multiple of 8 below it")
        return self


class Warmup(StrictModel):
    """A generation at start (``defaults.size``, these steps; an edit too when edits are on), before the replica
    takes traffic: the first user does not pay the allocator's first reservations, cuDNN's algorithm search or lazy
    initialisation, and a profile that does not fit in practice fails at start, not on a request."""

    enabled: bool = True
    num_inference_steps: pydantic.PositiveInt = 2


class ModelSettings(StrictModel):
    """What the generator loads: a training checkpoint folder when given, else the preset; then the adapters; and
    where it runs (``placement``, ``models/placement.py``), checked against the memory plan at start
    (``serving/memory.py``)."""

    preset: Literal["tiny", "nano", "qwen-image"] = "tiny"
    checkpoint: str | None = None
    weights_dir: str | None = None
    # The id clients pass as ``model`` and ``GET /v1/models`` lists.
    name: str = "qwen-image"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bfloat16 on a GPU (the published weights' dtype; float32 of the 20B transformer alone is 82 GB), float32
    # on the CPU (bfloat16 matrix products are slow on most CPUs).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    placement: PlacementMode = "resident"
    # block_offload: transformer blocks moved to the GPU together (more: fewer, larger copies; more GPU memory).
    blocks_per_group: pydantic.PositiveInt = 1
    # The GPU memory the plan is checked against; None: what the device reports at start.
    gpu_memory_gib: pydantic.PositiveFloat | None = None
    vae: VaeSettings = VaeSettings()
    warmup: Warmup = Warmup()
    # Seed of the tiny preset's random weights (ignored by presets that read weights).
    seed: int = 0
    # LoRA adapters loaded into the one base model of each generator replica; requests pick one by ``model``.
    adapters: Adapters = []

    @pydantic.model_validator(mode="after")
    def _devices(self) -> ModelSettings:
        if self.device == "cpu" and self.placement == "two_gpus":
            raise ValueError("model.placement two_gpus needs model.device cuda or auto (on a node with two GPUs)")
        return self

    def resolved_dtype(self, device_type: str) -> str:
        """The dtype name for a device type (``auto`` resolved)."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device_type == "cuda" else "float32"


class Limits(StrictModel):
    """Caps on what one request may ask for; a request past one gets 400 (413 for the body) naming the field."""

    max_pixels: pydantic.PositiveInt = 1024 * 1024
    max_steps: pydantic.PositiveInt = 50
    max_n: pydantic.PositiveInt = 4
    max_prompt_tokens: int = pydantic.Field(default=MAX_PROMPT_TOKENS, ge=1, le=MAX_PROMPT_TOKENS)
    max_true_cfg_scale: pydantic.PositiveFloat = 20.0
    max_body_bytes: pydantic.PositiveInt = 64 * 1024


class Defaults(StrictModel):
    """Values for the fields a request leaves out."""

    # An edit without ``size`` (or with "auto") gets the source's aspect ratio at this size's area.
    size: str = "1024x1024"
    num_inference_steps: pydantic.PositiveInt = 50
    true_cfg_scale: pydantic.NonNegativeFloat = DEFAULT_TRUE_CFG
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT


class EditSettings(StrictModel):
    """``POST /v1/images/edits``: how an uploaded source image is taken and what the model sees of it.

    The upload must be a PNG, JPEG or WebP image of at least ``min_source_side`` pixels a side, at most
    ``max_source_pixels`` pixels (a small file can declare a huge image: the check reads the header before any pixel
    is decoded) and at most ``max_aspect_ratio`` long side to short side (the source's tokens grow with it).
    """

    enabled: bool = True
    # Pixel area at which the vision tower sees the source: the model learnt edits from conditions encoded at the
    # area its latent store's header records (``EncodeConfig.edit_vision_area``), which training writes into the
    # checkpoint's metadata. None (the default): the checkpoint's, else 384 x 384; a value that differs from the
    # checkpoint's is refused (``ServeSettings``).
    vision_area: int | None = pydantic.Field(default=None, ge=28 * 28)
    # Pixel area the source is resized to (aspect kept, sides of 32) before the VAE; None: the output's area, as the
    # latent store holds a triplet's input at the target's size. diffusers' QwenImageEditPipeline uses 1024 * 1024.
    source_area: pydantic.PositiveInt | None = None
    # The whole multipart body (the image and the fields); the JSON routes keep ``limits.max_body_bytes``.
    max_upload_bytes: pydantic.PositiveInt = 8 * 1024 * 1024
    max_source_pixels: pydantic.PositiveInt = 4096 * 4096
    min_source_side: pydantic.PositiveInt = 32
    max_aspect_ratio: float = pydantic.Field(default=8.0, ge=1.0)
    # Images one edit may send (``image[]``): more than one makes it an Edit-Plus edit (Qwen-Image-Edit-2509 and
    # later read "Picture 1", "Picture 2", ... in the prompt), each a reference of its own. At most 8: the form
    # parser takes 16 files, so a few more than allowed are still refused by name (`param: image`).
    max_images: int = pydantic.Field(default=3, ge=1, le=8)


class Batching(StrictModel):
    """``@serve.batch`` on the generator: requests with the same size, steps, CFG and negative prompt share a call
    (edits also need sources that resize to one size; an edit never shares a call with a text-to-image request).

    A batch is counted in images (``n`` of each request), since images, not requests, are what cost memory and time.
    ``max_batch_images: 1`` turns batching off (then ``limits.max_n`` must be 1 too).
    """

    max_batch_images: pydantic.PositiveInt = 8
    wait_timeout_s: pydantic.NonNegativeFloat = 0.05


class Queue(StrictModel):
    """Back-pressure and fault tolerance in the ingress."""

    # Requests one ingress replica holds at once (waiting or generating); the next gets 503 with Retry-After.
    max_in_flight: pydantic.PositiveInt = 64
    retry_after_s: pydantic.PositiveInt = 2
    # A generator replica that dies mid-request (node lost, OOM, killed) is retried on another: generation is
    # deterministic for a seed, so a retry returns what the first attempt would have.
    num_retries: pydantic.NonNegativeInt = 3
    retry_backoff_s: pydantic.NonNegativeFloat = 0.25


class ServeSettings(StrictModel):
    """The application's ``args`` in a Serve config file."""

    model: ModelSettings = ModelSettings()
    limits: Limits = Limits()
    defaults: Defaults = Defaults()
    batching: Batching = Batching()
    queue: Queue = Queue()
    edit: EditSettings = EditSettings()
    # Name of the environment variable (in the ingress replicas) holding the API key; unset or empty: no key needed.
    api_key_env: str | None = "QWEN_IMAGE_API_KEY"
    # A deployment that must not serve open: an ingress replica whose environment has no key (api_key_env unset or
    # empty there) refuses to start instead of serving every route without authentication.
    require_api_key: bool = False
    # Per-client request rates (by key, else by address) in each ingress replica; see serving.ratelimit.
    rate_limit: RateLimit = RateLimit()

    @pydantic.model_validator(mode="before")
    @classmethod
    def _edit_vision_area_of_the_checkpoint(cls, data: object) -> object:
        """``edit.vision_area`` from the checkpoint's metadata when not given; a given one must equal it."""
        from models.checkpoint import trained_edit_vision_area

        if not isinstance(data, dict):
            return data
        model, edit = data.get("model") or {}, data.get("edit") or {}
        checkpoint = model.get("checkpoint") if isinstance(model, dict) else model.checkpoint
        edit = edit if isinstance(edit, dict) else edit.model_dump(exclude_unset=True)
        where = f"the checkpoint {checkpoint} learnt edits whose input image the vision tower saw"
        area = resolve_edit_vision_area(
            edit.get("vision_area"), trained_edit_vision_area(checkpoint), "edit.vision_area", where
        )
        return {**data, "edit": {**edit, "vision_area": area}}

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.require_api_key and not self.api_key_env:
            raise ValueError("require_api_key needs api_key_env: the environment variable that holds the key")
        try:
            parse_size(self.defaults.size, self.limits.max_pixels)
        except ValueError as error:
            raise ValueError(f"defaults.size: {error}") from None
        if self.defaults.num_inference_steps > self.limits.max_steps:
            raise ValueError(f"defaults.num_inference_steps is above limits.max_steps ({self.limits.max_steps})")
        if self.defaults.true_cfg_scale > self.limits.max_true_cfg_scale:
            raise ValueError("defaults.true_cfg_scale is above limits.max_true_cfg_scale")
        if self.limits.max_n > self.batching.max_batch_images:
            raise ValueError(
                f"limits.max_n ({self.limits.max_n}) exceeds batching.max_batch_images "
                f"({self.batching.max_batch_images}): a request's images always go into one batch"
            )
        return self


def environment_read(settings: ServeSettings) -> dict[str, list[str]]:
    """The environment variables each deployment of the application reads when its replicas start, by deployment
    name: the API key in the ingress. Every pod that can host such a replica must set them."""
    return {"Ingress": [settings.api_key_env]} if settings.api_key_env else {}


def parse_settings(args: dict) -> ServeSettings:
    """``ServeSettings`` from a config's ``args``; ``ConfigError`` names every bad key."""
    return validate_config(ServeSettings, args, "serving settings")


@dataclasses.dataclass
class ServeFile:
    """One application of a Serve config file, ready for ``serve.start`` and ``serving.app.application``."""

    http_options: dict
    name: str
    route_prefix: str
    settings: ServeSettings
    # Serve options per deployment name (``ImageGenerator``, ``Ingress``), as ``Deployment.options`` takes them.
    deployment_options: dict[str, dict]


def load_serve_file(path: str | pathlib.Path) -> ServeFile:
    """Read a Serve config file holding one application built by ``serving.app:build_app``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"serve config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    applications = data.get("applications") or []
    if len(applications) != 1:
        raise ConfigError(f"{path}: 'applications' must list exactly one application, found {len(applications)}")
    application = applications[0]
    options = {}
    for deployment in application.get("deployments") or []:
        deployment = dict(deployment)
        options[deployment.pop("name")] = deployment
    return ServeFile(
        http_options=dict(data.get("http_options") or {}),
        name=application.get("name", "default"),
        route_prefix=application.get("route_prefix", "/"),
        settings=parse_settings(application.get("args") or {}),
        deployment_options=options,
    )
