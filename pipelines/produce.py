"""The encoding pass of the producer job: kept samples -> pixels (CPU pool) -> encoders -> latent-store shards.

Reads the scored shards of a curation run, keeps the samples whose ``stage`` reaches ``EncodeConfig.min_stage``
and that the store does not hold yet (a re-run resumes), decodes and crops them on the CPU pool, encodes the pixels
(``pipelines.encode``) and commits them
(``store.writer.LatentStoreSink``). Shard ids are derived from their rows, so a write task that Ray
retries after a failure commits the same shard id again and is skipped: no sample is stored twice.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from models.ray_runtime import local_read_blocks
from pipelines.encode import (
    EXTRA_REFERENCES,
    EncodeConfig,
    PreparePixels,
    TextEncodeStage,
    VaeEncodeStage,
    reference_latents_column,
    store_header,
)
from pipelines.pools import PoolConfig, map_stage
from store import columns as C
from store.header import ensure_header
from store.parquet import read_parquet
from store.reader import committed_sample_ids
from store.writer import LatentStoreSink

logger = logging.getLogger(__name__)

# Curation columns the store keeps besides the encoded tensors: text, annotation fields, scores, stage
# (docs/design.md §4).
STORED_ANNOTATION_COLUMNS = (C.ANN_IMAGE_TYPE, C.ANN_IMAGE_STYLE)


class KeepSamples:
    """Drops rows that do not reach the stage or are already stored; adds ``stage``. Holds the lookup once.

    A ``sample_id`` is the hash of a pair's bytes, so rows that share one are the same pair delivered twice (an
    exact re-post, common in crawls): the first row seen passes, the others are dropped here as the duplicates
    they are (one actor holds the lookup: the stream passes through it)."""

    def __init__(self, keep: dict[str, int]):
        self.keep = keep
        self.passed: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.zeros(len(batch[C.SAMPLE_ID]), dtype=bool)
        for row, sample in enumerate(batch[C.SAMPLE_ID]):
            sample = str(sample)
            if sample in self.keep and sample not in self.passed:
                rows[row] = True
                self.passed.add(sample)
        out = {key: np.asarray(value)[rows] for key, value in batch.items()}
        out[C.STAGE] = np.array([self.keep[str(sample)] for sample in out[C.SAMPLE_ID]], dtype=np.int8)
        return out


def to_store_table(batch: dict[str, np.ndarray], resolutions: list[int]) -> pa.Table:
    """One encoded batch as a table of the store schema; rows whose encoding failed are left out (logged)."""
    ok = np.array([not error for error in batch[C.ENCODE_ERROR]], dtype=bool)
    for sample, error in zip(batch[C.SAMPLE_ID][~ok], batch[C.ENCODE_ERROR][~ok], strict=True):
        logger.warning("not stored: %s (%s)", sample, error)
    count = int(ok.sum())
    columns: dict[str, pa.Array] = {}
    fields = {field.name: field for field in C.base_fields() + C.resolution_fields(tuple(resolutions))}
    sizes = {column(resolution) for resolution in resolutions for column in (C.height_column, C.width_column)}
    extra = {C.extra_source_latents_column(resolution): resolution for resolution in resolutions}
    for name, field in fields.items():
        if name in batch:
            values = np.asarray(batch[name])[ok]
            if name in sizes:
                columns[name] = pa.array(values, field.type, mask=values < 0)
            elif field.type == pa.binary():
                # A column of nulls only (no edit row in the batch) reaches this stage as float NaN from Ray Data.
                columns[name] = pa.array([v if isinstance(v, bytes | bytearray) else None for v in values], field.type)
            else:
                columns[name] = pa.array(list(values), field.type)
        elif name in (C.RENDERED_TEXT, C.TEXT_LANGUAGE, C.CATEGORY, C.SOURCE):
            columns[name] = pa.array([""] * count, pa.string())
        elif name == C.TASK:
            columns[name] = pa.array([C.T2I] * count, pa.string())
        elif name in {C.source_latents_column(resolution) for resolution in resolutions}:
            columns[name] = pa.nulls(count, pa.binary())
        elif name in extra:
            columns[name] = _extra_references(batch, extra[name], ok)
    for name in STORED_ANNOTATION_COLUMNS:
        if name in batch:
            columns[name] = pa.array([str(v) for v in np.asarray(batch[name])[ok]], pa.string())
    for name in sorted(batch):
        if C.is_score_column(name) and name != C.SCORE_PHASH:
            columns[name] = pa.array(np.asarray(batch[name], dtype=np.float64)[ok], pa.float64())
    return pa.table(columns)


def _extra_references(batch: dict[str, np.ndarray], resolution: int, ok: np.ndarray) -> pa.Array:
    """The store's ``extra_source_latents_<res>``: references 2..n of each kept row in order, null where none."""
    per_index = [
        np.asarray(batch[reference_latents_column(resolution, index)])[ok]
        for index in EXTRA_REFERENCES
        if reference_latents_column(resolution, index) in batch
    ]
    rows = []
    for row in range(int(ok.sum())):
        values = [column[row] for column in per_index if isinstance(column[row], bytes | bytearray)]
        rows.append(values or None)
    return pa.array(rows, pa.list_(pa.binary()))


def kept_samples(labels_path: str | pathlib.Path, min_stage: int, skip: set[str] = frozenset()) -> dict[str, int]:
    """``sample_id -> stage`` of the labelled samples that reach ``min_stage``, less ``skip``. A pair delivered
    several times has one row per copy (the copies after the first marked duplicates): it takes its best stage."""
    labels = pq.read_table(labels_path, columns=[C.SAMPLE_ID, C.STAGE])
    stages: dict[str, int] = {}
    for sample, stage in zip(labels.column(0).to_pylist(), labels.column(1).to_pylist(), strict=True):
        stages[sample] = max(int(stage), stages.get(sample, -1))
    return {sample: stage for sample, stage in stages.items() if stage >= min_stage and sample not in skip}


def encoded_dataset(scored_dir: str | pathlib.Path, keep: dict[str, int], config: EncodeConfig) -> ray.data.Dataset:
    """The kept samples encoded, as a lazy Ray Dataset of store-schema rows: what ``encode_pass`` commits to the
    store, and what a streaming pretraining job (``feed: stream``) hands its workers directly."""
    dataset = read_parquet(scored_dir, override_num_blocks=local_read_blocks())
    # The filter runs where the VAE encoder runs and in its batch size: one light actor holding the lookup. A
    # larger batch would merge the stream's blocks, and the store would only grow at the end of a small run.
    pool = {key: getattr(config.vae_pool, key) for key in ("batch_size", "resources", "label_selector")}
    dataset = map_stage(dataset, KeepSamples, PoolConfig(**pool), keep=keep)
    # Decoding and cropping on the CPU pool; the VAE actors receive uint8 crops, each prepared batch ordered by crop
    # shape (pipelines.encode's docstring: how pixels travel, why no dataset-wide sort).
    dataset = map_stage(dataset, PreparePixels, config.prepare_pool, config=config, group_by_shape=True)
    dataset = map_stage(dataset, VaeEncodeStage, config.vae_pool, config=config)
    dataset = map_stage(dataset, TextEncodeStage, config.text_pool, config=config)
    return dataset.map_batches(to_store_table, fn_kwargs={"resolutions": config.resolutions}, batch_format="numpy")


def encode_pass(scored_dir: str | pathlib.Path, labels_path: str | pathlib.Path, config: EncodeConfig) -> int:
    """Encode the kept samples that are not stored yet and commit them; returns how many were submitted."""
    if config.store_dir is None:
        raise ValueError("encode_pass needs EncodeConfig.store_dir")
    # Before anything is read: a store written with another encoder, VAE, resolution or vision area is refused.
    ensure_header(config.store_dir, store_header(config))
    done = committed_sample_ids(config.store_dir)
    keep = kept_samples(labels_path, config.min_stage, done)
    logger.info("encoding %d samples (%d already in the store)", len(keep), len(done))
    if not keep:
        return 0
    dataset = encoded_dataset(scored_dir, keep, config)
    dataset.write_datasink(LatentStoreSink(config.store_dir, rows_per_shard=config.rows_per_shard))
    return len(keep)
