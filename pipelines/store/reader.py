"""Reading the latent store: list committed shards, filter on stored scores, project one resolution, batch by shape.

``read_store`` returns a Ray Dataset for consumers (``get_dataset_shard(...).iter_batches()``), ``read_table`` the
same rows as one pyarrow table for tools and tests. Both list the manifest (never the folders), push the row filter
(``stage`` and predicates over stored scores, as ``(column, operator, value)`` triples that a YAML config can hold)
and the column projection down to the Parquet reader, and read only the chosen resolution's latents. ``iter_bucketed_batches`` turns a stream of mixed-bucket rows into batches of one shape.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from pipelines.store import columns as C
from pipelines.store.writer import MANIFEST_DIR

# Columns a training batch needs besides the latents of its resolution.
TRAINING_COLUMNS: tuple[str, ...] = (C.SAMPLE_ID, C.BUCKET, C.CAPTION, C.TEXT_EMBEDS, C.TEXT_LEN, C.TEXT_DIM)


def list_shards(store_dir: str | pathlib.Path) -> list[dict]:
    """Manifest entries of every committed shard, oldest first; an empty list for an empty or new store."""
    manifest = pathlib.Path(store_dir) / MANIFEST_DIR
    if not manifest.is_dir():
        return []
    entries = [json.loads(path.read_text()) for path in manifest.glob("*.json")]
    return sorted(entries, key=lambda entry: (entry["created"], entry["shard"]))


def shard_paths(store_dir: str | pathlib.Path) -> list[str]:
    root = pathlib.Path(store_dir)
    return [str(root / entry["path"]) for entry in list_shards(store_dir)]


Predicate = tuple[str, str, object]  # (column, operator, value), e.g. ("score_blur", ">=", 100.0)
_OPERATORS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _conditions(resolution: int, min_stage: int | None, predicates: Iterable[Predicate]) -> list[Predicate]:
    conditions = list(predicates)
    for column, operator, _ in conditions:
        if operator not in _OPERATORS and operator != "in":
            raise ValueError(f"predicate on {column!r}: operator {operator!r} is not one of {[*_OPERATORS, 'in']}")
    if min_stage is not None:
        conditions.append((C.STAGE, ">=", min_stage))
    # Rows whose source was too small for this resolution have no latents there.
    conditions.append((C.latents_column(resolution), "not_null", None))
    return conditions


def arrow_filter(conditions: list[Predicate]) -> pads.Expression:
    """The conditions (ANDed) as a pyarrow dataset expression."""
    expression = None
    for column, operator, value in conditions:
        field = pads.field(column)
        if operator == "not_null":
            term = field.is_valid()
        elif operator == "in":
            term = field.isin(list(value))
        else:
            term = _OPERATORS[operator](field, value)
        expression = term if expression is None else expression & term
    return expression


def ray_filter(conditions: list[Predicate]):
    """The same conditions as a Ray Data expression (pushed down into the Parquet scan by Ray's optimizer)."""
    from ray.data.expressions import col

    expression = None
    for column, operator, value in conditions:
        if operator == "not_null":
            term = col(column).is_not_null()
        elif operator == "in":
            term = col(column).is_in(list(value))
        else:
            term = _OPERATORS[operator](col(column), value)
        expression = term if expression is None else expression & term
    return expression


def projection(resolution: int, extra: Iterable[str] = ()) -> list[str]:
    return [
        *TRAINING_COLUMNS,
        C.latents_column(resolution),
        C.height_column(resolution),
        C.width_column(resolution),
        *extra,
    ]


def read_table(
    store_dir: str | pathlib.Path,
    resolution: int,
    *,
    min_stage: int | None = None,
    predicates: Iterable[Predicate] = (),
    extra_columns: Iterable[str] = (),
) -> pa.Table:
    """The filtered, projected rows as one table (tools, tests, small stores)."""
    paths = shard_paths(store_dir)
    if not paths:
        return pa.table({})
    dataset = pads.dataset(paths, format="parquet")
    conditions = _conditions(resolution, min_stage, predicates)
    return dataset.to_table(columns=projection(resolution, extra_columns), filter=arrow_filter(conditions))


def read_store(
    store_dir: str | pathlib.Path,
    resolution: int,
    *,
    min_stage: int | None = None,
    predicates: Iterable[Predicate] = (),
    extra_columns: Iterable[str] = (),
):
    """A Ray Dataset of the committed shards, filtered and projected like ``read_table``."""
    import ray.data

    paths = shard_paths(store_dir)
    if not paths:
        raise ValueError(f"the latent store {store_dir} has no committed shards yet")
    conditions = _conditions(resolution, min_stage, predicates)
    return (
        ray.data.read_parquet(paths, partitioning=None)
        .select_columns(projection(resolution, extra_columns) + [C.STAGE] * (C.STAGE not in extra_columns))
        .filter(expr=ray_filter(conditions))
    )


def committed_sample_ids(store_dir: str | pathlib.Path) -> set[str]:
    """Every ``sample_id`` in committed shards (reads that column only): what a resumed producer skips."""
    paths = shard_paths(store_dir)
    if not paths:
        return set()
    return set(pads.dataset(paths, format="parquet").to_table(columns=[C.SAMPLE_ID]).column(0).to_pylist())


def decode_batch(batch: dict[str, np.ndarray], resolution: int) -> dict[str, torch.Tensor]:
    """Rows of one bucket -> ``latents [B, 16, h, w]`` float16, ``text_embeds [B, L, D]`` float16 zero-padded and
    ``text_mask [B, L]`` int64 (the layout of ``models.condition_encoder.PromptEmbeds``)."""
    heights = np.asarray(batch[C.height_column(resolution)])
    widths = np.asarray(batch[C.width_column(resolution)])
    if len(set(heights.tolist())) != 1 or len(set(widths.tolist())) != 1:
        raise ValueError("decode_batch takes rows of one shape; use iter_bucketed_batches")
    shape = (C.LATENT_CHANNELS, int(heights[0]) // 8, int(widths[0]) // 8)
    latents = np.stack([C.bytes_tensor(data, shape) for data in batch[C.latents_column(resolution)]])
    lengths = np.asarray(batch[C.TEXT_LEN], dtype=np.int64)
    dim = int(np.asarray(batch[C.TEXT_DIM])[0])
    embeds = np.zeros((len(lengths), int(lengths.max()), dim), dtype=np.float16)
    for row, (data, length) in enumerate(zip(batch[C.TEXT_EMBEDS], lengths, strict=True)):
        embeds[row, :length] = C.bytes_tensor(data, (int(length), dim))
    mask = (np.arange(embeds.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return {
        "latents": torch.from_numpy(latents),
        "text_embeds": torch.from_numpy(embeds),
        "text_mask": torch.from_numpy(mask),
        "sample_id": list(batch[C.SAMPLE_ID]),
    }


def iter_bucketed_batches(
    batches: Iterable[dict[str, np.ndarray] | pa.RecordBatch],
    batch_size: int,
    resolution: int,
    *,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Regroup a stream of row batches (any buckets) into decoded batches of ``batch_size`` rows of one shape.

    Rows wait in one buffer per bucket until it holds a full batch; at the end, partial batches are emitted unless
    ``drop_last``. Order within a bucket is kept, so a seeded stream gives the same batches every time.
    """
    buffers: dict[str, list[dict[str, np.ndarray]]] = {}
    counts: dict[str, int] = {}

    def take(bucket: str, count: int) -> dict[str, np.ndarray]:
        merged = {key: np.concatenate([part[key] for part in buffers[bucket]]) for key in buffers[bucket][0]}
        head = {key: value[:count] for key, value in merged.items()}
        rest = {key: value[count:] for key, value in merged.items()}
        buffers[bucket] = [rest] if len(rest[C.SAMPLE_ID]) else []
        counts[bucket] -= count
        return head

    for batch in batches:
        if isinstance(batch, pa.RecordBatch | pa.Table):
            batch = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names}
        buckets = np.asarray(batch[C.BUCKET])
        for bucket in np.unique(buckets):
            rows = buckets == bucket
            buffers.setdefault(bucket, []).append({key: np.asarray(value)[rows] for key, value in batch.items()})
            counts[bucket] = counts.get(bucket, 0) + int(rows.sum())
            while counts[bucket] >= batch_size:
                yield decode_batch(take(bucket, batch_size), resolution)
    if not drop_last:
        for bucket in sorted(buffers):
            if counts.get(bucket, 0):
                yield decode_batch(take(bucket, counts[bucket]), resolution)
