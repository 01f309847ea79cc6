"""Encoding kept samples for the latent store: resolution buckets, VAE latents, condition-encoder hidden states.

Three pools, so each scales on its own (the condition encoder is the 7B model, the VAE far smaller, and decoding is
CPU work that should not hold a GPU):

- ``PreparePixels`` (CPU pool, no model): decode the image at full size (EXIF applied), pick the aspect-ratio bucket
  nearest to the source, and for each training resolution resize to cover the bucket's size and centre-crop; a
  source that would need more than ``max_upscale`` enlargement gets no crop there (a null in the store). A decode
  failure is recorded in ``encode_error`` (``decode:<reason>``, ``decode_source_image:<reason>``), never raised. The
  image bytes are dropped here: what leaves is uint8 pixels.
- ``VaeEncodeStage`` (VAE pool, a GPU at scale): encodes the prepared crops with one VAE call per distinct
  (height, width) in its batch, across buckets, resolutions and edit sources alike, so a GPU never waits on a JPEG
  decoder and its calls are as full as the batch allows.
- ``TextEncodeStage``: choose the caption kind per sample (raw / recaption / fused, by configured weights,
  deterministic in ``sample_id``), encode the batch, keep the hidden states after the drop unpadded.

How pixels travel between the pools: each crop is a plain Arrow ``binary`` value holding its uint8 ``[H, W, 3]`` bytes
in C order (``pixels_<res>``, ``source_pixels_<res>``), its shape in the store's own ``height_<res>`` /
``width_<res>`` columns, ``b""`` and -1 where there is none. Ray Data's tensor extension types were the other
candidate and are fragile exactly where this data is irregular: a column of arrays with a missing value falls back to
pickled Python objects, and blocks whose column is a tensor in one and pickled or all-null in another fail to
concatenate. Binary values have none of that, and ``pixels`` turns one back into an array without copying. The price
of shipping pixels rather than compressed bytes is object-store traffic (about 5 MB per 1328 px crop); it buys a VAE
actor that only encodes.

Rows reach the VAE stage grouped by shape where that is free: ``PreparePixels(group_by_shape=True)`` (what
``pipelines.produce`` uses) orders the rows of each of its batches by their crop shapes, so the VAE batches cut from
one prepared block are mostly one shape when the prepare batch is a few times the VAE batch. A dataset-wide sort would
group fully, but it is an all-to-all barrier: nothing would be stored, or streamed to training, until every sample
was decoded.

The two encoders store half precision (float16) and drop what the store does not keep (pixels).

Edit triplets (``task`` other than ``t2i``): the input image is cropped to the target's bucket size at each
resolution and encoded into ``source_latents_<res>`` in the same VAE calls as targets of that shape; the text stage
encodes the instruction (never a recaption) with the edit template and the input image through the vision tower,
resized to ``edit_vision_area`` pixels by ``PreparePixels`` (``vision_pixels``; the serving config must use the same
area).

Multi-image edits (``edit_plus``): every reference n >= 2 (``source_image_bytes_<n>``) is decoded and cropped like
the first (``source_pixels_<n>_<res>``; a failure is ``decode_source_image_<n>:<reason>``), counts for the smallest
image a resolution may enlarge, and is encoded in the same VAE calls (``reference_latents_<n>_<res>``, gathered by
``pipelines.produce.to_store_table`` into the store's ``extra_source_latents_<res>`` list). Every reference is
also sized for the vision tower (``vision_pixels_<n>``), and the text stage encodes an ``edit_plus`` row with the
Edit-Plus template (``models.condition_encoder.EDIT_PLUS_TEMPLATE``: "Picture 1: <image>Picture 2: <image>..." before
the instruction), as ``QwenImageEditPlusPipeline`` does; the store's header records that template too.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import pydantic

from models.config import StrictModel
from pipelines.decode import DecodeConfig, decode_image
from pipelines.pools import PoolConfig
from store import columns as C
from store.buckets import RESOLUTIONS, bucket_size, nearest_bucket, upscale_factor
from store.header import DEFAULT_EDIT_VISION_AREA

if TYPE_CHECKING:
    import torch
    from PIL import Image

# The caption columns by the kind of caption they hold (``caption_kind`` in the store).
CAPTION_BY_KIND = {"raw": C.CAPTION_RAW, "recaption": C.CAPTION_RECAPTION, "fused": C.CAPTION_FUSED}


def pixels_column(resolution: int) -> str:
    """``pixels_<res>``: the target cropped to its bucket's size at ``res``, uint8 [H, W, 3] bytes; ``b""`` if none."""
    return f"pixels_{resolution}"


def source_pixels_column(resolution: int, index: int = 1) -> str:
    """``source_pixels_<res>``: an edit triplet's input image cropped like its target; ``b""`` on other rows.
    Reference ``index`` >= 2 of a multi-image edit: ``source_pixels_<index>_<res>``."""
    return f"source_pixels_{resolution}" if index == 1 else f"source_pixels_{index}_{resolution}"


def reference_latents_column(resolution: int, index: int) -> str:
    """``reference_latents_<index>_<res>``: reference ``index`` >= 2 of a multi-image edit, encoded like
    ``source_latents_<res>``; None where the row has no such reference (gathered into the store's list column)."""
    return f"reference_latents_{index}_{resolution}"


EXTRA_REFERENCES: tuple[int, ...] = tuple(range(2, C.MAX_SOURCE_IMAGES + 1))


class EncodeConfig(StrictModel):
    store_dir: str | None = None  # None: curate only, encode nothing
    preset: str = "tiny"
    weights_dir: str | None = None
    resolutions: list[int] = list(RESOLUTIONS)
    max_upscale: float = pydantic.Field(default=1.0, ge=1.0)  # 1.0: never enlarge a source
    min_stage: int = pydantic.Field(default=1, ge=0, le=7)  # encode samples that pass at least this stage
    caption_weights: dict[str, float] = {"raw": 0.2, "recaption": 0.3, "fused": 0.5}
    max_pixels: int = pydantic.Field(default=4096 * 4096, gt=0)
    # Decoding, bucketing and cropping on CPUs (PreparePixels). Its batches are a few VAE batches, so that ordering
    # each by crop shape hands the VAE stage batches that are mostly one shape.
    prepare_pool: PoolConfig = PoolConfig(batch_size=32)
    vae_pool: PoolConfig = PoolConfig(batch_size=8)
    # "2d": the VAE's causal 3D convolutions run as the 2D ones they reduce to for an image (one frame): a third of the
    # work, latents equal to diffusers' to float rounding. "3d": diffusers' computation, bit for bit (models/vae.py).
    vae_frame_convs: Literal["2d", "3d"] = "2d"
    text_pool: PoolConfig = PoolConfig(batch_size=16)
    rows_per_shard: int = pydantic.Field(default=1000, ge=1)
    seed: int = 0
    # Edit triplets: the area (pixels) at which the vision tower sees the input image. 384x384 gives about 190
    # image tokens per sample. The store's header records it, a model trained on the store its checkpoint's
    # metadata, and serving takes it from there (ServeSettings.edit.vision_area).
    edit_vision_area: int = pydantic.Field(default=DEFAULT_EDIT_VISION_AREA, ge=28 * 28)

    @pydantic.field_validator("resolutions")
    @classmethod
    def _multiples_of_16(cls, values: list[int]) -> list[int]:
        if not values or any(value <= 0 or value % 16 for value in values):
            raise ValueError(f"resolutions must be positive multiples of 16, got {values}")
        return sorted(set(values))

    @pydantic.field_validator("caption_weights")
    @classmethod
    def _known_kinds(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(CAPTION_BY_KIND)
        if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"caption_weights takes non-negative weights over {sorted(CAPTION_BY_KIND)}, got {weights}"
            )
        return weights

    def device(self, pool: PoolConfig) -> tuple[str, torch.dtype]:
        import torch

        if pool.num_gpus > 0 and torch.cuda.is_available():
            return "cuda", torch.bfloat16
        return "cpu", torch.float32


def store_header(config: EncodeConfig) -> dict:
    """What rows encoded with ``config`` depend on (``store.header``): the encoder's preset and weights,
    the VAE's latent normalisation, the resolutions, the prompt templates and the edit vision area."""
    import pathlib

    from models.condition_encoder import ENCODER_TEMPLATES
    from models.presets import nano_vae_folder, vae_config
    from store.header import weights_fingerprint

    vae = vae_config(config.preset, config.weights_dir)
    if config.weights_dir:
        folder = pathlib.Path(config.weights_dir)
        weights = weights_fingerprint([folder / "vae", folder / "text_encoder"])
    elif config.preset == "nano":
        weights = f"nano VAE {weights_fingerprint([nano_vae_folder()])}, seeded text encoder"
    else:
        weights = f"{config.preset}: seeded random weights"
    return {
        "encoder_preset": config.preset,
        "encoder_weights": weights,
        "latents_mean": list(vae["latents_mean"]),
        "latents_std": list(vae["latents_std"]),
        "resolutions": list(config.resolutions),
        "prompt_templates": {
            name: {"drop": template.drop, "text": hashlib.blake2b(template.text.encode(), digest_size=8).hexdigest()}
            for name, template in sorted(ENCODER_TEMPLATES.items())
        },
        "edit_vision_area": config.edit_vision_area,
    }


def cover_and_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize ``image`` (RGB uint8) to cover ``width`` x ``height`` and crop the centre."""
    source_h, source_w = image.shape[:2]
    scale = max(width / source_w, height / source_h)
    resized_w, resized_h = max(width, round(source_w * scale)), max(height, round(source_h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
    top, left = (resized_h - height) // 2, (resized_w - width) // 2
    return resized[top : top + height, left : left + width]


def _unit_hash(sample_id: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def choose_caption(
    sample_id: str, captions: dict[str, str], weights: dict[str, float], seed: int = 0
) -> tuple[str, str]:
    """(kind, caption): a weighted draw over the kinds this sample has, the same for a sample on every run."""
    available = [(kind, weight) for kind, weight in weights.items() if weight > 0 and captions.get(kind, "").strip()]
    if not available:
        return "raw", captions.get("raw", "")
    total = sum(weight for _, weight in available)
    point, cumulative = _unit_hash(sample_id, seed) * total, 0.0
    for kind, weight in available:
        cumulative += weight
        if point < cumulative:
            return kind, captions[kind]
    return available[-1][0], captions[available[-1][0]]


def pixels_bytes(image: np.ndarray) -> bytes:
    """A uint8 ``[H, W, 3]`` image as it travels between pools: its bytes in C order (the shape travels beside it)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image).tobytes()


def pixels(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of ``pixels_bytes``: a read-only uint8 ``[height, width, 3]`` view of ``data`` (no copy)."""
    array = np.frombuffer(data, dtype=np.uint8)
    if height <= 0 or width <= 0 or array.size != height * width * 3:
        raise ValueError(f"{array.size} bytes are not a {height}x{width} RGB image")
    return array.reshape(height, width, 3)


def _present(value: object) -> bytes | None:
    """Non-empty bytes, else None: a column Ray Data saw only nulls in arrives as float NaN, not None."""
    if isinstance(value, bytes | bytearray | memoryview) and len(value):
        return bytes(value)
    return None


class PreparePixels:
    """Ray Data stage on the CPU pool: image bytes -> bucket and uint8 crops per resolution (module docstring).

    A light actor (no model) so that its pool is sized and placed like the others (``EncodeConfig.prepare_pool``).
    Output: the input columns less the image bytes, plus ``bucket``, ``encode_error``, ``height_<res>`` /
    ``width_<res>`` (-1 where there is no crop), ``pixels_<res>``, ``source_pixels_<res>`` and, for edit rows,
    ``vision_pixels`` / ``vision_height`` / ``vision_width``.
    """

    def __init__(self, config: EncodeConfig, group_by_shape: bool = False):
        self.config = config
        self.group_by_shape = group_by_shape
        self.decode_config = DecodeConfig(analysis_short_side=1 << 20, max_pixels=config.max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[C.SAMPLE_ID])
        resolutions = self.config.resolutions
        raw = (C.IMAGE_BYTES, C.SOURCE_IMAGE_BYTES, *C.EXTRA_SOURCE_IMAGE_COLUMNS)
        out = {key: value for key, value in batch.items() if key not in raw}
        buckets = np.full(count, "", dtype=object)
        errors = np.array(batch.get(C.ENCODE_ERROR, np.full(count, "", dtype=object)), dtype=object)
        crops = {r: np.full(count, b"", dtype=object) for r in resolutions}
        source_crops = {r: np.full(count, b"", dtype=object) for r in resolutions}
        extra_crops = {(r, n): np.full(count, b"", dtype=object) for r in resolutions for n in EXTRA_REFERENCES}
        heights = {r: np.full(count, -1, dtype=np.int64) for r in resolutions}
        widths = {r: np.full(count, -1, dtype=np.int64) for r in resolutions}
        vision = {n: np.full(count, b"", dtype=object) for n in (1, *EXTRA_REFERENCES)}
        vision_heights = {n: np.full(count, -1, dtype=np.int64) for n in (1, *EXTRA_REFERENCES)}
        vision_widths = {n: np.full(count, -1, dtype=np.int64) for n in (1, *EXTRA_REFERENCES)}
        tasks = batch.get(C.TASK, np.full(count, C.T2I, dtype=object))
        sources = batch.get(C.SOURCE_IMAGE_BYTES, np.full(count, b"", dtype=object))
        for row in range(count):
            if errors[row]:
                continue
            decoded = decode_image(_present(batch[C.IMAGE_BYTES][row]) or b"", self.decode_config)
            if not decoded.ok:
                errors[row] = f"decode:{decoded.drop_reason}"
                continue
            image, source, source_data = decoded.image, None, _present(sources[row])
            if source_data is not None:
                decoded_source = decode_image(source_data, self.decode_config)
                if not decoded_source.ok:
                    errors[row] = f"decode_source_image:{decoded_source.drop_reason}"
                    continue
                source = decoded_source.image
            extras, error = self._decode_references(batch, row)
            if error:
                errors[row] = error
                continue
            bucket = nearest_bucket(image.shape[1], image.shape[0])
            buckets[row] = bucket
            everything = [image] + ([] if source is None else [source]) + list(extras.values())
            smallest = min(everything, key=lambda a: a.shape[0] * a.shape[1])
            for resolution in resolutions:
                width, height = bucket_size(bucket, resolution)
                if upscale_factor(smallest.shape[1], smallest.shape[0], (width, height)) > self.config.max_upscale:
                    continue  # too small for this resolution: null there
                heights[resolution][row], widths[resolution][row] = height, width
                crops[resolution][row] = pixels_bytes(cover_and_crop(image, width, height))
                if source is not None:
                    source_crops[resolution][row] = pixels_bytes(cover_and_crop(source, width, height))
                for index, reference in extras.items():
                    extra_crops[resolution, index][row] = pixels_bytes(cover_and_crop(reference, width, height))
            if source is not None and tasks[row] != C.T2I:
                for index, reference in {1: source, **extras}.items():
                    seen = self.vision_image(reference)
                    vision[index][row] = pixels_bytes(seen)
                    vision_heights[index][row], vision_widths[index][row] = seen.shape[:2]
        out[C.BUCKET], out[C.ENCODE_ERROR] = buckets, errors
        for resolution in resolutions:
            out[C.height_column(resolution)], out[C.width_column(resolution)] = heights[resolution], widths[resolution]
            out[pixels_column(resolution)] = crops[resolution]
            out[source_pixels_column(resolution)] = source_crops[resolution]
            for index in EXTRA_REFERENCES:
                out[source_pixels_column(resolution, index)] = extra_crops[resolution, index]
        for index in (1, *EXTRA_REFERENCES):
            out[C.vision_column(C.VISION_PIXELS, index)] = vision[index]
            out[C.vision_column(C.VISION_HEIGHT, index)] = vision_heights[index]
            out[C.vision_column(C.VISION_WIDTH, index)] = vision_widths[index]
        if self.group_by_shape:
            keys = [tuple((heights[r][row], widths[r][row]) for r in resolutions) for row in range(count)]
            order = np.array(sorted(range(count), key=keys.__getitem__), dtype=np.int64)  # stable: ties keep order
            out = {key: np.asarray(value)[order] for key, value in out.items()}
        return out

    def _decode_references(self, batch: dict[str, np.ndarray], row: int) -> tuple[dict[int, np.ndarray], str]:
        """References 2..n of a multi-image edit row, decoded (``{index: pixels}``), or the first one's error."""
        extras = {}
        for index in EXTRA_REFERENCES:
            column = C.source_image_bytes_column(index)
            data = _present(batch[column][row]) if column in batch else None
            if data is None:
                continue
            decoded = decode_image(data, self.decode_config)
            if not decoded.ok:
                return {}, f"decode_source_image_{index}:{decoded.drop_reason}"
            extras[index] = decoded.image
        return extras, ""

    def vision_image(self, source: np.ndarray) -> np.ndarray:
        """The input image of a triplet as the vision tower sees it: ``edit_vision_area`` pixels, aspect kept."""
        from PIL import Image

        from models.generation import edit_source_size, resize_lanczos

        image = Image.fromarray(np.ascontiguousarray(source))
        seen = resize_lanczos(image, *edit_source_size(self.config.edit_vision_area, *image.size))
        return np.asarray(seen.convert("RGB"))


def shape_groups(batch: dict[str, np.ndarray], resolutions: list[int]) -> dict[tuple[int, int], list[tuple]]:
    """``(height, width) -> [(row, resolution, reference), ...]``: every crop of a prepared batch by shape, the VAE
    calls ``VaeEncodeStage`` makes (one per key). ``reference`` is 0 for the target, n for input image n (so it reads
    as "is a source" too). Rows with an ``encode_error`` have none."""
    count = len(batch[C.SAMPLE_ID])
    errors = batch.get(C.ENCODE_ERROR, np.full(count, "", dtype=object))
    groups: dict[tuple[int, int], list[tuple]] = {}
    for row in range(count):
        if errors[row]:
            continue
        for resolution in resolutions:
            height, width = int(batch[C.height_column(resolution)][row]), int(batch[C.width_column(resolution)][row])
            if height < 0:
                continue
            group = groups.setdefault((height, width), [])
            group.append((row, resolution, False))
            if _present(batch[source_pixels_column(resolution)][row]) is not None:
                group.append((row, resolution, 1))
            for index in EXTRA_REFERENCES:
                column = source_pixels_column(resolution, index)
                if column in batch and _present(batch[column][row]) is not None:
                    group.append((row, resolution, index))
    return groups


def _missing_prepared(batch: dict[str, np.ndarray], columns: list[str], stage: str) -> None:
    missing = [column for column in columns if column not in batch]
    if missing:
        raise ValueError(
            f"{stage} takes rows prepared by PreparePixels (pipelines.encode); the batch lacks {missing}"
            + (" and still holds image bytes" if C.IMAGE_BYTES in batch else "")
        )


class VaeEncodeStage:
    """Ray Data actor: prepared uint8 crops -> normalised latents per resolution (float16 bytes), one VAE call per
    distinct crop shape in the batch (``shape_groups``). Drops the pixel columns; keeps every other column."""

    def __init__(self, config: EncodeConfig):
        from models.presets import build_components
        from models.vae import LatentVAE

        self.config = config
        device, dtype = config.device(config.vae_pool)
        components = build_components(
            config.preset, weights_dir=config.weights_dir, parts=("vae",), device=device, dtype=dtype
        )
        self.vae = LatentVAE(components.vae, frame_convs=config.vae_frame_convs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.vae import images_to_tensor

        resolutions = self.config.resolutions
        needed = [C.BUCKET, C.ENCODE_ERROR]
        for resolution in resolutions:
            needed += [C.height_column(resolution), C.width_column(resolution)]
            needed += [pixels_column(resolution), source_pixels_column(resolution)]
        _missing_prepared(batch, needed, "VaeEncodeStage")
        count = len(batch[C.SAMPLE_ID])
        latents = {r: np.full(count, None, dtype=object) for r in resolutions}
        source_latents = {r: np.full(count, None, dtype=object) for r in resolutions}
        extra_latents = {(r, n): np.full(count, None, dtype=object) for r in resolutions for n in EXTRA_REFERENCES}
        for (height, width), members in shape_groups(batch, resolutions).items():
            columns = [source_pixels_column(r, index) if index else pixels_column(r) for _, r, index in members]
            stacked = np.stack(
                [
                    pixels(batch[column][row], height, width)
                    for (row, _, _), column in zip(members, columns, strict=True)
                ]
            )
            encoded = self.vae.encode(images_to_tensor(stacked)).float().cpu().numpy()
            for (row, resolution, index), tensor in zip(members, encoded, strict=True):
                if index > 1:
                    extra_latents[resolution, index][row] = C.tensor_bytes(tensor)
                else:
                    (source_latents if index else latents)[resolution][row] = C.tensor_bytes(tensor)
        dropped = {pixels_column(r) for r in resolutions} | {source_pixels_column(r) for r in resolutions}
        dropped |= {source_pixels_column(r, n) for r in resolutions for n in EXTRA_REFERENCES}
        out = {key: value for key, value in batch.items() if key not in dropped}
        for resolution in resolutions:
            out[C.latents_column(resolution)] = latents[resolution]
            out[C.source_latents_column(resolution)] = source_latents[resolution]
            for index in EXTRA_REFERENCES:
                out[reference_latents_column(resolution, index)] = extra_latents[resolution, index]
        return out


class TextEncodeStage:
    """Ray Data actor: captions -> chosen caption, its kind, and the condition hidden states (float16 bytes)."""

    def __init__(self, config: EncodeConfig):
        from models.condition_encoder import ConditionEncoder
        from models.presets import build_components

        self.config = config
        device, dtype = config.device(config.text_pool)
        components = build_components(
            config.preset,
            weights_dir=config.weights_dir,
            parts=("text_encoder", "tokenizer"),
            device=device,
            dtype=dtype,
            lm_head=False,  # hidden states only: the 7B model's head is 1.1 GB in bf16 that a GPU would hold
        )
        self.encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
        self.edit_encoder = ConditionEncoder(components.text_encoder, components.tokenizer, template="edit")
        self.edit_plus_encoder = ConditionEncoder(components.text_encoder, components.tokenizer, template="edit_plus")

    @staticmethod
    def _vision_image(batch: dict[str, np.ndarray], row: int, index: int = 1) -> Image.Image | None:
        """Input image ``index`` of a triplet as ``PreparePixels`` sized it for the vision tower; None where it has
        none (the prepare stage has recorded why, or the triplet came without that input image)."""
        from PIL import Image

        column = C.vision_column(C.VISION_PIXELS, index)
        data = _present(batch[column][row]) if column in batch else None
        if data is None:
            return None
        height = int(batch[C.vision_column(C.VISION_HEIGHT, index)][row])
        width = int(batch[C.vision_column(C.VISION_WIDTH, index)][row])
        return Image.fromarray(pixels(data, height, width))

    def _references(self, batch: dict[str, np.ndarray], row: int) -> list[Image.Image]:
        """Every input image of an Edit-Plus row, in order, as the vision tower sees them."""
        references = [self._vision_image(batch, row, index) for index in (1, *EXTRA_REFERENCES)]
        return [image for image in references if image is not None]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[C.SAMPLE_ID])
        tasks = batch.get(C.TASK, np.full(count, C.T2I, dtype=object))
        kinds, captions = [], []
        for row in range(count):
            if tasks[row] != C.T2I:  # an edit instruction is encoded as given
                kinds.append("raw")
                captions.append(str(batch[C.CAPTION][row]))
                continue
            available = {kind: str(batch[column][row]) for kind, column in CAPTION_BY_KIND.items() if column in batch}
            available.setdefault("raw", str(batch[C.CAPTION][row]))
            kind, caption = choose_caption(
                str(batch[C.SAMPLE_ID][row]), available, self.config.caption_weights, self.config.seed
            )
            kinds.append(kind)
            captions.append(caption)
        sequences: list = [None] * count
        pairs = [row for row in range(count) if tasks[row] == C.T2I]
        if pairs:
            for row, sequence in zip(pairs, self.encoder.encode([captions[r] for r in pairs]).unpadded(), strict=True):
                sequences[row] = sequence
        triplets = [row for row in range(count) if tasks[row] != C.T2I]
        if triplets:
            _missing_prepared(batch, [C.VISION_PIXELS, C.VISION_HEIGHT, C.VISION_WIDTH], "TextEncodeStage")
        images = {row: self._vision_image(batch, row) for row in triplets}
        triplets = [row for row in triplets if images[row] is not None]
        # Edit-Plus rows: every reference behind its "Picture N" marker, one call per list of image sizes.
        plus = [row for row in triplets if tasks[row] == C.EDIT_PLUS]
        triplets = [row for row in triplets if tasks[row] != C.EDIT_PLUS]
        references = {row: self._references(batch, row) for row in plus}
        by_sizes: dict[tuple, list[int]] = {}
        for row in plus:
            by_sizes.setdefault(tuple(image.size for image in references[row]), []).append(row)
        for rows in by_sizes.values():
            embeds = self.edit_plus_encoder.encode_edit([captions[r] for r in rows], [references[r] for r in rows])
            for row, sequence in zip(rows, embeds.unpadded(), strict=True):
                sequences[row] = sequence
        # One vision-tower call per image size (the processor batches images of one patch grid most cheaply).
        by_size: dict[tuple[int, int], list[int]] = {}
        for row in triplets:
            by_size.setdefault(images[row].size, []).append(row)
        for rows in by_size.values():
            embeds = self.edit_encoder.encode_edit([captions[r] for r in rows], [images[r] for r in rows])
            for row, sequence in zip(rows, embeds.unpadded(), strict=True):
                sequences[row] = sequence
        dropped = {C.SOURCE_IMAGE_BYTES, *C.EXTRA_SOURCE_IMAGE_COLUMNS}
        dropped |= {
            C.vision_column(column, index)
            for column in (C.VISION_PIXELS, C.VISION_HEIGHT, C.VISION_WIDTH)
            for index in (1, *EXTRA_REFERENCES)
        }
        out = {key: value for key, value in batch.items() if key not in dropped}
        errors = np.array(out.get(C.ENCODE_ERROR, np.full(count, "", dtype=object)), dtype=object)
        for row in range(count):
            if sequences[row] is None and not errors[row]:
                errors[row] = "encode_text:no_source_image"
        out[C.ENCODE_ERROR] = errors
        out[C.CAPTION] = np.array(captions, dtype=object)
        out[C.CAPTION_KIND] = np.array(kinds, dtype=object)
        out[C.TEXT_EMBEDS] = np.array(
            [None if s is None else C.tensor_bytes(s.float().cpu().numpy()) for s in sequences] + [None], dtype=object
        )[:count]
        out[C.TEXT_LEN] = np.array([0 if s is None else s.shape[0] for s in sequences], dtype=np.int32)
        out[C.TEXT_DIM] = np.full(count, self.encoder.hidden_size, dtype=np.int32)
        return out
