"""Structured annotation: one Qwen2.5-VL pass per image returns a caption plus typed fields (docs/qwen_image.md §2).

The captioner is asked for one JSON object with ``caption`` (natural prose, visible text transcribed verbatim in
quotes), ``image_type``, ``image_style``, ``watermark_list`` and ``abnormal_element`` (yes / no). Its answer is
parsed and checked by rules; an answer that does not parse or breaks a rule is recorded as a failed annotation with
its reason (``annotation_error``), the raw caption of the source is kept, and nothing raises.

The captioner runs only with weights a person chose: ``weights_dir`` (real weights), or ``preset: tiny`` (random
weights, for tests and the demo, which ask for it by name). Without either it is off: the source captions are used
as they are, and the funnel says so. A random captioner would write gibberish over every caption of real data.

``Captioner`` is a Ray Data actor (model loaded once in ``__init__``, batches in ``__call__``); ``parse_annotation``
is pure and tested on its own.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Literal

import numpy as np
import pydantic

from models.config import StrictModel
from pipelines import schema
from pipelines.decode import DecodeConfig, decode_image
from pipelines.pools import PoolConfig

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
MAX_RAW_CHARS = 4000

# Output columns.
ANN_CAPTION = "ann_caption"
ANN_IMAGE_TYPE = "ann_image_type"
ANN_IMAGE_STYLE = "ann_image_style"
ANN_WATERMARKS = "ann_watermark_list"
ANN_ABNORMAL = "ann_abnormal_element"
ANN_ERROR = "annotation_error"
ANN_RAW = "annotation_raw"
ANNOTATION_COLUMNS = (ANN_CAPTION, ANN_IMAGE_TYPE, ANN_IMAGE_STYLE, ANN_WATERMARKS, ANN_ABNORMAL, ANN_ERROR, ANN_RAW)


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
    rows: dict[str, list] = {name: [] for name in ANNOTATION_COLUMNS}
    for answer, failure in zip(answers, failures, strict=True):
        annotation, reason = (None, failure) if failure else parse_annotation(answer)
        rows[ANN_CAPTION].append(annotation.caption if annotation else "")
        rows[ANN_IMAGE_TYPE].append(annotation.image_type if annotation else "")
        rows[ANN_IMAGE_STYLE].append(annotation.image_style if annotation else "")
        rows[ANN_WATERMARKS].append(json.dumps(annotation.watermark_list if annotation else [], ensure_ascii=False))
        rows[ANN_ABNORMAL].append(bool(annotation.abnormal_element) if annotation else False)
        rows[ANN_ERROR].append(reason)
        rows[ANN_RAW].append(answer[:MAX_RAW_CHARS])
    return {name: np.array(values, dtype=bool if name == ANN_ABNORMAL else object) for name, values in rows.items()}


class CaptionerConfig(StrictModel):
    """The captioner actor pool. ``weights_dir`` holds a Qwen2.5-VL in the transformers layout (``config.json`` +
    safetensors + tokenizer) or a diffusers-layout folder whose ``text_encoder/`` is used (preset ``qwen-image``);
    ``preset: tiny`` without weights is the random tiny model. With neither, annotation is off (``active``)."""

    enabled: bool = True  # False: never caption, even with weights configured
    preset: Literal["tiny", "qwen-image"] | None = None
    weights_dir: str | None = None
    max_new_tokens: int = pydantic.Field(default=256, ge=8)
    max_pixels: int = pydantic.Field(default=448 * 448, ge=56 * 56)  # what the vision tower sees
    pool: PoolConfig = PoolConfig(batch_size=4)
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _qwen_image_needs_weights(self) -> CaptionerConfig:
        if self.preset == "qwen-image" and self.weights_dir is None:
            raise ValueError("annotation.preset qwen-image needs annotation.weights_dir (a local folder)")
        return self

    @property
    def active(self) -> bool:
        """Whether the captioner runs: enabled, and weights chosen (``weights_dir``, or the tiny preset by name)."""
        return self.enabled and (self.weights_dir is not None or self.preset is not None)

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


class Captioner:
    """Ray Data actor: image bytes -> annotation columns. Greedy decoding, so reruns give the same annotation."""

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
        self.decode_config = DecodeConfig(analysis_short_side=max(56, int(config.max_pixels**0.5)))

    def generate(self, images: list[np.ndarray]) -> list[str]:
        """One answer per image (greedy)."""
        import torch

        with torch.no_grad():
            return self._generate(images)

    def _generate(self, images: list[np.ndarray]) -> list[str]:
        inputs = self.processor(
            text=[CHAT_TEMPLATE.format(ANNOTATION_INSTRUCTION)] * len(images),
            images=images,
            padding=True,
            return_tensors="pt",
        ).to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[schema.SAMPLE_ID])
        answers, failures = [""] * count, [None] * count
        images, rows = [], []
        for row, data in enumerate(batch[schema.IMAGE_BYTES]):
            decoded = decode_image(bytes(data), self.decode_config)
            if decoded.ok:
                images.append(np.array(decoded.image))  # writable copy for torch.from_numpy
                rows.append(row)
            else:
                failures[row] = f"no_image:{decoded.drop_reason}"
        if images:
            try:
                for row, answer in zip(rows, self.generate(images), strict=True):
                    answers[row] = answer
            except (RuntimeError, ValueError) as error:  # a bad batch is recorded, not fatal to the pool
                for row in rows:
                    failures[row] = f"captioner_error:{type(error).__name__}"
        return {**batch, **annotation_columns(answers, failures)}
