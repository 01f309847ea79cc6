"""The data of a phase: rows of the latent store selected by the phase, and the batches a worker trains on.

``phase_dataset`` lists the store's committed shards when it is called (so a phase sees every shard committed
before it starts), filters on ``stage`` and the phase's predicates (pushed into the Parquet scan), and thins rows by
the phase's mixture weights. Thinning is a deterministic function of ``sample_id`` and the seed, so a restarted
run sees the same rows. ``worker_batches`` turns a worker's shard into single-shape batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from store import columns as C
from store.batches import iter_bucketed_batches
from store.reader import count_rows, read_store
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
        # A store written before editing existed has no task column: its rows are all text-to-image.
        values = batch[column] if column in batch or column != C.TASK else [C.T2I] * count
        keep *= np.array([weights.get(str(value), 1.0) / top for value in values])
    if synthetic_odds is not None:
        synthetic = np.array([str(source).startswith(SYNTHETIC_PREFIX) for source in batch[C.SOURCE]])
        # Scale the over-represented side down so that synthetic rows make up the target share.
        keep *= np.where(synthetic, min(1.0, synthetic_odds), min(1.0, 1.0 / synthetic_odds) if synthetic_odds else 1.0)
    return keep


def mixture_sample(table, phase: PhaseConfig, seed: int, synthetic_odds: float | None):
    """The rows of an Arrow table the phase's mixture keeps, each decided by its ``sample_id`` (the same row is kept
    or dropped in every reader and epoch); Arrow in and out, so list columns (Edit-Plus references) pass as they are."""
    import pyarrow as pa

    if not phase.mixture and synthetic_odds is None:
        return table
    ids = table.column(C.SAMPLE_ID).to_numpy(zero_copy_only=False)
    values = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in mixture_columns(phase)
        if name in table.column_names
    }
    keep = _unit_hash(ids, seed) < keep_probabilities({C.SAMPLE_ID: ids, **values}, phase, synthetic_odds)
    return table.filter(pa.array(keep))


class MixtureFilter:
    """``map_batches`` function (``batch_format="pyarrow"``): ``mixture_sample`` of each batch."""

    def __init__(self, phase: PhaseConfig, seed: int, synthetic_odds: float | None):
        self.phase, self.seed, self.synthetic_odds = phase, seed, synthetic_odds

    def __call__(self, batch):
        return mixture_sample(batch, self.phase, self.seed, self.synthetic_odds)


def synthetic_odds(store_dir: str, phase: PhaseConfig) -> float | None:
    """How strongly synthetic rows must be kept relative to real ones for the phase's synthetic share, among the
    stored rows the phase selects (``odds_for_share``)."""
    if phase.synthetic_share is None:
        return None
    sources = count_rows(
        store_dir, phase.resolution, min_stage=phase.min_stage, predicates=phase.predicates, by=C.SOURCE
    )
    synthetic = sum(rows for source, rows in sources.items() if source.startswith(SYNTHETIC_PREFIX))
    return odds_for_share(phase.synthetic_share, synthetic, sum(sources.values()) - synthetic)


def odds_for_share(share: float | None, synthetic: int, real: int) -> float | None:
    """``target_ratio / current_ratio`` of synthetic to real rows (> 1: keep all synthetic rows and thin the real
    ones), or None when no share is set or one side is absent."""
    if share is None or synthetic == 0 or real == 0 or share in (0.0, 1.0):
        return None
    return (share / (1 - share)) / (synthetic / real)


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
            MixtureFilter(phase, seed, synthetic_odds(store_dir, phase)), batch_format="pyarrow"
        )
    return dataset


def streamed_phase_dataset(encoded, phase: PhaseConfig, seed: int, synthetic_odds: float | None = None):
    """Feed "stream": the phase's rows of a dataset of freshly encoded store-schema rows (``pipelines.produce.
    encoded_dataset``), selected as ``phase_dataset`` selects stored rows: stage and predicates, mixture, projection."""
    from store.predicates import ray_filter, selection
    from store.reader import projection

    conditions = selection(phase.resolution, phase.min_stage, phase.predicates)
    if conditions:
        encoded = encoded.filter(expr=ray_filter(conditions))
    encoded = encoded.select_columns(projection(phase.resolution, mixture_columns(phase)))
    if phase.mixture or synthetic_odds is not None:
        encoded = encoded.map_batches(MixtureFilter(phase, seed, synthetic_odds), batch_format="pyarrow")
    return encoded


class DatasetStream:
    """Feed "stream": a worker's split of the Ray Dataset the job hands the trainer (``get_dataset_shard``), with
    the interface of ``StoreStream``. Each epoch runs the streaming pipeline again; resuming skips the number of
    batches consumed, which is exact only where the pipeline's order is (``preserve_order``)."""

    def __init__(self, shard, phase: PhaseConfig, *, seed: int, batch_size: int, shuffle_buffer: int):
        self.shard, self.phase, self.seed = shard, phase, seed
        self.batch_size, self.shuffle_buffer = batch_size, shuffle_buffer

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return worker_batches(
            self.shard,
            self.batch_size,
            self.phase.resolution,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed + epoch,
            skip=skip,
        )


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

        from store.reader import list_shards, stream_rows

        shards = list_shards(self.store_dir)
        if not shards:
            raise ValueError(f"the latent store {self.store_dir} has no committed shards")
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        split_rows = len(shards) < self.world
        mine = shards if split_rows else shards[self.rank :: self.world]
        offset = 0
        rows = stream_rows(
            self.store_dir,
            self.phase.resolution,
            min_stage=self.phase.min_stage,
            predicates=self.phase.predicates,
            extra_columns=mixture_columns(self.phase),
            shards=[mine[index] for index in rng.permutation(len(mine))],
        )
        for table in rows:
            if split_rows:
                keep = (np.arange(offset, offset + table.num_rows) % self.world) == self.rank
                offset += table.num_rows
                table = table.filter(pa.array(keep))
            table = mixture_sample(table, self.phase, self.seed, self.synthetic_odds)
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
        """Single-shape batches of one epoch, ``skip`` dropped first. Two background threads: one reads row groups
        (the disk reading ahead), one shuffles and decodes them into batches, ``prefetch`` batches ahead."""
        from store.reader import prefetched

        rows = prefetched(self._shuffled(epoch), depth=2, name=f"store-rows-{self.rank}")
        stream = iter_bucketed_batches(rows, self.batch_size, self.phase.resolution, drop_last=True)
        wanted = (batch for index, batch in enumerate(stream) if index >= skip)
        yield from prefetched(wanted, depth=self.prefetch, name=f"store-batches-{self.rank}")
