"""Encoding kept samples for the latent store: resolution buckets, VAE latents, condition-encoder hidden states.

Two actor pools, so each scales on its own (the condition encoder is the 7B model, the VAE far smaller):

- ``VaeEncodeStage``: decode the image at full size (EXIF applied), pick the aspect-ratio bucket nearest to the
  source, and for each training resolution resize to cover the bucket's size and centre-crop; a source that would
  need more than ``max_upscale`` enlargement gets a null there. Rows are encoded in groups of one shape, so a
  batch costs one VAE call per (resolution, bucket) it holds.
- ``TextEncodeStage``: choose the caption kind per sample (raw / recaption / fused, by configured weights,
  deterministic in ``sample_id``), encode the batch, keep the hidden states after the drop unpadded.

Both store half precision (float16) and drop what the store does not keep (image bytes).

Edit triplets (``task`` other than ``t2i``): the VAE stage also encodes the input image, cropped to the target's
bucket size at each resolution, into ``source_latents_<res>``; the text stage encodes the instruction (never a
recaption) with the edit template and the input image through the vision tower, resized to
``edit_vision_area`` pixels (the serving config must use the same area).
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
from pipelines.schema import SOURCE_IMAGE_BYTES
from pipelines.store import columns as C
from pipelines.store.buckets import RESOLUTIONS, bucket_size, nearest_bucket, upscale_factor

if TYPE_CHECKING:
    import torch

ENCODE_ERROR = "encode_error"
CAPTION_COLUMNS = {"raw": "caption_raw", "recaption": "caption_recaption", "fused": "caption_fused"}


class EncodeConfig(StrictModel):
    store_dir: str | None = None  # None: curate only, encode nothing
    preset: str = "tiny"
    weights_dir: str | None = None
    resolutions: list[int] = list(RESOLUTIONS)
    max_upscale: float = pydantic.Field(default=1.0, ge=1.0)  # 1.0: never enlarge a source
    min_stage: int = pydantic.Field(default=1, ge=0, le=7)  # encode samples that pass at least this stage
    caption_weights: dict[str, float] = {"raw": 0.2, "recaption": 0.3, "fused": 0.5}
    max_pixels: int = pydantic.Field(default=4096 * 4096, gt=0)
    vae_pool: PoolConfig = PoolConfig(batch_size=8)
    # "2d": the VAE's causal 3D convolutions run as the 2D ones they reduce to for an image (one frame): a third of the
    # work, latents equal to diffusers' to float rounding. "3d": diffusers' computation, bit for bit (models/vae.py).
    vae_frame_convs: Literal["2d", "3d"] = "2d"
    text_pool: PoolConfig = PoolConfig(batch_size=16)
    rows_per_shard: int = pydantic.Field(default=1000, ge=1)
    seed: int = 0
    # Edit triplets: the area (pixels) at which the vision tower sees the input image. 384x384 gives about 190
    # image tokens per sample; serving must use the same area (ServeSettings.edit.vision_area).
    edit_vision_area: int = pydantic.Field(default=384 * 384, ge=28 * 28)

    @pydantic.field_validator("resolutions")
    @classmethod
    def _multiples_of_16(cls, values: list[int]) -> list[int]:
        if not values or any(value <= 0 or value % 16 for value in values):
            raise ValueError(f"resolutions must be positive multiples of 16, got {values}")
        return sorted(set(values))

    @pydantic.field_validator("caption_weights")
    @classmethod
    def _known_kinds(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(CAPTION_COLUMNS)
        if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"caption_weights takes non-negative weights over {sorted(CAPTION_COLUMNS)}, got {weights}"
            )
        return weights

    def device(self, pool: PoolConfig) -> tuple[str, torch.dtype]:
        import torch

        if pool.num_gpus > 0 and torch.cuda.is_available():
            return "cuda", torch.bfloat16
        return "cpu", torch.float32


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


class VaeEncodeStage:
    """Ray Data actor: image bytes -> bucket and normalised latents per resolution (float16 bytes)."""

    def __init__(self, config: EncodeConfig):
        from models.presets import build_components
        from models.vae import LatentVAE

        self.config = config
        device, dtype = config.device(config.vae_pool)
        components = build_components(
            config.preset, weights_dir=config.weights_dir, parts=("vae",), device=device, dtype=dtype
        )
        self.vae = LatentVAE(components.vae, frame_convs=config.vae_frame_convs)
        self.decode_config = DecodeConfig(analysis_short_side=1 << 20, max_pixels=config.max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[C.SAMPLE_ID])
        out = {key: value for key, value in batch.items() if key != "image_bytes"}
        buckets, errors = np.full(count, "", dtype=object), np.full(count, "", dtype=object)
        latents = {r: np.full(count, None, dtype=object) for r in self.config.resolutions}
        source_latents = {r: np.full(count, None, dtype=object) for r in self.config.resolutions}
        heights = {r: np.full(count, -1, dtype=np.int64) for r in self.config.resolutions}
        widths = {r: np.full(count, -1, dtype=np.int64) for r in self.config.resolutions}
        # (resolution, height, width) -> [(row, is_source, pixels)]: one VAE call per shape, sources included.
        groups: dict[tuple[int, int, int], list[tuple[int, bool, np.ndarray]]] = {}
        sources = batch.get(SOURCE_IMAGE_BYTES, np.full(count, b"", dtype=object))
        for row, data in enumerate(batch["image_bytes"]):
            decoded = decode_image(bytes(data), self.decode_config)
            if not decoded.ok:
                errors[row] = f"decode:{decoded.drop_reason}"
                continue
            image, source = decoded.image, None
            if sources[row] is not None and len(sources[row]):
                decoded_source = decode_image(bytes(sources[row]), self.decode_config)
                if not decoded_source.ok:
                    errors[row] = f"decode_source_image:{decoded_source.drop_reason}"
                    continue
                source = decoded_source.image
            bucket = nearest_bucket(image.shape[1], image.shape[0])
            buckets[row] = bucket
            for resolution in self.config.resolutions:
                width, height = bucket_size(bucket, resolution)
                smallest = image if source is None else min(image, source, key=lambda a: a.shape[0] * a.shape[1])
                if upscale_factor(smallest.shape[1], smallest.shape[0], (width, height)) > self.config.max_upscale:
                    continue  # too small for this resolution: null there
                group = groups.setdefault((resolution, height, width), [])
                group.append((row, False, cover_and_crop(image, width, height)))
                if source is not None:
                    group.append((row, True, cover_and_crop(source, width, height)))
        from models.vae import images_to_tensor

        for (resolution, height, width), members in groups.items():
            pixels = images_to_tensor(np.stack([image for _, _, image in members]))
            encoded = self.vae.encode(pixels).float().cpu().numpy()
            for (row, is_source, _), tensor in zip(members, encoded, strict=True):
                (source_latents if is_source else latents)[resolution][row] = C.tensor_bytes(tensor)
                heights[resolution][row], widths[resolution][row] = height, width
        out[C.BUCKET], out[ENCODE_ERROR] = buckets, errors
        for resolution in self.config.resolutions:
            out[C.latents_column(resolution)] = latents[resolution]
            out[C.source_latents_column(resolution)] = source_latents[resolution]
            out[C.height_column(resolution)] = heights[resolution]
            out[C.width_column(resolution)] = widths[resolution]
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
        )
        self.encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
        self.edit_encoder = ConditionEncoder(components.text_encoder, components.tokenizer, template="edit")
        self.decode_config = DecodeConfig(analysis_short_side=1 << 20, max_pixels=config.max_pixels)

    def _vision_image(self, data: bytes):
        """The input image of a triplet as the vision tower sees it: ``edit_vision_area`` pixels, aspect kept."""
        from PIL import Image

        decoded = decode_image(bytes(data), self.decode_config)
        if not decoded.ok:  # the VAE stage has recorded the error; the row is not stored
            return None
        image = Image.fromarray(np.ascontiguousarray(decoded.image))
        from models.generation import edit_source_size, resize_lanczos

        return resize_lanczos(image, *edit_source_size(self.config.edit_vision_area, *image.size))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch[C.SAMPLE_ID])
        tasks = batch.get(C.TASK, np.full(count, "t2i", dtype=object))
        kinds, captions = [], []
        for row in range(count):
            if tasks[row] != "t2i":  # an edit instruction is encoded as given
                kinds.append("raw")
                captions.append(str(batch["caption"][row]))
                continue
            available = {kind: str(batch[column][row]) for kind, column in CAPTION_COLUMNS.items() if column in batch}
            available.setdefault("raw", str(batch["caption"][row]))
            kind, caption = choose_caption(
                str(batch[C.SAMPLE_ID][row]), available, self.config.caption_weights, self.config.seed
            )
            kinds.append(kind)
            captions.append(caption)
        sequences: list = [None] * count
        pairs = [row for row in range(count) if tasks[row] == "t2i"]
        if pairs:
            for row, sequence in zip(pairs, self.encoder.encode([captions[r] for r in pairs]).unpadded(), strict=True):
                sequences[row] = sequence
        triplets = [row for row in range(count) if tasks[row] != "t2i"]
        images = {row: self._vision_image(batch[SOURCE_IMAGE_BYTES][row]) for row in triplets}
        triplets = [row for row in triplets if images[row] is not None]
        # One vision-tower call per image size (the processor batches images of one patch grid most cheaply).
        by_size: dict[tuple[int, int], list[int]] = {}
        for row in triplets:
            by_size.setdefault(images[row].size, []).append(row)
        for rows in by_size.values():
            embeds = self.edit_encoder.encode_edit([captions[r] for r in rows], [images[r] for r in rows])
            for row, sequence in zip(rows, embeds.unpadded(), strict=True):
                sequences[row] = sequence
        out = {key: value for key, value in batch.items() if key != SOURCE_IMAGE_BYTES}
        errors = np.array(out.get(ENCODE_ERROR, np.full(count, "", dtype=object)), dtype=object)
        for row in range(count):
            if sequences[row] is None and not errors[row]:
                errors[row] = "encode_text:no_source_image"
        out[ENCODE_ERROR] = errors
        out[C.CAPTION] = np.array(captions, dtype=object)
        out[C.CAPTION_KIND] = np.array(kinds, dtype=object)
        out[C.TEXT_EMBEDS] = np.array(
            [None if s is None else C.tensor_bytes(s.float().cpu().numpy()) for s in sequences] + [None], dtype=object
        )[:count]
        out[C.TEXT_LEN] = np.array([0 if s is None else s.shape[0] for s in sequences], dtype=np.int32)
        out[C.TEXT_DIM] = np.full(count, self.encoder.hidden_size, dtype=np.int32)
        return out
