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
import pyarrow.compute as pc
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
    # Rows without latents at this resolution (source too small) are dropped by the batcher, not in the scan: a
    # not-null condition makes Arrow copy every column of every row even where no value is null.
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
    latents = C.latents_column(resolution)
    conditions = conditions or [(latents, "not_null", None)]
    table = dataset.to_table(columns=projection(resolution, extra_columns), filter=arrow_filter(conditions))
    if table.column(latents).null_count:
        table = table.filter(pc.is_valid(table.column(latents)))
    return table


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
    dataset = ray.data.read_parquet(paths, partitioning=None).select_columns(
        projection(resolution, extra_columns) + [C.STAGE] * (C.STAGE not in extra_columns)
    )
    return dataset.filter(expr=ray_filter(conditions)) if conditions else dataset


def committed_sample_ids(store_dir: str | pathlib.Path) -> set[str]:
    """Every ``sample_id`` in committed shards (reads that column only): what a resumed producer skips."""
    paths = shard_paths(store_dir)
    if not paths:
        return set()
    return set(pads.dataset(paths, format="parquet").to_table(columns=[C.SAMPLE_ID]).column(0).to_pylist())


def _binary_values(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Buffer]:
    """(offsets, data buffer) of a binary column without copying its values."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=len(column) + 1, offset=column.offset * 4)
    return offsets, column.buffers()[2]


def _stacked(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """Equal-size float16 tensors of consecutive rows: one view of the Arrow buffer when contiguous."""
    offsets, data = _binary_values(column)
    size = int(np.prod(shape)) * 2
    if len(offsets) > 1 and np.all(np.diff(offsets) == size):
        return np.frombuffer(data, dtype="<f2", count=(len(offsets) - 1) * size // 2, offset=int(offsets[0])).reshape(
            len(offsets) - 1, *shape
        )
    raise ValueError(f"latents are not all {shape}: decode a single-shape batch (iter_bucketed_batches)")


def decode_batch(batch: pa.Table | dict[str, np.ndarray], resolution: int) -> dict[str, torch.Tensor]:
    """Rows of one bucket -> ``latents [B, 16, h, w]`` float16, ``text_embeds [B, L, D]`` float16 zero-padded and
    ``text_mask [B, L]`` int64 (the layout of ``models.condition_encoder.PromptEmbeds``). Each tensor is copied
    once, straight from the Arrow buffers."""
    if isinstance(batch, dict):
        batch = pa.table(
            {key: list(value) if np.asarray(value).dtype == object else value for key, value in batch.items()}
        )
    heights = batch.column(C.height_column(resolution)).to_numpy()
    widths = batch.column(C.width_column(resolution)).to_numpy()
    if len(set(heights.tolist())) != 1 or len(set(widths.tolist())) != 1:
        raise ValueError("decode_batch takes rows of one shape; use iter_bucketed_batches")
    shape = (C.LATENT_CHANNELS, int(heights[0]) // 8, int(widths[0]) // 8)
    latents = torch.from_numpy(_stacked(batch.column(C.latents_column(resolution)), shape).copy())
    lengths = batch.column(C.TEXT_LEN).to_numpy().astype(np.int64)
    dim = int(batch.column(C.TEXT_DIM)[0].as_py())
    offsets, data = _binary_values(batch.column(C.TEXT_EMBEDS))
    values = np.frombuffer(data, dtype="<f2", count=int(offsets[-1] - offsets[0]) // 2, offset=int(offsets[0]))
    embeds = np.zeros((len(lengths), int(lengths.max()), dim), dtype=np.float16)
    starts = (offsets[:-1] - offsets[0]) // 2
    for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        embeds[row, :length] = values[start : start + length * dim].reshape(length, dim)
    mask = (np.arange(embeds.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return {
        "latents": latents,
        "text_embeds": torch.from_numpy(embeds),
        "text_mask": torch.from_numpy(mask),
        "sample_id": batch.column(C.SAMPLE_ID).to_pylist(),
    }


def iter_bucketed_batches(
    batches: Iterable[pa.RecordBatch | pa.Table | dict[str, np.ndarray]],
    batch_size: int,
    resolution: int,
    *,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Regroup a stream of row batches (any buckets) into decoded batches of ``batch_size`` rows of one shape.

    Rows wait in one buffer per bucket (Arrow slices, no copies) until it holds a full batch; rows without latents
    at ``resolution`` are skipped; at the end, partial batches are emitted unless ``drop_last``. Order within a
    bucket is kept, so a seeded stream gives the same batches every time. Feed it ``batch_format="pyarrow"``.
    """
    buffers: dict[str, list[pa.Table]] = {}
    counts: dict[str, int] = {}
    latents = C.latents_column(resolution)

    def take(bucket: str, count: int) -> pa.Table:
        merged = pa.concat_tables(buffers[bucket]) if len(buffers[bucket]) > 1 else buffers[bucket][0]
        head, rest = merged.slice(0, count), merged.slice(count)
        buffers[bucket] = [rest] if rest.num_rows else []
        counts[bucket] -= count
        return head

    for batch in batches:
        if isinstance(batch, dict):
            batch = pa.table({k: list(v) if np.asarray(v).dtype == object else v for k, v in batch.items()})
        elif isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if batch.column(latents).null_count:
            batch = batch.filter(pc.is_valid(batch.column(latents)))
        buckets = batch.column(C.BUCKET).to_numpy(zero_copy_only=False)
        for bucket in np.unique(buckets):
            part = batch.filter(pa.array(buckets == bucket)) if len(np.unique(buckets)) > 1 else batch
            buffers.setdefault(str(bucket), []).append(part)
            counts[str(bucket)] = counts.get(str(bucket), 0) + part.num_rows
            while counts[str(bucket)] >= batch_size:
                yield decode_batch(take(str(bucket), batch_size), resolution)
    if not drop_last:
        for bucket in sorted(buffers):
            if counts.get(bucket, 0):
                yield decode_batch(take(bucket, counts[bucket]), resolution)
