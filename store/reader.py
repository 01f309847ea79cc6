"""Reading the latent store: list committed shards, filter on stored scores, project one resolution, batch by shape.

Three ways in, one selection: ``stream_rows`` streams the rows row group by row group (what training workers and
the benchmark read: bounded memory, the disk reading ahead of the decoding), ``read_store`` returns a Ray Dataset
(``get_dataset_shard(...).iter_batches()``), ``read_table`` one pyarrow table for tools and tests. All list the
manifest (never the folders), apply the row filter (``stage`` and predicates over stored scores, as
``(column, operator, value)`` triples that a YAML config can hold) with Parquet statistics skipping row groups that
cannot match, and read only the projected columns: the chosen resolution's latents, never the others.
``iter_bucketed_batches`` turns a stream of mixed-bucket rows into batches of one shape.

torch is imported by ``decode_batch`` only (the training side): the producers, which list and filter the store, do
not load it.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from store import columns as C
from store.writer import MANIFEST_DIR

if TYPE_CHECKING:
    import torch

# Columns a training batch needs besides the latents of its resolution.
TRAINING_COLUMNS: tuple[str, ...] = (C.SAMPLE_ID, C.BUCKET, C.CAPTION, C.TEXT_EMBEDS, C.TEXT_LEN, C.TEXT_DIM)


def list_shards(store_dir: str | pathlib.Path) -> list[dict]:
    """Manifest entries of every committed shard, oldest first; an empty list for an empty or new store."""
    manifest = pathlib.Path(store_dir) / MANIFEST_DIR
    if not manifest.is_dir():
        return []
    entries = []
    for path in manifest.glob("*.json"):
        listed = json.loads(path.read_text())
        # A commit's file lists its shards; stores written before commits were atomic have a file per shard.
        entries += listed["shards"] if "shards" in listed else [listed]
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


def selection(resolution: int, min_stage: int | None, predicates: Iterable[Predicate]) -> list[Predicate]:
    """The conditions (ANDed) that select a phase's rows: its predicates (each operator checked) and its minimum
    stage. Compiled to Arrow (``arrow_filter``), Ray Data (``ray_filter``) and row masks by the readers."""
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
    """The columns a training batch at ``resolution`` reads (edit rows' source latents included)."""
    return [
        *TRAINING_COLUMNS,
        C.latents_column(resolution),
        C.source_latents_column(resolution),
        C.height_column(resolution),
        C.width_column(resolution),
        *extra,
    ]


# Columns a store written before editing existed lacks; reads leave them out there (every row is text-to-image).
OPTIONAL_COLUMNS_PREFIXES: tuple[str, ...] = ("source_latents_", C.TASK)


def present(columns: list[str], names: Iterable[str]) -> list[str]:
    """``columns`` less the optional ones a shard's schema (``names``) lacks."""
    names = set(names)
    return [c for c in columns if c in names or not c.startswith(OPTIONAL_COLUMNS_PREFIXES)]


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
    conditions = selection(resolution, min_stage, predicates)
    latents = C.latents_column(resolution)
    conditions = conditions or [(latents, "not_null", None)]
    columns = present(projection(resolution, extra_columns), dataset.schema.names)
    table = dataset.to_table(columns=columns, filter=arrow_filter(conditions))
    if table.column(latents).null_count:
        table = table.filter(pc.is_valid(table.column(latents)))
    return table


def count_rows(
    store_dir: str | pathlib.Path,
    resolution: int,
    *,
    min_stage: int | None = None,
    predicates: Iterable[Predicate] = (),
    by: str | None = None,
) -> int | dict:
    """How many rows ``read_table`` would return with the same arguments, read from the filter's columns (and
    ``by``) only: the resolution's height column stands for its latents (the producers leave both null together),
    so no tensor is read. With ``by``: ``{value: rows}`` of that column among them."""
    conditions = selection(resolution, min_stage, predicates) + [(C.height_column(resolution), "not_null", None)]
    columns = sorted({column for column, _, _ in conditions} | ({by} if by else set()))
    paths = shard_paths(store_dir)
    if not paths:
        return {} if by else 0
    dataset = pads.dataset(paths, format="parquet")
    missing = [column for column in columns if column not in dataset.schema.names]
    if missing:
        raise ValueError(f"the latent store {store_dir} has no column {missing[0]!r} (columns: {dataset.schema.names})")
    if by is None:
        return dataset.count_rows(filter=arrow_filter(conditions))
    table = dataset.to_table(columns=[by], filter=arrow_filter(conditions))
    counts = pc.value_counts(table.column(by).combine_chunks()) if table.num_rows else []
    return {entry["values"].as_py(): entry["counts"].as_py() for entry in counts}


# Row groups the disk is asked to read ahead of the one being decoded (about 64 MB each at 1 MB per row).
READ_AHEAD_GROUPS = 2

_ARROW_KERNELS = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def arrow_mask(table: pa.Table, conditions: list[Predicate]) -> np.ndarray | None:
    """The rows of ``table`` that pass every condition, as a boolean array; None when all pass (nothing to copy)."""
    mask = None
    for column, operator, value in conditions:
        values = table.column(column)
        if operator == "not_null":
            term = pc.is_valid(values)
        elif operator == "in":
            term = pc.is_in(values, value_set=pa.array(list(value)))
        else:
            term = _ARROW_KERNELS[operator](values, value)
        mask = term if mask is None else pc.and_(mask, term)
    if mask is None:
        return None
    keep = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    return None if keep.all() else keep


def _will_need(path: str, metadata: pq.FileMetaData, group: int, columns: set[str]) -> None:
    """Asks the kernel to start reading a row group's projected column chunks now (``POSIX_FADV_WILLNEED``).

    The Parquet reader reads and decodes in one thread; with this hint the disk fills the page cache with the next
    row group while the current one is decoded, so a cold read runs at the pace of the slower of the two instead of
    their sum. Only the projected chunks are hinted: the other resolutions stay on disk.
    """
    if not hasattr(os, "posix_fadvise") or group >= metadata.num_row_groups:
        return
    row_group = metadata.row_group(group)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema in columns:
                start = chunk.dictionary_page_offset or chunk.data_page_offset
                os.posix_fadvise(descriptor, start, chunk.total_compressed_size, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(descriptor)


def stream_rows(
    store_dir: str | pathlib.Path,
    resolution: int,
    *,
    min_stage: int | None = None,
    predicates: Iterable[Predicate] = (),
    extra_columns: Iterable[str] = (),
    shards: list[dict] | None = None,
) -> Iterator[pa.Table]:
    """The filtered, projected rows of ``shards`` (default: every committed shard, listed now), one table per row
    group, in order. Row groups whose Parquet statistics exclude the filter are not read; a row group whose rows all
    pass is handed on as read (no copy); the next row group is read ahead by the disk while this one is decoded."""
    root = pathlib.Path(store_dir)
    shards = list_shards(store_dir) if shards is None else shards
    conditions = selection(resolution, min_stage, predicates)
    columns = projection(resolution, extra_columns)
    columns += [column for column, _, _ in conditions if column not in columns]  # filtered on, kept (small)
    wanted = set(columns)
    expression = arrow_filter(conditions) if conditions else None
    for entry in shards:
        path = str(root / entry["path"])
        # Memory-mapped: pages are decoded straight from the page cache, one copy fewer than read() into a buffer
        # (about 1.6x faster cold here). Safe because a committed shard is never rewritten or truncated.
        parquet = pq.ParquetFile(path, memory_map=True)
        shard_columns = present(columns, parquet.schema_arrow.names)
        groups = list(range(parquet.metadata.num_row_groups))
        if expression is not None:  # row-group statistics rule out groups that cannot match
            (fragment,) = pads.dataset(path, format="parquet").get_fragments()
            groups = [piece.row_groups[0].id for piece in fragment.split_by_row_group(expression)]
        for position, group in enumerate(groups):
            ahead = (
                groups[position : position + READ_AHEAD_GROUPS + 1]
                if position == 0
                else groups[position + READ_AHEAD_GROUPS : position + READ_AHEAD_GROUPS + 1]
            )
            for later in ahead:
                _will_need(path, parquet.metadata, later, wanted)
            table = parquet.read_row_group(group, columns=shard_columns)
            keep = arrow_mask(table, conditions)
            if keep is not None:
                table = table.filter(pa.array(keep))
            if table.num_rows:
                yield table


def prefetched(items: Iterator, depth: int, name: str = "store-prefetch") -> Iterator:
    """Runs ``items`` on a background thread ``depth`` items ahead of the consumer (pyarrow reads and numpy copies
    release the GIL, so reading overlaps the consumer's work); an error in the thread is raised in the consumer."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    end = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put(item)
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            ready.put(error)
        ready.put(end)

    thread = threading.Thread(target=produce, daemon=True, name=name)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def read_store(
    store_dir: str | pathlib.Path,
    resolution: int,
    *,
    min_stage: int | None = None,
    predicates: Iterable[Predicate] = (),
    extra_columns: Iterable[str] = (),
):
    """A Ray Dataset of the committed shards, filtered and projected like ``read_table``."""
    from store.parquet import read_parquet

    paths = shard_paths(store_dir)
    if not paths:
        raise ValueError(f"the latent store {store_dir} has no committed shards yet")
    conditions = selection(resolution, min_stage, predicates)
    columns = projection(resolution, extra_columns) + [C.STAGE] * (C.STAGE not in extra_columns)
    dataset = read_parquet(paths, partitioning=None).select_columns(present(columns, pq.read_schema(paths[0]).names))
    return dataset.filter(expr=ray_filter(conditions)) if conditions else dataset


def committed_sample_ids(store_dir: str | pathlib.Path) -> set[str]:
    """Every ``sample_id`` in committed shards (reads that column only): what a resumed producer skips."""
    paths = shard_paths(store_dir)
    if not paths:
        return set()
    return set(pads.dataset(paths, format="parquet").to_table(columns=[C.SAMPLE_ID]).column(0).to_pylist())


def _binary_chunks(column: pa.Array | pa.ChunkedArray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(offsets, data bytes) of each chunk of a binary column, as views of the Arrow buffers (no copy)."""
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        yield (
            np.frombuffer(offsets, dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4),
            np.frombuffer(data, dtype=np.uint8),
        )


def _pool_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in Arrow's memory pool. The pool keeps freed pages mapped, so a reader that allocates
    a batch per step reuses memory; numpy's large allocations are mapped afresh and returned to the OS on free, and
    faulting 45 MB of new pages in costs about as much as reading them from the page cache."""
    count = int(np.prod(shape))
    buffer = pa.allocate_buffer(count * np.dtype(dtype).itemsize)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def decode_batch(batch: pa.Table | dict[str, np.ndarray], resolution: int) -> dict[str, torch.Tensor]:
    """Rows of one bucket -> ``latents [B, 16, h, w]`` float16, ``text_embeds [B, L, D]`` float16 zero-padded and
    ``text_mask [B, L]`` int64 (the layout of ``models.condition_encoder.PromptEmbeds``). Each tensor is copied
    once, straight from the Arrow buffers into the batch."""
    import torch

    if isinstance(batch, dict):
        batch = pa.table(
            {key: list(value) if np.asarray(value).dtype == object else value for key, value in batch.items()}
        )
    heights = batch.column(C.height_column(resolution)).to_numpy()
    widths = batch.column(C.width_column(resolution)).to_numpy()
    if len(set(heights.tolist())) != 1 or len(set(widths.tolist())) != 1:
        raise ValueError("decode_batch takes rows of one shape; use iter_bucketed_batches")
    shape = (C.LATENT_CHANNELS, int(heights[0]) // 8, int(widths[0]) // 8)
    size = int(np.prod(shape)) * 2
    latents = _pool_array((batch.num_rows, *shape), np.float16)
    row = 0
    for offsets, data in _binary_chunks(batch.column(C.latents_column(resolution))):
        count = len(offsets) - 1
        if not np.all(np.diff(offsets) == size):
            raise ValueError(f"latents are not all {shape}: decode a single-shape batch (iter_bucketed_batches)")
        latents[row : row + count] = data[offsets[0] : offsets[-1]].view("<f2").reshape(count, *shape)
        row += count

    source_latents = None
    source = C.source_latents_column(resolution)
    if source in batch.column_names and batch.column(source).null_count < batch.num_rows:
        if batch.column(source).null_count:
            raise ValueError("decode_batch takes edit rows or text-to-image rows, not both; use iter_bucketed_batches")
        source_latents = _pool_array((batch.num_rows, *shape), np.float16)
        row = 0
        for offsets, data in _binary_chunks(batch.column(source)):
            count = len(offsets) - 1
            if not np.all(np.diff(offsets) == size):
                raise ValueError(f"source latents are not all {shape} (the target's shape)")
            source_latents[row : row + count] = data[offsets[0] : offsets[-1]].view("<f2").reshape(count, *shape)
            row += count

    lengths = batch.column(C.TEXT_LEN).to_numpy().astype(np.int64)
    dim = int(batch.column(C.TEXT_DIM)[0].as_py())
    embeds = _pool_array((len(lengths), int(lengths.max()), dim), np.float16)
    row = 0
    for offsets, data in _binary_chunks(batch.column(C.TEXT_EMBEDS)):
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            length = int(lengths[row])
            if (end - start) != length * dim * 2:
                raise ValueError(f"row {row}: text embedding of {end - start} bytes for {length} x {dim} float16")
            embeds[row, :length] = data[start:end].view("<f2").reshape(length, dim)
            embeds[row, length:] = 0
            row += 1
    mask = (np.arange(embeds.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    out = {
        "latents": torch.from_numpy(latents),
        "text_embeds": torch.from_numpy(embeds),
        "text_mask": torch.from_numpy(mask),
        "sample_id": batch.column(C.SAMPLE_ID).to_pylist(),
    }
    if source_latents is not None:
        out["source_latents"] = torch.from_numpy(source_latents)
    return out


def iter_bucketed_batches(
    batches: Iterable[pa.RecordBatch | pa.Table | dict[str, np.ndarray]],
    batch_size: int,
    resolution: int,
    *,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Regroup a stream of row batches (any buckets) into decoded batches of ``batch_size`` rows of one shape.

    Rows wait in one buffer per bucket (Arrow slices, no copies) until it holds a full batch; edit rows (with source
    latents) and text-to-image rows wait apart, so a batch is all of one kind; rows without latents
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
        source = C.source_latents_column(resolution)
        if source in batch.column_names and batch.column(source).null_count < batch.num_rows:
            edit = pc.is_valid(batch.column(source)).to_numpy(zero_copy_only=False)
            buckets = np.where(edit, np.char.add(buckets.astype(str), "+edit"), buckets.astype(str)).astype(object)
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
