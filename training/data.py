"""The data of a phase: rows of the latent store selected by the phase, and the batches a worker trains on.

``phase_dataset`` lists the store's committed shards when it is called (so a phase sees every shard committed
before it starts), filters on ``stage`` and the phase's predicates (pushed into the Parquet scan), and thins rows by
the phase's mixture weights. Thinning is a deterministic function of ``sample_id`` and the seed, so a restarted
run sees the same rows. ``worker_batches`` turns a worker's shard into single-shape batches.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import numpy as np
import pyarrow.compute as pc
import torch

from pipelines.store import columns as C
from pipelines.store.reader import iter_bucketed_batches, read_store, read_table
from training.config import PhaseConfig

SYNTHETIC_PREFIX = "synthetic/"


def _unit_hash(values: np.ndarray, seed: int) -> np.ndarray:
    out = np.empty(len(values))
    for index, value in enumerate(values):
        digest = hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest()
        out[index] = int.from_bytes(digest, "little") / 2**64
    return out


def keep_probabilities(batch: dict[str, np.ndarray], phase: PhaseConfig, synthetic_odds: float | None) -> np.ndarray:
    """Probability of keeping each row under the phase's mixture weights and synthetic share."""
    count = len(batch[C.SAMPLE_ID])
    keep = np.ones(count)
    for column, weights in phase.mixture.items():
        top = max([1.0, *weights.values()])
        keep *= np.array([weights.get(str(value), 1.0) / top for value in batch[column]])
    if synthetic_odds is not None:
        synthetic = np.array([str(source).startswith(SYNTHETIC_PREFIX) for source in batch[C.SOURCE]])
        # Scale the over-represented side down so that synthetic rows make up the target share.
        keep *= np.where(synthetic, min(1.0, synthetic_odds), min(1.0, 1.0 / synthetic_odds) if synthetic_odds else 1.0)
    return keep


class MixtureFilter:
    """``map_batches`` function: keeps each row with its mixture probability, decided by its ``sample_id``."""

    def __init__(self, phase: PhaseConfig, seed: int, synthetic_odds: float | None):
        self.phase, self.seed, self.synthetic_odds = phase, seed, synthetic_odds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = _unit_hash(batch[C.SAMPLE_ID], self.seed) < keep_probabilities(batch, self.phase, self.synthetic_odds)
        return {key: np.asarray(value)[keep] for key, value in batch.items()}


def synthetic_odds(store_dir: str, phase: PhaseConfig) -> float | None:
    """How strongly synthetic rows must be kept relative to real ones for the phase's synthetic share.

    Returns ``target_ratio / current_ratio`` of synthetic to real rows among the rows the phase selects (> 1: keep
    all synthetic rows and thin the real ones), or None when the phase sets no share or one side is absent.
    """
    if phase.synthetic_share is None:
        return None
    table = read_table(
        store_dir, phase.resolution, min_stage=phase.min_stage, predicates=phase.predicates, extra_columns=[C.SOURCE]
    )
    if table.num_rows == 0:
        return None
    synthetic = int(pc.sum(pc.starts_with(table.column(C.SOURCE), SYNTHETIC_PREFIX)).as_py() or 0)
    real = table.num_rows - synthetic
    if synthetic == 0 or real == 0 or phase.synthetic_share in (0.0, 1.0):
        return None
    target = phase.synthetic_share / (1 - phase.synthetic_share)
    return target / (synthetic / real)


def mixture_columns(phase: PhaseConfig) -> list[str]:
    columns = list(phase.mixture)
    if phase.synthetic_share is not None:
        columns.append(C.SOURCE)
    return sorted(set(columns))


def phase_dataset(store_dir: str, phase: PhaseConfig, seed: int):
    """The phase's rows as a Ray Dataset (store listed now: shards committed before this call are included)."""
    dataset = read_store(
        store_dir,
        phase.resolution,
        min_stage=phase.min_stage,
        predicates=phase.predicates,
        extra_columns=mixture_columns(phase),
    )
    if phase.mixture or phase.synthetic_share is not None:
        dataset = dataset.map_batches(
            MixtureFilter(phase, seed, synthetic_odds(store_dir, phase)), batch_format="numpy"
        )
    return dataset


def worker_batches(
    shard, batch_size: int, resolution: int, *, shuffle_buffer: int, seed: int, skip: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over a worker's shard in batches of one shape; ``skip`` batches are consumed and dropped first
    (resuming in the middle of an epoch)."""
    rows = shard.iter_batches(
        batch_size=batch_size,
        batch_format="pyarrow",  # Arrow slices all the way to one copy per tensor (see iter_bucketed_batches)
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None,
    )
    for index, batch in enumerate(iter_bucketed_batches(rows, batch_size, resolution, drop_last=True)):
        if index >= skip:
            yield batch


class StoreStream:
    """A worker's share of a phase, read straight from the store's Parquet shards with pyarrow.

    Why not Ray Data here: on this class of machine Ray Data reads 1 MB tensor rows at about a tenth of pyarrow's
    rate and restarts its execution every epoch (seconds each), which left a small-store run waiting for data 95% of
    the time. Each worker instead lists the manifest at every epoch (so new shards join at the next epoch), takes
    every ``world``-th shard (or every ``world``-th row when there are fewer shards than workers), reads them with
    the phase's filter and projection pushed into the scan, thins by the mixture weights, shuffles in a seeded
    buffer, and hands single-shape batches to the loop through a prefetch thread. The order is a pure function of
    (seed, epoch, rank), so skipping the consumed batches resumes exactly.
    """

    def __init__(
        self,
        store_dir: str,
        phase: PhaseConfig,
        *,
        seed: int,
        rank: int,
        world: int,
        batch_size: int,
        shuffle_buffer: int,
        prefetch: int = 4,
    ):
        self.store_dir, self.phase, self.seed = store_dir, phase, seed
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.shuffle_buffer, self.prefetch = shuffle_buffer, prefetch
        self.synthetic_odds = synthetic_odds(store_dir, phase)

    def _row_batches(self, epoch: int):
        import pyarrow as pa
        import pyarrow.dataset as pads

        from pipelines.store.reader import _conditions, arrow_filter, list_shards, projection

        shards = list_shards(self.store_dir)
        if not shards:
            raise ValueError(f"the latent store {self.store_dir} has no committed shards")
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        split_rows = len(shards) < self.world
        mine = shards if split_rows else shards[self.rank :: self.world]
        conditions = _conditions(self.phase.resolution, self.phase.min_stage, self.phase.predicates)
        columns = projection(self.phase.resolution, mixture_columns(self.phase))
        for index in rng.permutation(len(mine)):
            path = str(pathlib.Path(self.store_dir) / mine[index]["path"])
            dataset = pads.dataset(path, format="parquet")
            kwargs = {"filter": arrow_filter(conditions)} if conditions else {}
            offset = 0
            for batch in dataset.to_batches(columns=columns, batch_size=64, **kwargs):
                table = pa.Table.from_batches([batch])
                if split_rows:
                    rows = (np.arange(offset, offset + table.num_rows) % self.world) == self.rank
                    offset += table.num_rows
                    table = table.filter(pa.array(rows))
                if self.phase.mixture or self.synthetic_odds is not None:
                    ids = table.column(C.SAMPLE_ID).to_numpy(zero_copy_only=False)
                    columns_np = {
                        name: table.column(name).to_numpy(zero_copy_only=False) for name in mixture_columns(self.phase)
                    }
                    keep = _unit_hash(ids, self.seed) < keep_probabilities(
                        {C.SAMPLE_ID: ids, **columns_np}, self.phase, self.synthetic_odds
                    )
                    table = table.filter(pa.array(keep))
                if table.num_rows:
                    yield table

    def _shuffled(self, epoch: int):
        import pyarrow as pa

        if not self.shuffle_buffer:
            yield from self._row_batches(epoch)
            return
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        buffer: list = []
        rows = 0
        for table in self._row_batches(epoch):
            buffer.append(table)
            rows += table.num_rows
            if rows >= self.shuffle_buffer:
                merged = pa.concat_tables(buffer)
                order = rng.permutation(merged.num_rows)
                half = merged.num_rows // 2  # emit half, keep half to mix with what comes next
                yield merged.take(pa.array(order[:half]))
                buffer, rows = [merged.take(pa.array(order[half:]))], merged.num_rows - half
        if buffer:
            merged = pa.concat_tables(buffer)
            yield merged.take(pa.array(rng.permutation(merged.num_rows)))

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Single-shape batches of one epoch, produced ahead by a background thread; ``skip`` dropped first."""
        import queue
        import threading

        done = object()
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                stream = iter_bucketed_batches(
                    self._shuffled(epoch), self.batch_size, self.phase.resolution, drop_last=True
                )
                for index, batch in enumerate(stream):
                    if index >= skip:
                        ready.put(batch)
            except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
                failure.append(error)
            finally:
                ready.put(done)

        thread = threading.Thread(target=produce, daemon=True, name=f"store-stream-{self.rank}")
        thread.start()
        while True:
            item = ready.get()
            if item is done:
                break
            yield item
        thread.join()
        if failure:
            raise failure[0]
