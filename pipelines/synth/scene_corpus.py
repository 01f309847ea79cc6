"""A corpus of shape scenes as the producers receive real data: image files with captions in WebDataset shards, with
the defects the filters exist for mixed in.

Scene ``i`` is drawn and jittered from ``default_rng([seed, i])`` (``pipelines.synth.shapes``) and rendered at
``size`` pixels (the store resizes it to its resolutions, as it does any photograph). One sample in ``defect_every``
is damaged in a way curation must catch, cycling through ``DEFECTS``: an exact duplicate of the previous sample
(image and caption: a pair posted twice), a heavy blur, a nearly black exposure, a tiny image, a truncated file, a
refusal instead of a caption. The clean samples' captions are exact (the grammar of ``shapes.caption``), so the store should be encoded from the raw
captions (``encode.caption_weights={raw: 1}``).

    shards = write_scene_corpus("outputs/demo/scene_corpus", 2000, split="train")
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

from pipelines.synth import shapes
from pipelines.synth.sample_corpus import jpeg, write_webdataset

DEFECTS: tuple[str, ...] = ("duplicate", "blurred", "too_dark", "tiny", "truncated", "refusal")


def scene_pairs(
    num_samples: int,
    seed: int = 0,
    *,
    size: int = 256,
    split: str = "train",
    kinds: tuple[str, ...] = ("one", "two"),
    defect_every: int = 10,
    start: int = 0,
) -> list[tuple[str, bytes, str]]:
    """``(key, JPEG bytes, caption)`` of scenes ``start .. start + num_samples``; ``defect_every`` 0: no defects."""
    pairs: list[tuple[str, bytes, str]] = []
    for index in range(start, start + num_samples):
        rng = np.random.default_rng([seed, index])
        scene = shapes.sample_scene(rng, kinds=kinds, split=split)
        image = shapes.render_scene(scene, size, rng)
        caption = shapes.caption(scene)
        data = jpeg(image, quality=95)
        if defect_every and index % defect_every == defect_every - 1:
            defect = DEFECTS[(index // defect_every) % len(DEFECTS)]
            if defect == "duplicate" and pairs:
                data, caption = pairs[-1][1], pairs[-1][2]
            elif defect == "blurred":
                data = jpeg(cv2.GaussianBlur(image, (0, 0), size / 40))
            elif defect == "too_dark":
                data = jpeg((image * 0.04).astype(np.uint8))
            elif defect == "tiny":
                data = jpeg(cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA))
            elif defect == "truncated":
                data = data[: len(data) // 3]
            elif defect == "refusal":
                caption = "Sorry, I cannot describe this image."
        pairs.append((f"scene-{seed}-{index:07d}", data, caption))
    return pairs


def write_scene_corpus(folder: str | pathlib.Path, num_samples: int, seed: int = 0, **kwargs) -> list[str]:
    """WebDataset shards of ``scene_pairs`` under ``folder``; returns the shard paths."""
    return write_webdataset(folder, scene_pairs(num_samples, seed, **kwargs), per_shard=256)
