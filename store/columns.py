"""The latent store's columns: one row per sample, one column per resolution (docs/design.md §4).

Tensors are stored as raw little-endian float16 bytes in ``binary`` columns with their shapes in integer columns:
copying a binary column into a batch buffer runs at about 5 GB/s here against 2 GB/s for ``fixed_size_list``
(docs/costs.md §2), and the bytes on disk equal the tensor bytes (no compression: zstd saves 7% at 4x the read CPU).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.buckets import RESOLUTIONS

# Identity and text.
SAMPLE_ID = "sample_id"
SOURCE = "source"
BUCKET = "bucket"
CAPTION = "caption"  # the caption that was encoded
CAPTION_KIND = "caption_kind"  # raw / recaption / fused
RENDERED_TEXT = "rendered_text"  # synthetic text-rendering samples: the text drawn; "" otherwise
LANGUAGE = "text_language"
CATEGORY = "category"
STAGE = "stage"
# "t2i", or an editing task ("edit", "depth", "novel_view"): edit rows also hold source latents.
TASK = "task"

# Condition encoder hidden states after the drop: [text_len, text_dim] float16.
TEXT_EMBEDS = "text_embeds"
TEXT_LEN = "text_len"
TEXT_DIM = "text_dim"

LATENT_CHANNELS = 16
TENSOR_DTYPE = np.float16


def latents_column(resolution: int) -> str:
    """``latents_<res>``: normalised VAE latents [16, H/8, W/8] float16; null where the source is too small."""
    return f"latents_{resolution}"


def source_latents_column(resolution: int) -> str:
    """``source_latents_<res>``: an edit triplet's input image, normalised latents of the same shape as
    ``latents_<res>`` (cropped to the same bucket size); null on text-to-image rows."""
    return f"source_latents_{resolution}"


def height_column(resolution: int) -> str:
    return f"height_{resolution}"


def width_column(resolution: int) -> str:
    return f"width_{resolution}"


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor as the store keeps it: contiguous little-endian float16."""
    return np.ascontiguousarray(array, dtype="<f2").tobytes()


def bytes_tensor(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``tensor_bytes`` (read-only view when the buffer allows)."""
    array = np.frombuffer(data, dtype="<f2")
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{array.size} values cannot take shape {shape}")
    return array.reshape(shape)


def base_fields() -> list[pa.Field]:
    return [
        pa.field(SAMPLE_ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(BUCKET, pa.string(), nullable=False),
        pa.field(CAPTION, pa.string()),
        pa.field(CAPTION_KIND, pa.string()),
        pa.field(RENDERED_TEXT, pa.string()),
        pa.field(LANGUAGE, pa.string()),
        pa.field(CATEGORY, pa.string()),
        pa.field(STAGE, pa.int8()),
        pa.field(TASK, pa.string()),
        pa.field(TEXT_EMBEDS, pa.binary()),
        pa.field(TEXT_LEN, pa.int32()),
        pa.field(TEXT_DIM, pa.int32()),
    ]


def resolution_fields(resolutions: tuple[int, ...] = RESOLUTIONS) -> list[pa.Field]:
    fields = []
    for resolution in resolutions:
        fields += [
            pa.field(latents_column(resolution), pa.binary()),
            pa.field(source_latents_column(resolution), pa.binary()),
            pa.field(height_column(resolution), pa.int32()),
            pa.field(width_column(resolution), pa.int32()),
        ]
    return fields


def is_score_column(name: str) -> bool:
    """Stored scores keep their curation names (``score_*``): thresholds can be re-applied at read time."""
    return name.startswith("score_")
