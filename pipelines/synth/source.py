"""The synthesiser as a Ray Data source: records in the schema of real pairs, so a job can mix them by ratio.

Columns: ``store.columns.SOURCE_COLUMNS`` (``source = "synthetic/<mode>"``, ``key`` = mode, seed and row) plus
``rendered_text`` (the text as drawn, lines joined by newlines) and ``num_discarded_paragraphs`` (texts drawn for
this record and discarded as unrenderable or too long: their sum over a dataset is the discard count). A record
whose every attempt was discarded comes out like a failed real sample: empty ``image_bytes`` and a ``source_error``.

Rows are generated in parallel on an actor pool (``config.pool``), each from its own seed, so the output does not
depend on partitioning. Compositional mode takes its backgrounds from a dataset with an ``image_bytes`` column (any
source of ``pipelines.sources``): each background serves ``ceil(n / backgrounds)`` records keyed by its
``sample_id``, so a background always gets the same texts; which backgrounds are used follows Ray's row order.

    ds = synthetic_dataset(SynthConfig(), 10_000, backgrounds=read_source(source_config))
    mixed = real.union(ds)  # fill rendered_text / num_discarded_paragraphs for real rows, or select_columns
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import ray.data

from models.ray_runtime import local_read_blocks
from pipelines.pools import map_stage
from pipelines.sources import make_batch
from pipelines.synth.config import SynthConfig
from pipelines.synth.generator import SynthGenerator, SynthSample
from pipelines.synth.render import encode
from store import columns as C

logger = logging.getLogger(__name__)
SYNTH_COLUMNS: tuple[str, ...] = (*C.SOURCE_COLUMNS, C.RENDERED_TEXT, C.NUM_DISCARDED)


def source_name(mode: str) -> str:
    return f"synthetic/{mode}"


def mode_counts(config: SynthConfig, num_samples: int) -> dict[str, int]:
    """``num_samples`` split across ``config.modes`` by weight (largest remainder; the counts add up exactly)."""
    total = sum(config.modes.values())
    shares = {mode: num_samples * weight / total for mode, weight in config.modes.items()}
    counts = {mode: math.floor(share) for mode, share in shares.items()}
    by_remainder = sorted(shares, key=lambda mode: (counts[mode] - shares[mode], mode))
    for mode in by_remainder[: num_samples - sum(counts.values())]:
        counts[mode] += 1
    return counts


def samples_batch(config: SynthConfig, mode: str, keys: list[str], samples: list[SynthSample]) -> dict[str, np.ndarray]:
    """Source columns (plus the synthesis columns) for generated samples."""
    images = [encode(sample.image, config) if sample.image is not None else b"" for sample in samples]
    batch = make_batch(
        source_name(mode),
        images,
        [sample.caption for sample in samples],
        keys,
        [""] * len(samples),
        [sample.error for sample in samples],
    )
    batch[C.RENDERED_TEXT] = np.array([sample.rendered_text for sample in samples], dtype=object)
    batch[C.NUM_DISCARDED] = np.array([sample.num_discarded for sample in samples], dtype=np.int64)
    return batch


def _background_key(image: bytes, sample_id: object) -> int:
    """A stable integer per background: from its ``sample_id`` when present, else a hash of its bytes."""
    text = sample_id if isinstance(sample_id, str) and sample_id else hashlib.blake2b(image, digest_size=16).hexdigest()
    return int(hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), 16)


class SynthStage:
    """Ray Data stage: ``range`` rows (``id``) or background rows (``image_bytes``) in, synthetic records out."""

    def __init__(self, config_json: str, mode: str, repeats: int = 1):
        self.config = SynthConfig.model_validate_json(config_json)
        self.mode = mode
        self.repeats = repeats
        self.generator = SynthGenerator(self.config, mode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prefix = f"{self.mode}-s{self.config.seed}"
        keys, samples = [], []
        if "id" in batch:
            for row in batch["id"]:
                keys.append(f"{prefix}-{int(row):09d}")
                samples.append(self.generator.generate((int(row),)))
        else:
            ids = batch.get(C.SAMPLE_ID, np.array([""] * len(batch[C.IMAGE_BYTES]), dtype=object))
            for raw, sample_id in zip(batch[C.IMAGE_BYTES], ids, strict=True):
                image = bytes(raw) if raw is not None else b""
                background = _background_key(image, sample_id)
                for repeat in range(self.repeats):
                    keys.append(f"{prefix}-{background:016x}-{repeat}")
                    samples.append(self.generator.generate((background, repeat), image))
        return samples_batch(self.config, self.mode, keys, samples)


def synthetic_dataset(
    config: SynthConfig, num_samples: int, backgrounds: ray.data.Dataset | None = None
) -> ray.data.Dataset:
    """``num_samples`` synthetic records over the modes of ``config`` (see the module docstring)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    config_json = config.model_dump_json()
    parts = []
    for mode, count in mode_counts(config, num_samples).items():
        if count == 0:
            continue
        if mode == "compositional" and backgrounds is not None:
            if C.IMAGE_BYTES not in backgrounds.columns():
                raise ValueError(f"the background dataset needs an {C.IMAGE_BYTES!r} column (any source works)")
            wanted = [c for c in (C.IMAGE_BYTES, C.SAMPLE_ID) if c in backgrounds.columns()]
            pool = backgrounds.select_columns(wanted).limit(count)
            num_backgrounds = pool.count()  # reads at most `count` rows once more; Parquet answers from metadata
            if num_backgrounds == 0:
                raise ValueError("the background dataset is empty: give images, or None for generated backgrounds")
            repeats = math.ceil(count / num_backgrounds)
            stage = map_stage(pool, SynthStage, config.pool, config_json=config_json, mode=mode, repeats=repeats)
            parts.append(stage.limit(count))
        else:
            if mode == "compositional":
                logger.info("no background dataset: compositional mode composites onto photo-like generated images")
            parts.append(
                map_stage(
                    ray.data.range(count, override_num_blocks=local_read_blocks()),
                    SynthStage,
                    config.pool,
                    config_json=config_json,
                    mode=mode,
                )
            )
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
