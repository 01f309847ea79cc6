"""Reading the latent store: list committed shards, filter on stored scores (``store.predicates``), project one
resolution; decoding and batching by shape are ``store.batches``'s.

Three ways in, one selection: ``stream_rows`` streams the rows row group by row group (what training workers and
the benchmark read: bounded memory, the disk reading ahead of the decoding), ``read_store`` returns a Ray Dataset
(``get_dataset_shard(...).iter_batches()``), ``read_table`` one pyarrow table for tools and tests. All list the
manifest (never the folders), apply the row filter (``stage`` and predicates over stored scores, as
``(column, operator, value)`` triples that a YAML config can hold) with Parquet statistics skipping row groups that
cannot match, and read only the projected columns: the chosen resolution's latents, never the others.
``prefetched`` runs a stream a few items ahead on a thread. Nothing here imports torch: the producers, which list
and filter the store, do not load it.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from store import columns as C
from store.predicates import Predicate, arrow_filter, arrow_mask, ray_filter, selection
from store.writer import MANIFEST_DIR

if TYPE_CHECKING:
    pass

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


def stored_columns(store_dir: str | pathlib.Path) -> list[str]:
    """The column names of the store's shards (of its first shard: one schema for all), [] while it has none."""
    paths = shard_paths(store_dir)
    return pq.read_schema(paths[0]).names if paths else []


def projection(resolution: int, extra: Iterable[str] = ()) -> list[str]:
    """The columns a training batch at ``resolution`` reads (edit rows' source latents, all references, included)."""
    return [
        *TRAINING_COLUMNS,
        C.latents_column(resolution),
        C.source_latents_column(resolution),
        C.extra_source_latents_column(resolution),
        C.height_column(resolution),
        C.width_column(resolution),
        *extra,
    ]


# Columns a store written before editing (or multi-image editing) existed lacks; reads leave them out there.
OPTIONAL_COLUMNS_PREFIXES: tuple[str, ...] = ("source_latents_", "extra_source_latents_", C.TASK)


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
