"""Committing shards to the latent store: visible only when complete, listed in a manifest, safe to append.

Layout::

    <store>/bucket=<name>/part-<id>.parquet     one shard: rows of one aspect-ratio bucket
    <store>/_manifest/<commit>.json             one file per commit: its shards' entries (path, bucket, rows)

A commit (one ``commit_table`` call, one shard per bucket of its rows) is atomic: every shard is written under a
hidden temporary name, flushed and renamed into place, and only then are all of them listed at once by the commit's
manifest file (itself written to a temporary name and renamed). Readers list the manifest, never the folders, so
the shards of a commit being written, or left behind by a crash before its manifest file exists, are invisible;
renames are atomic on POSIX file systems. Many writers append at once without a lock: each commit is its own file.
Shard and commit ids hash the buckets and sample ids, so a write that is retried after a failure finds its commit
and stores nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink

from store import columns as C

MANIFEST_DIR = "_manifest"
# Rows per Parquet row group: the unit a reader reads, skips by statistics and reads ahead. At about 1 MB of tensors
# per row, 64 rows keep a reader's memory near 64 MB per resolution and the per-group overhead negligible.
ROW_GROUP_ROWS = 64
# Categorical columns that repeat a few values: dictionary encoding keeps them small and fast to filter.
DICTIONARY_COLUMNS = [C.SOURCE, C.BUCKET, C.CAPTION_KIND, C.TEXT_LANGUAGE, C.CATEGORY]


def _fsync_write(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def content_id(bucket: str, sample_ids: list[str]) -> str:
    """A shard id that depends only on its rows: a retry of the same write maps to the same id."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(bucket.encode())
    for sample in sorted(sample_ids):
        digest.update(b"\0" + sample.encode())
    return digest.hexdigest()


def commit_table(store_dir: str | pathlib.Path, table: pa.Table) -> list[dict]:
    """Write ``table`` as one shard per bucket and list them all in one manifest file; returns their entries."""
    store = pathlib.Path(store_dir)
    if C.BUCKET not in table.column_names or C.SAMPLE_ID not in table.column_names:
        raise ValueError(f"a store table needs {C.SAMPLE_ID!r} and {C.BUCKET!r} columns; it has {table.column_names}")
    (store / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    parts = {
        bucket: table.filter(pc.equal(table.column(C.BUCKET), bucket))
        for bucket in sorted(set(table.column(C.BUCKET).to_pylist()))
    }
    shard_ids = {bucket: content_id(bucket, part.column(C.SAMPLE_ID).to_pylist()) for bucket, part in parts.items()}
    commit = content_id("commit", sorted(shard_ids.values()))
    if (store / MANIFEST_DIR / f"{commit}.json").exists():
        return []  # the same rows were committed already (a retried write task): never store them twice
    created = time.time()
    entries = []
    for bucket, part in parts.items():
        shard_id = shard_ids[bucket]
        folder = store / f"bucket={bucket}"
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"bucket={bucket}/part-{shard_id}.parquet"
        temporary = folder / f".part-{shard_id}.parquet.tmp"
        pq.write_table(
            part,
            temporary,
            compression="none",
            use_dictionary=[name for name in DICTIONARY_COLUMNS if name in part.column_names],
            row_group_size=ROW_GROUP_ROWS,
        )
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        temporary.replace(store / relative)
        entries.append(
            {"shard": shard_id, "path": relative, "bucket": bucket, "num_rows": part.num_rows, "created": created}
        )
    manifest_tmp = store / MANIFEST_DIR / f".{commit}.json.tmp"
    _fsync_write(manifest_tmp, json.dumps({"commit": commit, "created": created, "shards": entries}).encode())
    manifest_tmp.replace(store / MANIFEST_DIR / f"{commit}.json")
    return entries


class LatentStoreSink(Datasink):
    """``dataset.write_datasink(LatentStoreSink(store))``: each write task commits its rows as shards."""

    def __init__(self, store_dir: str | pathlib.Path, rows_per_shard: int = 1000):
        self.store_dir = str(store_dir)
        self.rows_per_shard = rows_per_shard

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_shard

    def get_name(self) -> str:
        return "LatentStore"

    def write(self, blocks: Iterable[pa.Table], ctx) -> list[dict]:
        tables = [block if isinstance(block, pa.Table) else pa.Table.from_pandas(block) for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return []
        return commit_table(self.store_dir, pa.concat_tables(tables, promote_options="default"))

    def on_write_complete(self, write_result) -> None:
        self.num_shards_written = sum(len(entries) for entries in write_result.write_returns)
