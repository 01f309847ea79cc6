"""S1 deduplication: a 64-bit DCT perceptual hash per image and a global duplicate pass.

The hash (pHash, as in ``imagehash.phash``): grey image area-downscaled to 32x32,
2-D DCT (``cv2.dct``, 0.09 ms against 0.86 ms for imagehash, docs/costs.md §1), the top-left 8x8
coefficients thresholded at their median; bit 63 is coefficient (0, 0), row-major. It is stored
as a signed int64 column (``score_phash``) with the same 64 bits.

Duplicates are marked across the whole dataset, not per batch: ``mark_duplicates`` takes every
hash with its ``sample_id``. Exact hashes are grouped first (vectorised); with a Hamming budget
``d > 0`` near-duplicates are found by splitting the 64 bits into ``d + 1`` bands: two hashes
within distance ``d`` agree on at least one band (pigeonhole), so only hashes sharing a band
value are compared. Samples are visited in ``sample_id`` order and one is a duplicate when it is
within ``d`` of a sample already kept, so the kept sample of every group is the one with the
smallest ``sample_id`` and the result does not depend on row order. The cost grows as
``N^2 / 2^(64 / (d + 1))``: fine for a few million hashes with ``d <= 4``; run exact-only
(``d = 0``) first on larger corpora. By default only the image is compared, not the caption;
``S1Thresholds.duplicate_scope = "image_and_caption"`` marks duplicates only among samples that
also share their caption (``keys``).
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from pipelines.decode import downscale
from pipelines.operators.base import AnalysisImage, Check, Operator
from pipelines.operators.thresholds import FilterThresholds
from store import columns

HASH_SIZE = 8
_DCT_SIZE = 32
# Degenerate bands (for example all-zero bits shared by flat images) can gather huge groups;
# compare them in row blocks of this many hashes to bound memory.
_BLOCK = 1024


def perceptual_hash(grey: np.ndarray) -> int:
    """64-bit pHash of a grey uint8 image, as a signed int64 value."""
    small = downscale(grey, _DCT_SIZE, _DCT_SIZE).astype(np.float32)
    low_frequencies = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE]
    bits = (low_frequencies > np.median(low_frequencies)).ravel()
    return int(np.packbits(bits).view(">i8")[0])


def hamming_distance(hash_a: np.ndarray | int, hash_b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between int64 hashes (broadcasting)."""
    xor = np.bitwise_xor(np.asarray(hash_a, dtype=np.int64), np.asarray(hash_b, dtype=np.int64))
    return np.bitwise_count(xor.view(np.uint64))


class PerceptualHash(Operator):
    """The pHash column; the duplicate check reads ``score_duplicate`` from ``mark_duplicates``."""

    name = columns.SCORE_PHASH
    stage = 1
    dtype = np.int64
    missing_value = 0
    checks = (
        Check(
            name="duplicate",
            stage=1,
            column=columns.SCORE_DUPLICATE,
            bounds=lambda thresholds: (None, 0.5),
            low_reason="duplicate",
            high_reason="duplicate",
        ),
    )

    def score(self, image: AnalysisImage) -> int:
        return perceptual_hash(image.grey)


def mark_duplicates(
    sample_ids: np.ndarray,
    hashes: np.ndarray,
    max_hamming_distance: int = 0,
    valid: np.ndarray | None = None,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask of duplicates over a whole dataset; the smallest ``sample_id`` of each group is kept.

    ``valid`` (default all) excludes rows without a hash (broken files): they are never marked. ``keys`` (integer
    per row, e.g. the caption's index among the distinct captions) restricts duplicates to rows of one key.
    """
    sample_ids = np.asarray(sample_ids)
    hashes = np.asarray(hashes, dtype=np.int64)
    if sample_ids.shape != hashes.shape or hashes.ndim != 1:
        raise ValueError(f"sample_ids {sample_ids.shape} and hashes {hashes.shape} must be 1-D of one length")
    if keys is None:
        keys = np.zeros(hashes.shape, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.int64)
    if keys.shape != hashes.shape:
        raise ValueError(f"keys {keys.shape} and hashes {hashes.shape} must be of one length")
    if not 0 <= max_hamming_distance <= 16:
        raise ValueError(f"max_hamming_distance must be in 0..16, got {max_hamming_distance}")
    valid = np.ones(hashes.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    is_duplicate = np.zeros(hashes.shape, dtype=bool)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return is_duplicate
    rows = rows[np.argsort(sample_ids[rows], kind="stable")]  # visiting order: by sample_id

    # Exact (hash, key) pairs: np.unique's first index is the first row in sample_id order.
    unique_pairs, first_positions = np.unique(np.stack([hashes[rows], keys[rows]], axis=1), axis=0, return_index=True)
    is_duplicate[rows] = True
    is_duplicate[rows[first_positions]] = False
    if max_hamming_distance == 0 or unique_pairs.shape[0] < 2:
        return is_duplicate

    # Near duplicates among the representatives (of one key), in visiting order.
    order = np.argsort(first_positions)
    representatives = rows[first_positions[order]]
    rep_hashes, rep_keys = unique_pairs[order, 0], unique_pairs[order, 1]
    neighbours = _near_pairs(rep_hashes, max_hamming_distance, rep_keys)
    kept = np.ones(rep_hashes.size, dtype=bool)
    for later in sorted(neighbours):
        if any(kept[earlier] for earlier in neighbours[later]):
            kept[later] = False
    is_duplicate[representatives[~kept]] = True
    return is_duplicate


def _near_pairs(hashes: np.ndarray, max_distance: int, keys: np.ndarray) -> dict[int, set[int]]:
    """For each index, the smaller indices of the same key within ``max_distance`` bits (band bucketing)."""
    unsigned = hashes.view(np.uint64)
    num_bands = max_distance + 1
    edges = np.linspace(0, 64, num_bands + 1).astype(int)
    neighbours: dict[int, set[int]] = {}
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << (high - low)) - 1)
        bands = (unsigned >> np.uint64(low)) & mask
        order = np.argsort(bands, kind="stable")
        boundaries = np.flatnonzero(np.diff(bands[order])) + 1
        for group in np.split(order, boundaries):
            if group.size > 1:
                _add_group_pairs(np.sort(group), hashes, keys, max_distance, neighbours)
    return neighbours


def _add_group_pairs(
    group: np.ndarray, hashes: np.ndarray, keys: np.ndarray, max_distance: int, neighbours: dict[int, set[int]]
) -> None:
    for start in range(0, group.size, _BLOCK):
        block = group[start : start + _BLOCK]
        distances = hamming_distance(hashes[block][:, None], hashes[group][None, :])
        same_key = keys[block][:, None] == keys[group][None, :]
        later, earlier = np.nonzero((distances <= max_distance) & same_key & (block[:, None] > group[None, :]))
        for index_later, index_earlier in zip(block[later], group[earlier], strict=True):
            neighbours.setdefault(int(index_later), set()).add(int(index_earlier))


def add_duplicate_column(columns_in: Mapping[str, np.ndarray], thresholds: FilterThresholds) -> dict[str, np.ndarray]:
    """Columns plus ``score_duplicate`` (1.0 / 0.0; NaN for broken files), over a whole dataset."""
    valid = np.asarray(columns_in[columns.SCORE_BROKEN_FILE]) == 0.0
    keys = None
    if thresholds.s1.duplicate_scope == "image_and_caption":
        captions = np.asarray(columns_in[columns.CAPTION], dtype=object)
        keys = np.unique([text if isinstance(text, str) else "" for text in captions], return_inverse=True)[1]
    is_duplicate = mark_duplicates(
        columns_in[columns.SAMPLE_ID],
        columns_in[columns.SCORE_PHASH],
        thresholds.s1.max_hamming_distance,
        valid,
        keys,
    )
    scores = np.where(valid, is_duplicate.astype(np.float64), np.nan)
    return {**columns_in, columns.SCORE_DUPLICATE: scores}
