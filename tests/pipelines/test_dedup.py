"""Deduplication: pHash stability, and the global duplicate pass (exact and near, order independent)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipelines.operators.dedup import add_duplicate_column, hamming_distance, mark_duplicates, perceptual_hash
from pipelines.operators.thresholds import FilterThresholds
from store import columns


def _scene(seed: int, height: int = 300, width: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = np.full((height, width), int(rng.integers(60, 200)), np.uint8)
    for _ in range(10):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(grey, center, int(rng.integers(15, 90)), int(rng.integers(0, 256)), -1)
    return cv2.GaussianBlur(grey, (0, 0), 1.0)


def test_phash_is_stable_under_reencoding_and_resizing_and_separates_scenes():
    grey = _scene(0)
    base = perceptual_hash(grey)
    recompressed = cv2.imdecode(cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(grey, (200, 150), interpolation=cv2.INTER_AREA)
    assert isinstance(base, int) and -(2**63) <= base < 2**63
    assert perceptual_hash(grey) == base
    assert hamming_distance(base, perceptual_hash(recompressed)) <= 4
    assert hamming_distance(base, perceptual_hash(resized)) <= 4
    others = [perceptual_hash(_scene(seed)) for seed in range(1, 8)]
    assert min(int(hamming_distance(base, other)) for other in others) >= 12


def test_hamming_distance_counts_bits_of_negative_hashes():
    assert hamming_distance(-1, 0) == 64
    assert hamming_distance(np.int64(-(2**63)), 0) == 1
    np.testing.assert_array_equal(hamming_distance(np.array([0, 3, 7]), 1), [1, 1, 2])


def test_exact_duplicates_keep_the_smallest_sample_id():
    sample_ids = np.array(["c", "a", "b", "d", "e"])
    hashes = np.array([5, 5, 7, 5, -3], dtype=np.int64)
    np.testing.assert_array_equal(mark_duplicates(sample_ids, hashes), [True, False, False, True, False])


def test_result_does_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 6, 200).astype(np.int64)  # many exact collisions
    sample_ids = np.array([f"id{index:04d}" for index in rng.permutation(200)])
    duplicated = set(sample_ids[mark_duplicates(sample_ids, hashes, 2)])
    order = rng.permutation(200)
    duplicated_shuffled = set(sample_ids[order][mark_duplicates(sample_ids[order], hashes[order], 2)])
    assert duplicated == duplicated_shuffled
    assert len(duplicated) >= 200 - len(set(hashes.tolist()))


def test_near_duplicates_within_the_hamming_budget():
    base = np.int64(0x0123456789ABCDEF)
    one_bit, three_bits = base ^ np.int64(1 << 40), base ^ np.int64(0b10101)
    far = ~base
    sample_ids = np.array(["a", "b", "c", "d"])
    hashes = np.array([base, one_bit, three_bits, far], dtype=np.int64)
    np.testing.assert_array_equal(mark_duplicates(sample_ids, hashes, 0), [False, False, False, False])
    np.testing.assert_array_equal(mark_duplicates(sample_ids, hashes, 1), [False, True, False, False])
    np.testing.assert_array_equal(mark_duplicates(sample_ids, hashes, 4), [False, True, True, False])


def test_near_duplicates_do_not_chain_through_dropped_samples():
    # a -> b is 3 bits, b -> c another 3 bits, a -> c 6 bits: with a budget of 4, b goes (close to a)
    # and c stays (its only close neighbour, b, was dropped).
    a = np.int64(0)
    b = a ^ np.int64(0b111)
    c = b ^ np.int64(0b111 << 20)
    np.testing.assert_array_equal(mark_duplicates(np.array(["a", "b", "c"]), np.array([a, b, c]), 4), [0, 1, 0])


def _brute_force(sample_ids: np.ndarray, hashes: np.ndarray, max_distance: int) -> np.ndarray:
    kept: list[int] = []
    duplicate = np.zeros(len(hashes), dtype=bool)
    for row in np.argsort(sample_ids, kind="stable"):
        if any(hamming_distance(hashes[row], hashes[other]) <= max_distance for other in kept):
            duplicate[row] = True
        else:
            kept.append(row)
    return duplicate


@pytest.mark.parametrize("max_distance", [1, 3, 6])
def test_band_bucketing_matches_brute_force(max_distance):
    rng = np.random.default_rng(max_distance)
    originals = rng.integers(-(2**63), 2**63 - 1, 60, dtype=np.int64)
    masks = np.zeros(40, dtype=np.uint64)
    for index in range(40):
        for bit in rng.choice(64, int(rng.integers(0, max_distance + 3)), replace=False):
            masks[index] |= np.uint64(1) << np.uint64(bit)
    copies = (originals[:40].view(np.uint64) ^ masks).view(np.int64)
    hashes = np.concatenate([originals, copies])
    sample_ids = np.array([f"{index:03d}" for index in rng.permutation(len(hashes))])
    expected = _brute_force(sample_ids, hashes, max_distance)
    np.testing.assert_array_equal(mark_duplicates(sample_ids, hashes, max_distance), expected)
    assert expected.sum() >= 10  # the planted copies are there to be found


def test_invalid_rows_are_ignored_and_the_column_is_added():
    cols = {
        columns.SAMPLE_ID: np.array(["a", "b", "c", "d"]),
        columns.SCORE_PHASH: np.array([0, 0, -1, -1], dtype=np.int64),  # "a" is a broken file: hash 0 by default
        columns.SCORE_BROKEN_FILE: np.array([1.0, 0.0, 0.0, 0.0]),
    }
    out = add_duplicate_column(cols, FilterThresholds())
    np.testing.assert_array_equal(out[columns.SCORE_DUPLICATE], [np.nan, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="one length"):
        mark_duplicates(np.array(["a"]), np.array([1, 2]))


def test_caption_scope_keeps_recoloured_scenes_and_marks_true_copies():
    """Shape scenes that differ in colour alone hash alike in grey; with ``duplicate_scope: image_and_caption`` the
    caption tells them apart, while an exact copy under the same caption is still a duplicate."""
    from pipelines.synth import shapes

    red = shapes.parse_caption("a big red circle on the left, on a white background")
    blue = shapes.parse_caption("a big blue circle on the left, on a white background")
    hashes = [perceptual_hash(cv2.cvtColor(shapes.render_scene(s, 256), cv2.COLOR_RGB2GRAY)) for s in (red, blue)]
    assert hashes[0] == hashes[1]  # why the scope exists
    cols = {
        columns.SAMPLE_ID: np.array(["a", "b", "c", "d"]),
        columns.SCORE_PHASH: np.array([hashes[0], hashes[1], hashes[0], hashes[1]], dtype=np.int64),
        columns.SCORE_BROKEN_FILE: np.zeros(4),
        columns.CAPTION: np.array([shapes.caption(red), shapes.caption(blue), shapes.caption(red), None], dtype=object),
    }
    image_only = add_duplicate_column(cols, FilterThresholds())[columns.SCORE_DUPLICATE]
    np.testing.assert_array_equal(image_only, [0.0, 1.0, 1.0, 1.0])
    scoped = FilterThresholds.model_validate({"s1": {"duplicate_scope": "image_and_caption"}})
    np.testing.assert_array_equal(add_duplicate_column(cols, scoped)[columns.SCORE_DUPLICATE], [0.0, 0.0, 1.0, 0.0])
