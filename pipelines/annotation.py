"""Structured annotation: one Qwen2.5-VL pass per image returns a caption plus typed fields (docs/qwen_image.md §2).

The captioner is asked for one JSON object with ``caption`` (natural prose, visible text transcribed verbatim in
quotes), ``image_type``, ``image_style``, ``watermark_list`` and ``abnormal_element`` (yes / no). Its answer is
parsed and checked by rules; an answer that does not parse or breaks a rule is recorded as a failed annotation with
its reason (``annotation_error``), the raw caption of the source is kept, and nothing raises.

The captioner runs only with weights a person chose: ``weights_dir`` (real weights), ``preset: tiny`` (random
weights, for tests and the demo, which ask for it by name) or, with the vLLM backend, ``vllm.model_source``. Without
any it is off: the source captions are used as they are, and the funnel says so. A random captioner would write
gibberish over every caption of real data.

Two backends run the same prompt (``PROMPT``), the same image bound (``max_pixels``: ``captioner_image`` resizes
every image to the size Qwen2.5-VL's processor would pick, so neither processor resizes again and both vision
towers see the same pixels) and the same greedy decoding, and write the same columns with the same failure records
(``annotation_columns``):

- ``transformers`` (default): ``Captioner``, a Ray Data actor (model loaded once in ``__init__``, batches in
  ``__call__``) running ``generate`` on a batch of images. Prompts are padded on the left: a decoder continues from
  each row's last position, so with right padding every row shorter than the longest (images of other sizes give
  other numbers of image tokens) would continue from pad tokens. Qwen2.5-VL computes its 3-D rope positions from
  the attention mask (and ``mm_token_type_ids``), so a padded batch gives what each row gives alone.
- ``vllm``: Ray Data LLM's vLLM engine processor (``ray.data.llm``), for GPU clusters: a CPU map decodes and
  resizes each image and builds the request, the engine actors generate, and a CPU map parses. Only the engine
  needs the ``vllm`` package and the model folder; no CPU stage loads a tokenizer.

``annotate`` maps the configured backend onto a dataset; ``parse_annotation`` is pure and tested on its own.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import pathlib
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pydantic

from models.config import StrictModel
from pipelines.decode import DecodeConfig, decode_image
from pipelines.pools import PoolConfig, map_stage
from store import columns as C

if TYPE_CHECKING:
    import ray.data
    from ray.data.llm import Processor, vLLMEngineProcessorConfig

logger = logging.getLogger(__name__)

IMAGE_TYPES: tuple[str, ...] = (
    "photo",
    "illustration",
    "painting",
    "3d_render",
    "screenshot",
    "document",
    "poster",
    "chart",
    "text_rendering",
    "other",
)
ANNOTATION_INSTRUCTION = (
    "Annotate this image. Answer with one JSON object and nothing else, with these keys: "
    '"caption": a detailed description in natural prose; transcribe every visible text verbatim in double quotes; '
    f'"image_type": one of {", ".join(IMAGE_TYPES)}; '
    '"image_style": a few words on the visual style; '
    '"watermark_list": a list of the watermark texts or logos overlaid on the image, empty if none; '
    '"abnormal_element": "yes" if the image shows a watermark, QR code, barcode, mosaic or other overlaid artefact, '
    'else "no".'
)
CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
PROMPT = CHAT_TEMPLATE.format(ANNOTATION_INSTRUCTION)
MAX_RAW_CHARS = 4000
# Qwen2.5-VL's image grid: 14-pixel patches merged 2x2, so one image token per 28x28 pixels; at least 56x56 pixels.
IMAGE_FACTOR = 28
MIN_PIXELS = 56 * 56
MAX_SIDE_RATIO = 200  # the processor refuses longer images
# An upper bound of the prompt's text tokens (the chat template and the instruction: 160 with Qwen2's tokenizer).
PROMPT_TEXT_TOKENS = 256


class Annotation(pydantic.BaseModel):
    """The captioner's fields after the rules: types coerced where unambiguous, everything else an error."""

    model_config = pydantic.ConfigDict(extra="ignore")

    caption: str
    image_type: str
    image_style: str = ""
    watermark_list: list[str] = []
    abnormal_element: bool

    @pydantic.field_validator("caption")
    @classmethod
    def _caption_not_empty(cls, value: str) -> str:
        value = value.strip()
        if len(value) < 3:
            raise ValueError("caption is empty")
        return value

    @pydantic.field_validator("image_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        value = value.strip().lower().replace(" ", "_").replace("-", "_")
        if value not in IMAGE_TYPES:
            raise ValueError(f"image_type {value!r} is not one of {IMAGE_TYPES}")
        return value

    @pydantic.field_validator("watermark_list", mode="before")
    @classmethod
    def _list_of_text(cls, value: object) -> list[str]:
        if value is None or value == "" or (isinstance(value, str) and value.strip().lower() in ("none", "no")):
            return []
        if isinstance(value, str):
            return [value.strip()]
        if isinstance(value, list):
            return [str(item).strip() for item in value if str(item).strip()]
        raise ValueError("watermark_list must be a list of strings")

    @pydantic.field_validator("abnormal_element", mode="before")
    @classmethod
    def _yes_no(cls, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
            return value.strip().lower() in ("yes", "true")
        raise ValueError(f"abnormal_element must be yes or no, got {value!r}")

    @pydantic.model_validator(mode="after")
    def _watermark_implies_abnormal(self) -> Annotation:
        # Rule check across fields: a listed watermark is an abnormal element whatever the model said.
        if self.watermark_list:
            self.abnormal_element = True
        return self


def _json_object(text: str) -> dict:
    text = re.sub(r"^```(?:json)?|```$", "", text.strip(), flags=re.MULTILINE).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    value = json.loads(text[start : end + 1])
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    return value


def parse_annotation(text: str) -> tuple[Annotation | None, str]:
    """The captioner's answer -> (annotation, "") or (None, reason). Never raises."""
    try:
        fields = _json_object(text)
    except (ValueError, json.JSONDecodeError) as error:
        return None, f"unparsable:{str(error).split(':')[0][:80]}"
    try:
        return Annotation.model_validate(fields), ""
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "answer"
        return None, f"invalid:{field}:{first['type']}"


def annotation_columns(answers: list[str], failures: list[str | None]) -> dict[str, np.ndarray]:
    """Columns for a batch from the raw answers (``failures[i]`` set when no answer could be produced)."""
    rows: dict[str, list] = {name: [] for name in C.ANNOTATION_COLUMNS}
    for answer, failure in zip(answers, failures, strict=True):
        annotation, reason = (None, failure) if failure else parse_annotation(answer)
        rows[C.ANN_CAPTION].append(annotation.caption if annotation else "")
        rows[C.ANN_IMAGE_TYPE].append(annotation.image_type if annotation else "")
        rows[C.ANN_IMAGE_STYLE].append(annotation.image_style if annotation else "")
        rows[C.ANN_WATERMARKS].append(json.dumps(annotation.watermark_list if annotation else [], ensure_ascii=False))
        rows[C.ANN_ABNORMAL].append(bool(annotation.abnormal_element) if annotation else False)
        rows[C.ANN_ERROR].append(reason)
        rows[C.ANN_RAW].append(answer[:MAX_RAW_CHARS])
    return {name: np.array(values, dtype=bool if name == C.ANN_ABNORMAL else object) for name, values in rows.items()}


def smart_resize(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """The size Qwen2.5-VL's image processor resizes a ``height`` x ``width`` image to: sides multiples of 28,
    between ``MIN_PIXELS`` and ``max_pixels`` pixels, the aspect ratio kept as closely as that allows. The same
    arithmetic as ``transformers``' ``smart_resize`` (tested equal), without importing torch into a CPU map."""
    h_bar = round(height / IMAGE_FACTOR) * IMAGE_FACTOR
    w_bar = round(width / IMAGE_FACTOR) * IMAGE_FACTOR
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(IMAGE_FACTOR, math.floor(height / beta / IMAGE_FACTOR) * IMAGE_FACTOR)
        w_bar = max(IMAGE_FACTOR, math.floor(width / beta / IMAGE_FACTOR) * IMAGE_FACTOR)
    elif h_bar * w_bar < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / IMAGE_FACTOR) * IMAGE_FACTOR
        w_bar = math.ceil(width * beta / IMAGE_FACTOR) * IMAGE_FACTOR
    return h_bar, w_bar


def captioner_image(data: bytes, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """Image bytes -> (the RGB image the captioner sees, None), or (None, ``no_image:<reason>``). Never raises.

    Both backends call this: the image is decoded (at reduced size when much larger) and resized with PIL's bicubic
    filter to the size Qwen2.5-VL's processor would pick (``smart_resize``). That size is a fixed point of
    ``smart_resize``, so neither the transformers processor nor the one inside vLLM resizes again: the two vision
    towers see the same pixels.
    """
    from PIL import Image

    decoded = decode_image(bytes(data), DecodeConfig(analysis_short_side=max(56, int(max_pixels**0.5))))
    if not decoded.ok:
        return None, f"no_image:{decoded.drop_reason}"
    image = decoded.image
    height, width = image.shape[:2]
    if max(height, width) > MAX_SIDE_RATIO * min(height, width):
        return None, f"no_image:aspect_ratio_over_{MAX_SIDE_RATIO}"
    size = smart_resize(height, width, max_pixels)
    if size == (height, width):
        return np.array(image), None  # a writable copy (the decoded image may be a view of decoder memory)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(resized).copy(), None


# Engine arguments the captioner's config decides, and where to set them instead.
_DERIVED_ENGINE_KWARGS = {
    "model": "set annotation.vllm.model_source",
    "tensor_parallel_size": "set annotation.vllm.tensor_parallel_size",
    "max_model_len": "set annotation.vllm.max_model_len",
    "gpu_memory_utilization": "set annotation.vllm.gpu_memory_utilization",
    "limit_mm_per_prompt": "every prompt has one image",
    "mm_processor_kwargs": "set annotation.max_pixels (the image bound of both backends)",
}


class VllmSettings(StrictModel):
    """The vLLM engine of ``backend: vllm`` (Ray Data LLM's ``vLLMEngineProcessorConfig``). The defaults fit
    Qwen2.5-VL-7B-Instruct (bf16, about 16 GB of weights) on one GPU of 24 GB or more: a 4096-token context holds
    the prompt (160 text tokens), the image (at most ``max_pixels / 784`` tokens: 256 at the default) and the
    answer, and keeps vLLM's memory profiling small (one sequence of the full 128k context would not fit beside the
    weights on 24 GB)."""

    # A transformers-layout Qwen2.5-VL folder (config.json, safetensors, tokenizer, preprocessor_config.json), or a
    # remote path Ray Data LLM downloads (s3://, gs://). Default: annotation.weights_dir. Read on the GPU nodes only.
    model_source: str | None = None
    tensor_parallel_size: int = pydantic.Field(default=1, ge=1)  # GPUs per engine replica
    max_model_len: int = pydantic.Field(default=4096, ge=512)
    gpu_memory_utilization: float = pydantic.Field(default=0.9, gt=0, le=1)
    engine_kwargs: dict[str, Any] = {}  # any other vLLM engine argument, e.g. {"enforce_eager": true}
    concurrency: (
        Annotated[int, pydantic.Field(ge=1)]
        | tuple[Annotated[int, pydantic.Field(ge=1)], Annotated[int, pydantic.Field(ge=1)]]
    ) = 1  # engine replicas: n (autoscaling 1..n) or [min, max]
    batch_size: int = pydantic.Field(default=32, ge=1)  # rows per batch of every stage
    max_concurrent_batches: int = pydantic.Field(default=8, ge=1)  # batches in flight per engine replica
    accelerator_type: str | None = None  # Ray's accelerator type of the GPU nodes, e.g. "A10G", "H100"

    @pydantic.model_validator(mode="after")
    def _checks(self) -> VllmSettings:
        if isinstance(self.concurrency, tuple) and self.concurrency[0] > self.concurrency[1]:
            raise ValueError(f"annotation.vllm.concurrency [min, max] has min > max: {list(self.concurrency)}")
        for key, instead in _DERIVED_ENGINE_KWARGS.items():
            if key in self.engine_kwargs:
                raise ValueError(f"annotation.vllm.engine_kwargs.{key} is not yours to set: {instead}")
        return self


class CaptionerConfig(StrictModel):
    """The captioner. ``weights_dir`` holds a Qwen2.5-VL in the transformers layout (``config.json`` +
    safetensors + tokenizer) or a diffusers-layout folder whose ``text_encoder/`` is used (preset ``qwen-image``);
    ``preset: tiny`` without weights is the random tiny model. With neither, annotation is off (``active``).

    ``backend`` picks who generates: ``transformers`` (the ``Captioner`` actor pool sized by ``pool``) or ``vllm``
    (Ray Data LLM on GPU nodes, sized by ``vllm``; needs a transformers-layout folder, ``vllm.model_source`` or
    ``weights_dir``). Prompt, ``max_pixels``, ``max_new_tokens``, ``repetition_penalty`` and the output columns are
    the same for both."""

    enabled: bool = True  # False: never caption, even with weights configured
    backend: Literal["transformers", "vllm"] = "transformers"
    preset: Literal["tiny", "qwen-image"] | None = None
    weights_dir: str | None = None
    max_new_tokens: int = pydantic.Field(default=256, ge=8)
    max_pixels: int = pydantic.Field(default=448 * 448, ge=MIN_PIXELS)  # what the vision tower sees
    # Greedy decoding with the repetition penalty of Qwen2.5-VL-Instruct's published generation config, given to
    # both backends explicitly (neither reads it from the checkpoint).
    repetition_penalty: float = pydantic.Field(default=1.05, ge=1.0)
    pool: PoolConfig = PoolConfig(batch_size=4)  # backend transformers
    vllm: VllmSettings = VllmSettings()  # backend vllm
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _qwen_image_needs_weights(self) -> CaptionerConfig:
        if self.preset == "qwen-image" and self.weights_dir is None:
            raise ValueError("annotation.preset qwen-image needs annotation.weights_dir (a local folder)")
        return self

    @pydantic.model_validator(mode="after")
    def _vllm_can_run(self) -> CaptionerConfig:
        if self.backend != "vllm" or not self.enabled:
            return self
        if self.vllm.model_source is None:
            if self.preset == "tiny" and self.weights_dir is None:
                raise ValueError(
                    "annotation.backend vllm cannot run preset tiny (random weights built in memory, no folder): "
                    "set annotation.vllm.model_source, or use annotation.backend transformers"
                )
            if self.preset == "qwen-image":
                raise ValueError(
                    "annotation.backend vllm needs a transformers-layout Qwen2.5-VL folder; annotation.weights_dir is "
                    "a diffusers folder (preset qwen-image) whose text_encoder/ has no tokenizer or processor config: "
                    "set annotation.vllm.model_source"
                )
            if self.weights_dir is None:
                raise ValueError(
                    "annotation.backend vllm needs a model: set annotation.vllm.model_source (or "
                    "annotation.weights_dir) to a transformers-layout Qwen2.5-VL folder on the GPU nodes"
                )
        needed = self.max_pixels // (IMAGE_FACTOR * IMAGE_FACTOR) + PROMPT_TEXT_TOKENS + self.max_new_tokens
        if needed > self.vllm.max_model_len:
            raise ValueError(
                f"annotation.vllm.max_model_len {self.vllm.max_model_len} cannot hold a request: up to "
                f"{self.max_pixels // (IMAGE_FACTOR * IMAGE_FACTOR)} image tokens (max_pixels {self.max_pixels}), "
                f"{PROMPT_TEXT_TOKENS} prompt tokens and {self.max_new_tokens} new tokens need {needed}"
            )
        return self

    @property
    def model_source(self) -> str | None:
        """The folder (or remote path) the vLLM engine loads: ``vllm.model_source``, else ``weights_dir``."""
        return self.vllm.model_source or self.weights_dir

    @property
    def active(self) -> bool:
        """Whether the captioner runs: enabled, and weights chosen (``weights_dir``, the tiny preset by name, or the
        vLLM backend's model source)."""
        chosen = self.weights_dir is not None or self.preset is not None
        return self.enabled and (chosen or (self.backend == "vllm" and self.vllm.model_source is not None))

    def disabled_note(self) -> str | None:
        """Why the captioner does not run, for the log and the funnel; None when it does."""
        if self.active:
            return None
        if not self.enabled:
            return "annotation.enabled is false: no captioner ran; the source captions are used as they are"
        return (
            "no captioner weights configured (annotation.weights_dir): no captioner ran; the source captions are "
            "used as they are"
        )


def _end_after_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """The generated tokens up to and including the first end-of-sequence token: a finished row of a batch is
    padded after it, a row generated alone is not."""
    for position, token in enumerate(tokens):
        if token in eos:
            return tokens[: position + 1]
    return tokens


class Captioner:
    """Ray Data actor (backend ``transformers``): image bytes -> annotation columns. Greedy decoding, so reruns
    give the same annotation, and a batch gives what each image gives alone."""

    # The stage's contract (pipelines.contracts), the vLLM backend's too.
    READS: tuple[str, ...] = (C.SAMPLE_ID, C.IMAGE_BYTES)
    WRITES: tuple[str, ...] = C.ANNOTATION_COLUMNS

    def __init__(self, config: CaptionerConfig):
        # The model stack is imported here, in the actor: the module's configs are read by every curation driver.
        import torch
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from models.condition_encoder import build_vl_processor
        from models.presets import build_components

        self.config = config
        device = "cuda" if config.pool.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if config.weights_dir is not None and (pathlib.Path(config.weights_dir) / "config.json").is_file():
            # A plain transformers checkpoint such as Qwen2.5-VL-7B-Instruct.
            local = {"local_files_only": True}
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(config.weights_dir, dtype=dtype, **local)
            self.model.to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(config.weights_dir, **local)
        else:
            components = build_components(
                config.preset or "qwen-image",
                weights_dir=config.weights_dir,
                parts=("text_encoder", "tokenizer"),
                device=device,
                dtype=dtype,
                seed=config.seed,
            )
            self.model, self.tokenizer = components.text_encoder, components.tokenizer
        self.processor = build_vl_processor(self.tokenizer, max_pixels=config.max_pixels)
        probe = self.processor(text=[PROMPT], images=[np.zeros((56, 56, 3), np.uint8)], return_tensors="pt")
        if "mm_token_type_ids" not in probe:
            # Qwen2.5-VL computes its 3-D rope positions (image tokens by row and column, pad tokens skipped through
            # the attention mask) only with them; without them every token silently gets a 1-D position.
            raise RuntimeError(
                "the Qwen2.5-VL processor returns no mm_token_type_ids: the 3-D rope positions need them"
            )
        # The tokens generate stops at (its generation config's, else the tokenizer's end-of-sequence token).
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_token_ids = {int(token) for token in (eos if isinstance(eos, list) else [eos])}

    def generate(self, images: list[np.ndarray]) -> list[str]:
        """One answer per image (greedy)."""
        return self.tokenizer.batch_decode(self.generate_token_ids(images), skip_special_tokens=True)

    def generate_token_ids(self, images: list[np.ndarray]) -> list[list[int]]:
        """The generated token ids per image, up to and including the end-of-sequence token (greedy)."""
        import torch

        with torch.no_grad():
            return self._generate(images)

    def _generate(self, images: list[np.ndarray]) -> list[list[int]]:
        # Left padding for this call only: the tokenizer object is shared with the condition encoder.
        inputs = self.processor(
            text=[PROMPT] * len(images), images=images, padding=True, padding_side="left", return_tensors="pt"
        ).to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            repetition_penalty=self.config.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        # Every row ends at the same column after left padding: the new tokens start there in each row.
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [_end_after_eos(tokens, self.eos_token_ids) for tokens in new_tokens]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[C.SAMPLE_ID])
        answers, failures = [""] * count, [None] * count
        images, rows = [], []
        for row, data in enumerate(batch[C.IMAGE_BYTES]):
            image, failure = captioner_image(data, self.config.max_pixels)
            if image is None:
                failures[row] = failure
            else:
                images.append(image)
                rows.append(row)
        if images:
            try:
                for row, answer in zip(rows, self.generate(images), strict=True):
                    answers[row] = answer
            except (RuntimeError, ValueError) as error:  # a bad batch is recorded, not fatal to the pool
                for row in rows:
                    failures[row] = f"captioner_error:{type(error).__name__}"
        return {**batch, **annotation_columns(answers, failures)}


# Backend vllm: ``pack_rows`` (a CPU map) -> Ray Data LLM's processor: preprocess (a CPU map) -> the vLLM engine
# stage -> postprocess (a CPU map) -> ``vllm_annotation_columns`` (a CPU map).
#
# The processor nests each row under its data column, and the stages add keys to it. A nested column of values
# that Arrow cannot hold (our PIL images) is pickled, one that it can is converted to a struct, where a float32
# vector becomes a list and comes back float64: which happens depends on the rows of the block. So the rows travel
# packed, one Arrow IPC record each (``ROW_KEY``), and come out with their exact types.
#
# A row whose ``__inference_error__`` is set skips every later stage and the postprocess (it comes out with every
# key it has). The preprocess sets it for an image that cannot be decoded, the engine for a row whose generation
# failed (``should_continue_on_error``); the last map turns both into failure records.
ROW_KEY = "__annotation_row"
ENGINE_ERROR_KEY = "__inference_error__"
ENGINE_STAGE = "vLLMEngineStage"
VLLM_MISSING = (
    "annotation.backend vllm needs the `vllm` package on the GPU nodes that run the engine, and it is not "
    "importable here: install it into the GPU nodes' image (`pip install vllm`, a release that supports "
    "Ray {ray} and torch {torch})"
)


def vllm_importable() -> bool:
    """Whether this process can import vLLM (the engine actors need it; no other stage does)."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """Raise a plain ``ImportError`` when vLLM is not importable in this process."""
    if not vllm_importable():
        import ray
        import torch

        raise ImportError(VLLM_MISSING.format(ray=ray.__version__, torch=torch.__version__.split("+")[0]))


def pack_rows(batch: pa.Table) -> pa.Table:
    """Each row as one Arrow IPC stream (schema and values), in the single column ``ROW_KEY``."""
    packed = []
    for row in batch.to_batches(max_chunksize=1) if batch.num_rows else []:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(row)
        packed.append(sink.getvalue().to_pybytes())
    return pa.table({ROW_KEY: pa.array(packed, type=pa.binary())})


def unpack_rows(packed: list[bytes]) -> pa.Table:
    """The rows ``pack_rows`` packed, as one table (schemas of different blocks unified: a null column takes the
    type another block has)."""
    tables = [pa.ipc.open_stream(data).read_all() for data in packed]
    return pa.concat_tables(tables, promote_options="default")


class VllmRequest:
    """Preprocess of the vLLM processor (one packed row -> the keys the engine reads): the image as the
    transformers backend sees it, the same prompt, greedy sampling. An image that cannot be decoded (or a row
    without one) becomes a failure record."""

    def __init__(self, config: CaptionerConfig):
        self.max_pixels = config.max_pixels
        self.sampling_params = {
            "temperature": 0.0,
            "max_tokens": config.max_new_tokens,
            "repetition_penalty": config.repetition_penalty,
        }

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        data = pa.ipc.open_stream(row[ROW_KEY]).read_all().column(C.IMAGE_BYTES)[0].as_py()
        image, failure = captioner_image(data or b"", self.max_pixels)
        if image is None:
            return {ENGINE_ERROR_KEY: failure}
        return {
            "prompt": PROMPT,  # Qwen2.5-VL's chat template with one <|image_pad|>, which vLLM expands
            "multimodal_data": {"image": Image.fromarray(image)},
            "sampling_params": dict(self.sampling_params),
        }


def vllm_answer(row: dict[str, Any]) -> dict[str, Any]:
    """Postprocess of the vLLM processor: the packed row and the answer (the image and the request go)."""
    return {ROW_KEY: row[ROW_KEY], "generated_text": row["generated_text"]}


def vllm_annotation_columns(batch: pa.Table) -> pa.Table:
    """The processor's output -> the input rows, unchanged, plus ``C.ANNOTATION_COLUMNS``."""
    texts = batch.column("generated_text").to_pylist() if "generated_text" in batch.column_names else None
    errors = batch.column(ENGINE_ERROR_KEY).to_pylist() if ENGINE_ERROR_KEY in batch.column_names else None
    answers: list[str] = []
    failures: list[str | None] = []
    for row in range(batch.num_rows):
        text = texts[row] if texts else None
        error = (errors[row] if errors else None) or ""
        if error and not error.startswith("no_image:"):
            error = f"captioner_error:{error.split(':')[0][:80]}"  # Ray Data LLM writes "<ExceptionType>: <message>"
        answers.append("" if error or text is None else text)
        failures.append(error or None)
    table = unpack_rows(batch.column(ROW_KEY).to_pylist())
    for name, values in annotation_columns(answers, failures).items():
        table = table.append_column(
            name, pa.array(values.tolist(), type=pa.bool_() if name == C.ANN_ABNORMAL else None)
        )
    return table


def vllm_processor_config(config: CaptionerConfig) -> vLLMEngineProcessorConfig:
    """Ray Data LLM's processor config for ``config``: no chat-template, tokenize or detokenize stage (the prompt
    is the template already, vLLM tokenizes it and returns text), per-row engine errors recorded."""
    from ray.data.llm import vLLMEngineProcessorConfig

    settings = config.vllm
    engine_kwargs = {
        "tensor_parallel_size": settings.tensor_parallel_size,
        "max_model_len": settings.max_model_len,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "limit_mm_per_prompt": {"image": 1},
        # Images arrive resized already; the bound keeps vLLM's memory profiling to images this size.
        "mm_processor_kwargs": {"min_pixels": MIN_PIXELS, "max_pixels": config.max_pixels},
        **settings.engine_kwargs,
    }
    return vLLMEngineProcessorConfig(
        model_source=config.model_source,
        engine_kwargs=engine_kwargs,
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        max_concurrent_batches=settings.max_concurrent_batches,
        accelerator_type=settings.accelerator_type,
        should_continue_on_error=True,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        prepare_multimodal_stage=False,
    )


def _checked_engine_udf() -> type:
    """Ray Data LLM's engine UDF, checking first that vLLM is importable on the node that runs it (the GPU node),
    so that a node without it fails with ``VLLM_MISSING``."""
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineStageUDF

    class CaptionerEngineUDF(vLLMEngineStageUDF):
        def __init__(self, *args: Any, **kwargs: Any):
            require_vllm()
            super().__init__(*args, **kwargs)

    return CaptionerEngineUDF


def build_vllm_processor(config: CaptionerConfig) -> Processor:
    """The Ray Data LLM processor of backend ``vllm`` (lazy: nothing runs until a dataset goes through it)."""
    from ray.data.llm import build_processor

    if not vllm_importable():
        logger.info("annotation: vllm is not importable in this driver; only the engine's GPU nodes need it")
    processor = build_processor(vllm_processor_config(config), preprocess=VllmRequest(config), postprocess=vllm_answer)
    processor.get_stage_by_name(ENGINE_STAGE).fn = _checked_engine_udf()
    return processor


def annotate_with_processor(dataset: ray.data.Dataset, processor: Processor) -> ray.data.Dataset:
    """``dataset`` through a vLLM processor of ``build_vllm_processor``: rows packed, annotated, unpacked."""
    packed = dataset.map_batches(pack_rows, batch_format="pyarrow")
    return processor(packed).map_batches(vllm_annotation_columns, batch_format="pyarrow")


def annotate(dataset: ray.data.Dataset, config: CaptionerConfig) -> ray.data.Dataset:
    """The annotation stage on the configured backend: every row once, its columns unchanged, plus
    ``C.ANNOTATION_COLUMNS``."""
    if config.backend == "vllm":
        return annotate_with_processor(dataset, build_vllm_processor(config))
    return map_stage(dataset, Captioner, config.pool, config=config)
