"""``ray.data.read_parquet`` with a footer-reader pool sized to the files it reads.

Ray Data lists Parquet files by reading their footers on a pool of ``FooterReader`` actors, and starts 32 of them
for every ``read_parquet`` whatever the number of files (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``). Each actor is a
Python process of its own: on a 2-core node, starting 32 to read the footers of three files made a read take 11 s
instead of 2 (docs/costs.md §3). The actors take the footers in batches of ``RAY_DATA_PARQUET_FOOTER_BATCH_SIZE``
files (10), so actors beyond the number of batches start and never get work: ``read_parquet`` here asks for one
actor per batch, never more than Ray's own default (or the operator's setting of that variable).
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
from collections.abc import Sequence

import ray.data

NUM_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
BATCH_SIZE_ENV = "RAY_DATA_PARQUET_FOOTER_BATCH_SIZE"
RAY_NUM_ACTORS, RAY_BATCH_SIZE = 32, 10  # Ray Data's defaults for the two variables
# Ray reads the variable when read_parquet builds its file indexer: the lock keeps two reads in threads of one
# driver from seeing each other's value.
_ENV_LOCK = threading.Lock()


def footer_actors(num_files: int) -> int:
    """How many footer readers ``num_files`` Parquet files need: one per batch of footers, within Ray's cap."""
    cap = int(os.environ.get(NUM_ACTORS_ENV, RAY_NUM_ACTORS))
    batch = int(os.environ.get(BATCH_SIZE_ENV, RAY_BATCH_SIZE))
    return max(1, min(cap, math.ceil(num_files / batch)))


def _names(paths: str | pathlib.Path | Sequence[str | pathlib.Path]) -> list[str]:
    return [str(path) for path in ([paths] if isinstance(paths, str | pathlib.Path) else paths)]


def count_parquet_files(paths: str | pathlib.Path | Sequence[str | pathlib.Path]) -> int:
    """The Parquet files ``paths`` name: files as given, folders searched as Ray searches them (recursively)."""
    return sum(
        sum(1 for _ in path.rglob("*.parquet")) if path.is_dir() else 1 for path in map(pathlib.Path, _names(paths))
    )


def read_parquet(paths: str | pathlib.Path | Sequence[str | pathlib.Path], **kwargs) -> ray.data.Dataset:
    """``ray.data.read_parquet(paths, **kwargs)`` starting only the footer readers its files need."""
    names = _names(paths)
    wanted = str(footer_actors(count_parquet_files(names)))
    with _ENV_LOCK:
        before = os.environ.get(NUM_ACTORS_ENV)
        os.environ[NUM_ACTORS_ENV] = wanted
        try:
            return ray.data.read_parquet(names, **kwargs)
        finally:
            if before is None:
                os.environ.pop(NUM_ACTORS_ENV, None)
            else:
                os.environ[NUM_ACTORS_ENV] = before
