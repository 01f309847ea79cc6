"""Aspect-ratio buckets and the image size of each bucket at each training resolution (docs/qwen_image.md §1, §5).

A source goes to the bucket whose ratio is nearest to its own (in log space). At resolution R a bucket's size has
about R x R pixels with sides that are multiples of 16; at 1328 the seven published inference sizes are used, so
training and inference see the same shapes. Every sample of a bucket has the same latent shape at a resolution,
which is what lets a batch read from one bucket be stacked without padding.
"""

from __future__ import annotations

import math

# docs/qwen_image.md §1: the nine aspect ratios (width:height).
BUCKET_RATIOS: dict[str, tuple[int, int]] = {
    "1x1": (1, 1),
    "2x3": (2, 3),
    "3x2": (3, 2),
    "3x4": (3, 4),
    "4x3": (4, 3),
    "9x16": (9, 16),
    "16x9": (16, 9),
    "1x3": (1, 3),
    "3x1": (3, 1),
}
RESOLUTIONS: tuple[int, ...] = (256, 640, 1328)
# docs/qwen_image.md §5: the published inference sizes at 1328, (width, height), named like the buckets ("16x9").
PUBLISHED_1328: dict[str, tuple[int, int]] = {
    "1x1": (1328, 1328),
    "16x9": (1664, 928),
    "9x16": (928, 1664),
    "4x3": (1472, 1104),
    "3x4": (1104, 1472),
    "3x2": (1584, 1056),
    "2x3": (1056, 1584),
}
SIDE_MULTIPLE = 16


def nearest_bucket(width: int, height: int) -> str:
    """The bucket whose width:height is nearest to the image's, in log ratio."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    log_ratio = math.log(width / height)
    return min(
        BUCKET_RATIOS, key=lambda name: abs(math.log(BUCKET_RATIOS[name][0] / BUCKET_RATIOS[name][1]) - log_ratio)
    )


def bucket_size(bucket: str, resolution: int) -> tuple[int, int]:
    """(width, height) of ``bucket`` at ``resolution``: about resolution^2 pixels, sides multiples of 16."""
    if bucket not in BUCKET_RATIOS:
        raise ValueError(f"unknown bucket {bucket!r}; choose from {sorted(BUCKET_RATIOS)}")
    if resolution == 1328 and bucket in PUBLISHED_1328:
        return PUBLISHED_1328[bucket]
    ratio_w, ratio_h = BUCKET_RATIOS[bucket]
    scale = math.sqrt(ratio_w / ratio_h)
    width = max(SIDE_MULTIPLE, round(resolution * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)
    height = max(SIDE_MULTIPLE, round(resolution / scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)
    return width, height


def upscale_factor(width: int, height: int, target: tuple[int, int]) -> float:
    """How much the source must be enlarged to cover ``target`` (resize then centre crop); below 1 shrinks."""
    return max(target[0] / width, target[1] / height)
