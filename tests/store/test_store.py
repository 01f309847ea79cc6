"""The latent store: round trip, filters and projection, atomic appends, bucketed batches."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from store import columns as C
from store.batches import iter_bucketed_batches
from store.buckets import bucket_size, nearest_bucket, upscale_factor
from store.reader import (
    committed_sample_ids,
    count_rows,
    list_shards,
    read_store,
    read_table,
    shard_paths,
    stream_rows,
)
from store.writer import commit_table

RESOLUTIONS = (256, 640)


def make_table(num_rows: int, seed: int = 0, buckets=("1x1", "4x3")) -> tuple[pa.Table, dict]:
    """Rows with random latents at 256 and 640, random-length text embeddings, scores and stages."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {
        name: []
        for name in (
            C.SAMPLE_ID,
            C.SOURCE,
            C.BUCKET,
            C.CAPTION,
            C.STAGE,
            C.TEXT_EMBEDS,
            C.TEXT_LEN,
            C.TEXT_DIM,
            "score_blur",
        )
    }
    for resolution in RESOLUTIONS:
        for name in (C.latents_column(resolution), C.height_column(resolution), C.width_column(resolution)):
            rows[name] = []
    tensors = {}
    for index in range(num_rows):
        bucket = buckets[index % len(buckets)]
        sample = f"{seed:02d}-{index:05d}"
        length = int(rng.integers(5, 40))
        text = rng.standard_normal((length, 64)).astype(np.float16)
        rows[C.SAMPLE_ID].append(sample)
        rows[C.SOURCE].append("test")
        rows[C.BUCKET].append(bucket)
        rows[C.CAPTION].append(f"caption {sample}")
        rows[C.STAGE].append(int(rng.integers(0, 8)))
        rows[C.TEXT_EMBEDS].append(C.tensor_bytes(text))
        rows[C.TEXT_LEN].append(length)
        rows[C.TEXT_DIM].append(64)
        rows["score_blur"].append(float(rng.uniform(0, 500)))
        tensors[sample] = {"text": text}
        for resolution in RESOLUTIONS:
            width, height = bucket_size(bucket, resolution)
            small = resolution == 640 and index % 5 == 0  # a source too small for 640: null there
            latents = None if small else rng.standard_normal((16, height // 8, width // 8)).astype(np.float16)
            rows[C.latents_column(resolution)].append(None if latents is None else C.tensor_bytes(latents))
            rows[C.height_column(resolution)].append(None if small else height)
            rows[C.width_column(resolution)].append(None if small else width)
            tensors[sample][resolution] = latents
    schema = pa.schema(
        [f for f in C.base_fields() if f.name in rows]
        + [f for f in C.resolution_fields(RESOLUTIONS) if f.name in rows]  # no edit rows: no source latents
        + [pa.field("score_blur", pa.float64())]
    )
    return pa.table({name: rows[name] for name in schema.names}, schema=schema), tensors


def test_buckets():
    assert nearest_bucket(1920, 1080) == "16x9" and nearest_bucket(1000, 1000) == "1x1"
    assert nearest_bucket(300, 1000) == "1x3"
    assert bucket_size("1x1", 256) == (256, 256) and bucket_size("16x9", 1328) == (1664, 928)
    for bucket in ("3x4", "1x3", "16x9"):
        for resolution in (256, 640, 1328):
            width, height = bucket_size(bucket, resolution)
            assert width % 16 == 0 and height % 16 == 0
            assert 0.85 < width * height / resolution**2 < 1.15
    assert upscale_factor(512, 512, (640, 640)) == pytest.approx(1.25)


def test_store_roundtrip(tmp_path):
    table, tensors = make_table(40)
    entries = commit_table(tmp_path, table)
    assert sorted(entry["bucket"] for entry in entries) == ["1x1", "4x3"]
    assert sum(entry["num_rows"] for entry in entries) == 40
    back = read_table(tmp_path, 256, extra_columns=["score_blur", C.STAGE])
    assert back.num_rows == 40
    batches = list(iter_bucketed_batches(back.to_batches(), batch_size=8, resolution=256))
    seen = set()
    for batch in batches:
        for row, sample in enumerate(batch["sample_id"]):
            expected = tensors[sample]
            assert torch.equal(batch["latents"][row], torch.from_numpy(expected[256]))
            length = int(batch["text_mask"][row].sum())
            assert torch.equal(batch["text_embeds"][row, :length], torch.from_numpy(expected["text"]))
            assert batch["text_embeds"][row, length:].abs().sum() == 0
            seen.add(sample)
    assert seen == set(tensors)
    captions = dict(zip(back.column(C.SAMPLE_ID).to_pylist(), back.column(C.CAPTION).to_pylist(), strict=True))
    assert captions["00-00003"] == "caption 00-00003"
    scores = dict(zip(back.column(C.SAMPLE_ID).to_pylist(), back.column("score_blur").to_pylist(), strict=True))
    original = dict(zip(table.column(C.SAMPLE_ID).to_pylist(), table.column("score_blur").to_pylist(), strict=True))
    assert scores == original
    # Bytes on disk stay close to the raw tensor bytes (no compression, little metadata).
    raw = sum(
        len(v)
        for name in (C.TEXT_EMBEDS, C.latents_column(256), C.latents_column(640))
        for v in table.column(name).to_pylist()
        if v is not None
    )
    on_disk = sum(os.path.getsize(path) for path in shard_paths(tmp_path))
    assert on_disk < 1.1 * raw


def _rchar() -> int:
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("rchar"))


def test_store_reader_filters_and_projects(tmp_path):
    table, _ = make_table(60, seed=1)
    commit_table(tmp_path, table)
    filtered = read_table(
        tmp_path, 640, min_stage=4, predicates=[("score_blur", ">", 100.0)], extra_columns=["score_blur"]
    )
    stages, blur = table.column(C.STAGE).to_pylist(), table.column("score_blur").to_pylist()
    present = [v is not None for v in table.column(C.latents_column(640)).to_pylist()]
    expected = {
        sample
        for sample, stage, score, ok in zip(table.column(C.SAMPLE_ID).to_pylist(), stages, blur, present, strict=True)
        if stage >= 4 and score > 100 and ok
    }
    assert set(filtered.column(C.SAMPLE_ID).to_pylist()) == expected and expected
    assert C.latents_column(256) not in filtered.column_names
    # The streaming reader (training workers) selects exactly the same rows; the scan drops rows without latents
    # at 640 later, in the batcher.
    streamed = pa.concat_tables(stream_rows(tmp_path, 640, min_stage=4, predicates=[("score_blur", ">", 100.0)]))
    streamed = streamed.filter(pa.compute.is_valid(streamed.column(C.latents_column(640))))
    assert set(streamed.column(C.SAMPLE_ID).to_pylist()) == expected
    assert C.latents_column(256) not in streamed.column_names

    # Projection: reading the 256 column reads about that column's bytes, not the 640 one's (6x larger).
    paths = shard_paths(tmp_path)
    column_bytes = 0
    for path in paths:
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            for index in range(metadata.num_columns):
                chunk = metadata.row_group(group).column(index)
                if chunk.path_in_schema in (C.latents_column(256), C.TEXT_EMBEDS):
                    column_bytes += chunk.total_compressed_size
    before = _rchar()
    projected = read_table(tmp_path, 256)
    read_bytes = _rchar() - before
    assert projected.num_rows == 60
    total = sum(os.path.getsize(path) for path in paths)
    assert read_bytes < 0.5 * total
    assert read_bytes < 1.3 * column_bytes + 256 * 1024  # the columns it needs, plus footers and small columns


def test_count_rows_reads_only_needed_columns(tmp_path):
    """Counting rows (the mixture's odds, SFT's subset check) reads the filter's small columns, never a tensor; the
    counts equal those of reading the rows."""
    table, _ = make_table(60, seed=3)
    commit_table(tmp_path, table)
    commit_table(tmp_path, make_table(20, seed=4)[0])  # two commits: counts span shards
    arguments = {"min_stage": 3, "predicates": [("score_blur", ">", 100.0)]}
    rows = read_table(tmp_path, 640, **arguments)
    rows = rows.filter(pa.compute.is_valid(rows.column(C.latents_column(640))))  # the 640-less rows are not counted
    assert 0 < rows.num_rows < 80

    total = sum(os.path.getsize(path) for path in shard_paths(tmp_path))
    before = _rchar()
    counted = count_rows(tmp_path, 640, **arguments)
    by_bucket = count_rows(tmp_path, 640, **arguments, by=C.BUCKET)
    read_bytes = _rchar() - before
    assert counted == rows.num_rows
    expected = {bucket: rows.column(C.BUCKET).to_pylist().count(bucket) for bucket in ("1x1", "4x3")}
    assert by_bucket == {bucket: count for bucket, count in expected.items() if count}
    # Per shard and scan: the 64 kB the Parquet reader takes from a file's end for its footer, and four small
    # columns; the shards' tensors (5 MB of latents per shard) are never read.
    scans = 2 * len(shard_paths(tmp_path))
    assert read_bytes < scans * 100 * 1024 and read_bytes < 0.05 * total, (read_bytes, total)
    assert count_rows(tmp_path / "empty", 640) == 0 and count_rows(tmp_path / "empty", 640, by=C.BUCKET) == {}
    with pytest.raises(ValueError, match="no column 'score_nope'"):
        count_rows(tmp_path, 640, predicates=[("score_nope", ">", 1.0)])


def test_synthetic_odds_count_the_selected_rows(tmp_path):
    """A phase's synthetic share becomes keep odds from counts of the rows it selects (``count_rows`` by source)."""
    from training.config import PhaseConfig
    from training.data import SYNTHETIC_PREFIX, synthetic_odds

    table, _ = make_table(40, seed=5)
    sources = [SYNTHETIC_PREFIX + "text" if index % 4 == 0 else "laion" for index in range(40)]
    commit_table(tmp_path, table.set_column(table.schema.get_field_index(C.SOURCE), C.SOURCE, pa.array(sources)))
    phase = PhaseConfig(name="p", num_steps=1, resolution=256, min_stage=0, synthetic_share=0.5)
    assert synthetic_odds(str(tmp_path), phase) == pytest.approx((0.5 / 0.5) / (10 / 30))
    stages = table.column(C.STAGE).to_pylist()
    synthetic = sum(1 for index, stage in enumerate(stages) if stage >= 4 and index % 4 == 0)
    real = sum(1 for stage in stages if stage >= 4) - synthetic
    staged = phase.model_copy(update={"min_stage": 4, "synthetic_share": 0.2})
    assert synthetic_odds(str(tmp_path), staged) == pytest.approx((0.2 / 0.8) / (synthetic / real))
    assert synthetic_odds(str(tmp_path), phase.model_copy(update={"synthetic_share": None})) is None


def test_stream_rows_skips_row_groups_by_statistics(tmp_path, monkeypatch):
    """Row groups whose stage statistics cannot pass the filter are never read."""
    table, _ = make_table(256, seed=4, buckets=("1x1",))
    order = pa.compute.sort_indices(table, sort_keys=[(C.STAGE, "ascending")])
    commit_table(tmp_path, table.take(order))  # sorted: each 64-row group covers a narrow range of stages
    (path,) = shard_paths(tmp_path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    read_groups = []
    original = pq.ParquetFile.read_row_group

    def counting(self, index, *args, **kwargs):
        read_groups.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    rows = pa.concat_tables(stream_rows(tmp_path, 256, min_stage=7))
    expected = sum(stage >= 7 for stage in table.column(C.STAGE).to_pylist())
    assert rows.num_rows == expected > 0
    assert read_groups == [3]


def test_append_while_reading(tmp_path, monkeypatch):
    commit_table(tmp_path, make_table(20, seed=0)[0])
    observed = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            observed.append(len(committed_sample_ids(tmp_path)))

    thread = threading.Thread(target=reader)
    thread.start()
    for seed in (1, 2, 3):
        commit_table(tmp_path, make_table(20, seed=seed)[0])
    done.set()
    thread.join()
    # Every listing saw whole commits only (20 rows each, in two buckets of 10: two shards a commit, listed at once).
    assert observed and set(observed) <= {20, 40, 60, 80}
    assert len(committed_sample_ids(tmp_path)) == 80 and len(list_shards(tmp_path)) == 8
    # A commit that dies after its first shard is in place (here while writing the second) lists nothing.
    write_table = pq.write_table
    calls = []

    def crash_on_second_shard(table, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        write_table(table, path, **kwargs)

    monkeypatch.setattr(pq, "write_table", crash_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        commit_table(tmp_path, make_table(20, seed=4)[0])
    monkeypatch.undo()
    assert len(calls) == 2 and len(list(tmp_path.glob("bucket=*/part-*.parquet"))) == 9  # one orphan shard on disk
    assert len(committed_sample_ids(tmp_path)) == 80 and len(list_shards(tmp_path)) == 8
    # A half-written shard (temporary file, no manifest entry) is invisible.
    (tmp_path / "bucket=1x1" / ".part-crashed.parquet.tmp").write_bytes(b"partial")
    pq.write_table(make_table(5, seed=9)[0], tmp_path / "bucket=1x1" / "part-orphan.parquet")
    assert len(committed_sample_ids(tmp_path)) == 80 and len(list_shards(tmp_path)) == 8
    # The interrupted commit, retried, lands whole.
    commit_table(tmp_path, make_table(20, seed=4)[0])
    assert len(committed_sample_ids(tmp_path)) == 100 and len(list_shards(tmp_path)) == 10


def test_ray_reader_batches_of_one_shape(ray_session, tmp_path):
    table, _ = make_table(30, seed=4)
    commit_table(tmp_path, table)
    dataset = read_store(tmp_path, 640, min_stage=2)
    batches = list(iter_bucketed_batches(dataset.iter_batches(batch_size=7, batch_format="numpy"), 4, 640))
    shapes = {tuple(batch["latents"].shape[1:]) for batch in batches}
    expected_shapes = {(16, bucket_size(b, 640)[1] // 8, bucket_size(b, 640)[0] // 8) for b in ("1x1", "4x3")}
    assert shapes == expected_shapes
    expected = sum(
        1
        for s, v in zip(table.column(C.STAGE).to_pylist(), table.column(C.latents_column(640)).to_pylist(), strict=True)
        if s >= 2 and v is not None
    )
    assert sum(len(batch["sample_id"]) for batch in batches) == expected
    with pytest.raises(ValueError, match="no committed shards"):
        read_store(tmp_path / "empty", 256)
