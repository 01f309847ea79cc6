"""Latent store read throughput against per-sample cache files and the bytes-on-disk limit.

    python benchmarks/latent_store.py [--num-samples 2000] [--quick] [--repeats 5] [--no-ray]

Writes ``--num-samples`` synthetic samples (latents at 256 and 640 px, [16, 32, 32] and [16, 80, 80] float16, and a
text embedding of 20 to 200 tokens x 3584 float16: about 1 MB each) under a temporary folder in /tmp, in three
layouts:

- the store: ``commit_table`` once per 1,000 rows, one bucket ("1x1");
- musubi-tuner's cache layout: one safetensors file per sample and resolution plus one text file per sample;
- DiffSynth-Studio's split training: one ``torch.save`` dict of tensors per sample (``torch.load(weights_only=True)``).

Then reads the 640 px latents and the text embeddings into torch batches of 32 (latents stacked, text zero-padded
with a mask, the layout of ``decode_batch``) from each, and, as the physical limit, reads exactly the bytes the store
must read (the ``latents_640`` and ``text_embeds`` column chunks, offsets from the Parquet metadata) into one
buffer, like ``cat``. The per-file readers get the same read-ahead as the store's reader: its two background
threads, each ``READ_AHEAD_DEPTH`` items ahead, against a pool of two threads loading whole batches of files up to
``2 x READ_AHEAD_DEPTH`` batches ahead. Each timed read starts from a dropped page cache (the cold reads' disk
``read_bytes`` from /proc/self/io confirm it, or the run fails: warm numbers are never reported as cold), and is
repeated warm. Dropping the page cache needs root; ``--warm-only`` measures warm reads alone and says so. Layouts
alternate (forwards, then backwards) and medians of ``--repeats`` are reported; ``*_paired`` are medians of the
ratios of adjacent cold runs, steadier than ratios of medians on this VM, where memory the guest frees is handed
back to the host and touching it again is slow and erratic. ``store_ray_sps`` reads through Ray Data (``read_store(...).iter_batches``,
one cold run, Ray start-up not timed).

The full run takes about 3.5 minutes on 2 cores; ``--quick`` (300 samples, one repeat) about 30 s. The last line
printed is one JSON object. Targets: ``store_sps >= 0.7 * raw_read_sps`` and ``>= safetensors_files_sps``;
``store_bytes_per_sample <= 1.1 * raw_tensor_bytes_per_sample``; ``projection_read_ratio <= 1.2``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from store import columns as C  # noqa: E402
from store.batches import iter_bucketed_batches  # noqa: E402
from store.reader import (  # noqa: E402
    prefetched,
    read_store,
    shard_paths,
    stream_rows,
)
from store.writer import commit_table  # noqa: E402

RESOLUTIONS = (256, 640)
READ_RESOLUTION = 640
TEXT_DIM = 3584
TEXT_LENGTHS = (20, 200)
BATCH_SIZE = 32
ROWS_PER_SHARD = 1000
BUCKET = "1x1"
RAY_TIME_LIMIT_S = 120.0
# The store reader's read-ahead (store_batches): two threads, each this many items ahead.
READ_AHEAD_THREADS = 2
READ_AHEAD_DEPTH = 2
Batch = dict[str, torch.Tensor | list[str]]


# ---------------------------------------------------------------- data


def make_chunk(first: int, count: int, rng: np.random.Generator, pool: np.ndarray) -> list[dict]:
    """``count`` samples; tensors are copies of random windows of one float16 noise pool (fast, incompressible)."""

    def window(shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        start = int(rng.integers(0, pool.size - size))
        return pool[start : start + size].reshape(shape).copy()

    samples = []
    for index in range(first, first + count):
        length = int(rng.integers(TEXT_LENGTHS[0], TEXT_LENGTHS[1] + 1))
        sample = {"id": f"{index:07d}", "text": window((length, TEXT_DIM))}
        for resolution in RESOLUTIONS:
            side = resolution // 8
            sample[resolution] = window((C.LATENT_CHANNELS, side, side))
        samples.append(sample)
    return samples


def store_table(samples: list[dict]) -> pa.Table:
    """The store's rows: the same fields a producer writes (see ``tests/store/test_store.py::make_table``)."""
    rows: dict[str, list] = {
        C.SAMPLE_ID: [s["id"] for s in samples],
        C.SOURCE: ["benchmark"] * len(samples),
        C.BUCKET: [BUCKET] * len(samples),
        C.CAPTION: [f"caption of sample {s['id']}" for s in samples],
        C.STAGE: [4] * len(samples),
        C.TEXT_EMBEDS: [C.tensor_bytes(s["text"]) for s in samples],
        C.TEXT_LEN: [s["text"].shape[0] for s in samples],
        C.TEXT_DIM: [TEXT_DIM] * len(samples),
    }
    for resolution in RESOLUTIONS:
        rows[C.latents_column(resolution)] = [C.tensor_bytes(s[resolution]) for s in samples]
        rows[C.height_column(resolution)] = [resolution] * len(samples)
        rows[C.width_column(resolution)] = [resolution] * len(samples)
    fields = C.base_fields() + C.resolution_fields(RESOLUTIONS)
    schema = pa.schema([f for f in fields if f.name in rows])
    return pa.table({name: rows[name] for name in schema.names}, schema=schema)


def safetensors_latents_path(folder: pathlib.Path, sample_id: str, resolution: int) -> pathlib.Path:
    # musubi-tuner: <name>_<WWWW>x<HHHH>_<arch>.safetensors per resolution, <name>_<arch>_te.safetensors for text.
    return folder / f"{sample_id}_{resolution:04d}x{resolution:04d}_qi.safetensors"


def safetensors_text_path(folder: pathlib.Path, sample_id: str) -> pathlib.Path:
    return folder / f"{sample_id}_qi_te.safetensors"


def write_layouts(root: pathlib.Path, num_samples: int, seed: int) -> tuple[list[str], int]:
    """Writes the three layouts; returns the sample ids in order and the samples' raw tensor bytes."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 23, dtype=np.float32).astype(np.float16)
    (root / "safetensors").mkdir()
    (root / "torch").mkdir()
    ids, tensor_bytes = [], 0
    for first in range(0, num_samples, ROWS_PER_SHARD):
        samples = make_chunk(first, min(ROWS_PER_SHARD, num_samples - first), rng, pool)
        commit_table(root / "store", store_table(samples))
        for sample in samples:
            ids.append(sample["id"])
            tensor_bytes += sum(sample[key].nbytes for key in ("text", *RESOLUTIONS))
            tensors = {resolution: torch.from_numpy(sample[resolution]) for resolution in RESOLUTIONS}
            text = torch.from_numpy(sample["text"])
            for resolution, latents in tensors.items():
                save_file(
                    {"latents": latents}, safetensors_latents_path(root / "safetensors", sample["id"], resolution)
                )
            save_file({C.TEXT_EMBEDS: text}, safetensors_text_path(root / "safetensors", sample["id"]))
            torch.save(
                {**{f"latents_{r}": t for r, t in tensors.items()}, C.TEXT_EMBEDS: text},
                root / "torch" / f"{sample['id']}.pth",
            )
    return ids, tensor_bytes


# ---------------------------------------------------------------- readers


def pad_batch(sample_ids: list[str], latents: list[torch.Tensor], texts: list[torch.Tensor]) -> Batch:
    """The layout of ``decode_batch``: latents [B, 16, h, w], text_embeds [B, L, D] zero-padded, text_mask [B, L]."""
    lengths = torch.tensor([text.shape[0] for text in texts])
    embeds = torch.zeros(len(texts), int(lengths.max()), TEXT_DIM, dtype=torch.float16)
    for row, text in enumerate(texts):
        embeds[row, : text.shape[0]] = text
    mask = (torch.arange(embeds.shape[1])[None, :] < lengths[:, None]).long()
    return {C.LATENTS: torch.stack(latents), C.TEXT_EMBEDS: embeds, C.TEXT_MASK: mask, C.SAMPLE_ID: sample_ids}


def store_batches(store: pathlib.Path) -> Iterator[Batch]:
    """What a training worker runs (``training.data.StoreStream``): row groups streamed with read-ahead, regrouped
    and decoded into batches on a background thread."""
    rows = prefetched(stream_rows(store, READ_RESOLUTION), depth=READ_AHEAD_DEPTH)
    yield from prefetched(iter_bucketed_batches(rows, BATCH_SIZE, READ_RESOLUTION), depth=READ_AHEAD_DEPTH)


def read_ahead(load_batch: Callable[[list[str]], Batch], ids: list[str]) -> Iterator[Batch]:
    """Batches of ``ids`` in order, each loaded by ``load_batch`` on a pool of ``READ_AHEAD_THREADS`` threads that
    keeps up to ``READ_AHEAD_THREADS x READ_AHEAD_DEPTH`` batches in flight: the store reader's read-ahead, given to
    the per-file layouts."""
    chunks = [ids[start : start + BATCH_SIZE] for start in range(0, len(ids), BATCH_SIZE)]
    with ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="files-read-ahead") as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(load_batch, chunk))
            if len(pending) > READ_AHEAD_THREADS * READ_AHEAD_DEPTH:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def safetensors_batches(folder: pathlib.Path, ids: list[str]) -> Iterator[Batch]:
    def load(chunk: list[str]) -> Batch:
        latents = [load_file(safetensors_latents_path(folder, i, READ_RESOLUTION))["latents"] for i in chunk]
        texts = [load_file(safetensors_text_path(folder, i))[C.TEXT_EMBEDS] for i in chunk]
        return pad_batch(chunk, latents, texts)

    return read_ahead(load, ids)


def torch_batches(folder: pathlib.Path, ids: list[str]) -> Iterator[Batch]:
    def load(chunk: list[str]) -> Batch:
        loaded = [torch.load(folder / f"{i}.pth", weights_only=True) for i in chunk]
        return pad_batch(chunk, [d[f"latents_{READ_RESOLUTION}"] for d in loaded], [d[C.TEXT_EMBEDS] for d in loaded])

    return read_ahead(load, ids)


def column_ranges(store: pathlib.Path, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(path, offset, length) of every column chunk of ``names``: the bytes a projected read cannot avoid."""
    ranges = []
    for path in shard_paths(store):
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            for index in range(metadata.num_columns):
                chunk = metadata.row_group(group).column(index)
                if chunk.path_in_schema in names:
                    start = chunk.dictionary_page_offset or chunk.data_page_offset
                    ranges.append((path, start, chunk.total_compressed_size))
    return ranges


def raw_read(ranges: list[tuple[str, int, int]], block_size: int = 8 << 20) -> int:
    """``cat`` of the byte ranges into one reused buffer; returns the bytes read."""
    buffer = bytearray(block_size)
    view = memoryview(buffer)
    total = 0
    for path, start, length in ranges:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            position, end = start, start + length
            while position < end:
                count = os.preadv(descriptor, [view[: min(block_size, end - position)]], position)
                if count <= 0:
                    raise OSError(f"short read of {path} at {position}")
                position += count
                total += count
        finally:
            os.close(descriptor)
    return total


# ---------------------------------------------------------------- measuring


def drop_page_cache() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        os.sync()
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as handle:
        return {key: int(value) for key, value in (line.split(":") for line in handle)}


class PageCacheNotDropped(RuntimeError):
    """A cold run could not start from a dropped page cache: its numbers would be warm ones."""


def timed(read: Callable[[], Iterator[Batch] | int], num_samples: int, cold: bool) -> dict[str, float]:
    """Samples per second of one full read, and the bytes it read (``rchar``: asked for; ``read_bytes``: disk)."""
    dropped = drop_page_cache() if cold else False
    if cold and not dropped:
        raise PageCacheNotDropped(
            "could not drop the page cache (needs root: writes /proc/sys/vm/drop_caches); run as root, "
            "or pass --warm-only to measure warm reads alone"
        )
    before = proc_io()
    start = time.perf_counter()
    result = read()
    count = num_samples
    if not isinstance(result, int):
        count = 0
        for batch in result:
            count += len(batch[C.SAMPLE_ID])
    seconds = time.perf_counter() - start
    after = proc_io()
    if count != num_samples:
        raise RuntimeError(f"read {count} samples, expected {num_samples}")
    return {
        "sps": num_samples / seconds,
        "rchar": after["rchar"] - before["rchar"],
        "read_bytes": after["read_bytes"] - before["read_bytes"],
        "dropped": dropped,
    }


def check_same_batches(readers: dict[str, Callable[[], Iterator[Batch]]]) -> None:
    """Every reader's first batch holds the same samples with the same tensors."""
    first = {name: next(iter(read())) for name, read in readers.items()}
    reference = first.pop("store")
    for name, batch in first.items():
        if batch[C.SAMPLE_ID] != reference[C.SAMPLE_ID]:
            raise AssertionError(f"{name}: samples {batch[C.SAMPLE_ID][:3]} != {reference[C.SAMPLE_ID][:3]}")
        for key in (C.LATENTS, C.TEXT_EMBEDS, C.TEXT_MASK):
            if not torch.equal(batch[key], reference[key]):
                raise AssertionError(f"{name}: {key} differs from the store's")


def ray_sps(store: pathlib.Path, num_samples: int, cold: bool) -> dict[str, float]:
    """Ray Data read (page cache dropped when ``cold``), capped at ``RAY_TIME_LIMIT_S``; Ray start-up is not
    timed."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        if cold and not drop_page_cache():
            raise PageCacheNotDropped("could not drop the page cache before the Ray Data read")
        start, count = time.perf_counter(), 0
        dataset = read_store(store, READ_RESOLUTION)
        batches = dataset.iter_batches(batch_size=256, batch_format="numpy")
        for batch in iter_bucketed_batches(batches, BATCH_SIZE, READ_RESOLUTION):
            count += len(batch[C.SAMPLE_ID])
            if time.perf_counter() - start > RAY_TIME_LIMIT_S:
                break
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"sps": count / seconds, "samples": count, "complete": count == num_samples}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 samples, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data figure")
    parser.add_argument(
        "--warm-only", action="store_true", help="no cold runs (they need root); the JSON holds warm figures only"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    num_samples, repeats = (300, 1) if args.quick else (args.num_samples, args.repeats)
    torch.set_num_threads(1)  # the copies into batches are single-threaded in every reader

    kinds = ["warm"] if args.warm_only else ["cold", "warm"]
    headline = kinds[0]  # the figures the targets are judged on: cold reads, unless --warm-only
    if not args.warm_only and not drop_page_cache():
        raise PageCacheNotDropped(
            "cold runs need the page cache dropped (root: writes /proc/sys/vm/drop_caches); run as root, or pass "
            "--warm-only to measure warm reads alone"
        )
    root = pathlib.Path(tempfile.mkdtemp(prefix="latent_store_bench_", dir="/tmp"))
    try:
        start = time.perf_counter()
        ids, raw_tensor_bytes = write_layouts(root, num_samples, args.seed)
        print(f"wrote {num_samples} samples x 3 layouts in {time.perf_counter() - start:.1f} s", flush=True)
        store = root / "store"
        ranges = column_ranges(store, (C.latents_column(READ_RESOLUTION), C.TEXT_EMBEDS))
        column_bytes = sum(length for _, _, length in ranges)
        readers: dict[str, Callable[[], Iterator[Batch] | int]] = {
            "store": lambda: store_batches(store),
            "safetensors_files": lambda: safetensors_batches(root / "safetensors", ids),
            "torch_files": lambda: torch_batches(root / "torch", ids),
        }
        check_same_batches(readers)
        readers["raw_read"] = lambda: raw_read(ranges)
        # The store runs next to each reference in either direction: paired ratios see the same machine state.
        names = ["raw_read", "store", "safetensors_files", "torch_files"]

        runs: dict[str, dict[str, list[dict]]] = {name: {kind: [] for kind in kinds} for name in readers}
        for repeat in range(repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                for kind in kinds:
                    runs[name][kind].append(timed(readers[name], num_samples, cold=kind == "cold"))
                line = "  ".join(f"{kind} {runs[name][kind][-1]['sps']:7.0f}" for kind in kinds)
                print(f"{name:>18}: {line} samples/s", flush=True)

        def median(name: str, kind: str, key: str = "sps") -> float:
            return statistics.median(run[key] for run in runs[name][kind])

        def paired(name: str, reference: str) -> float:
            """Median over repeats of the ratio of two adjacent runs."""
            pairs = zip(runs[name][headline], runs[reference][headline], strict=True)
            return round(statistics.median(run["sps"] / other["sps"] for run, other in pairs), 3)

        if not args.warm_only:
            # The drop took effect only if the cold reads of the raw column bytes came from the disk.
            disk_bytes = median("raw_read", "cold", "read_bytes")
            if disk_bytes < 0.9 * column_bytes:
                raise PageCacheNotDropped(
                    f"cold reads took {disk_bytes:.0f} bytes from the disk for {column_bytes} column bytes: the page "
                    "cache was not really dropped (a VM may keep it on the host); these would be warm numbers"
                )
        store_bytes = sum(os.path.getsize(path) for path in shard_paths(store))
        result: dict[str, object] = {
            "num_samples": num_samples,
            "repeats": repeats,
            "cache": headline,
            "store_sps": round(median("store", headline)),
            "safetensors_files_sps": round(median("safetensors_files", headline)),
            "torch_files_sps": round(median("torch_files", headline)),
            "raw_read_sps": round(median("raw_read", headline)),
            "read_ahead_threads": READ_AHEAD_THREADS,
            "store_bytes_per_sample": round(store_bytes / num_samples),
            "raw_tensor_bytes_per_sample": round(raw_tensor_bytes / num_samples),
            # Bytes the disk delivered for a cold store read over the projected columns' bytes. The store reads
            # memory-mapped, so /proc/self/io's rchar (bytes asked of read()) does not see its reads; read_bytes
            # does, from a dropped page cache (None with --warm-only).
            "projection_read_ratio": None
            if args.warm_only
            else round(median("store", "cold", "read_bytes") / column_bytes, 3),
            "page_cache_dropped": not args.warm_only,
        }
        if not args.warm_only:
            for name in names:
                result[f"warm_{name}_sps"] = round(median(name, "warm"))
        result["files_per_million_samples"] = {
            "store": 2 * 1_000_000 // ROWS_PER_SHARD,  # a shard and its commit's manifest file (one bucket here)
            "safetensors_files": 1_000_000 * (len(RESOLUTIONS) + 1),
            "torch_files": 1_000_000,
        }
        if not args.no_ray:
            ray = ray_sps(store, num_samples, cold=not args.warm_only)
            result["store_ray_sps"] = round(ray["sps"])
            result["store_ray_complete"] = ray["complete"]
        result["store_to_raw_paired"] = paired("store", "raw_read")
        result["store_to_safetensors_paired"] = paired("store", "safetensors_files")
        result["targets_met"] = {
            "store_vs_raw": result["store_sps"] >= 0.7 * result["raw_read_sps"],
            "store_vs_safetensors": result["store_sps"] >= result["safetensors_files_sps"],
            "bytes_on_disk": store_bytes <= 1.1 * raw_tensor_bytes,
            "projection": result["projection_read_ratio"] is not None and result["projection_read_ratio"] <= 1.2,
        }
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main()))
