"""Sources: Parquet, WebDataset and folder layouts give the same samples with the same stable ids."""

from __future__ import annotations

import io
import json
import os
import tarfile

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import ray_runtime
from models.ray_runtime import local_read_blocks
from pipelines.sources import SourceConfig, read_source, sample_id
from store import columns as C


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (40 + seed, 56, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


PAIRS = [(_jpeg(i), f"caption number {i}") for i in range(5)]


def _rows(dataset) -> dict[str, dict]:
    # Small test datasets only: this pulls every row to the driver.
    return {row[C.KEY]: row for row in dataset.take_all()}


def _expected_ids() -> dict[str, str]:
    return {f"{i:04d}": sample_id(image, caption.encode()) for i, (image, caption) in enumerate(PAIRS)}


def test_parquet_source(ray_session, tmp_path):
    table = pa.table(
        {
            "key": [f"{i:04d}" for i in range(5)],
            "jpg": [image for image, _ in PAIRS],
            "caption": [caption for _, caption in PAIRS],
            "url": [f"http://example.invalid/{i}.jpg" for i in range(5)],
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet")
    rows = _rows(read_source(SourceConfig(name="laion", kind="parquet", paths=[str(tmp_path)])))
    assert {k: r[C.SAMPLE_ID] for k, r in rows.items()} == _expected_ids()
    row = rows["0003"]
    assert row[C.SOURCE] == "laion" and row[C.CAPTION] == "caption number 3"
    assert row[C.IMAGE_BYTES] == PAIRS[3][0] and row[C.URL].endswith("/3.jpg")
    assert row[C.SOURCE_ERROR] == "" and row[C.CAPTION_VALID_UTF8]


def test_parquet_hf_image_struct_and_missing_image(ray_session, tmp_path):
    images = [{"bytes": PAIRS[0][0], "path": "a.jpg"}, {"bytes": None, "path": "b.jpg"}]
    pq.write_table(pa.table({"image": images, "text": ["one", "two"]}), tmp_path / "hf.parquet")
    rows = read_source(SourceConfig(kind="parquet", paths=[str(tmp_path / "hf.parquet")])).take_all()
    assert sorted(r[C.SOURCE_ERROR] for r in rows) == ["", "no_image:null"]
    with pytest.raises(ValueError, match="caption column 'nope'"):
        read_source(SourceConfig(kind="parquet", paths=[str(tmp_path)], caption_column="nope"))


def _write_shard(path) -> None:
    with tarfile.open(path, "w") as tar:
        for i, (image, caption) in enumerate(PAIRS):
            members = {f"{i:04d}.jpg": image}
            # Half the samples carry the caption in .txt, the others only in img2dataset's .json.
            if i % 2:
                members[f"{i:04d}.txt"] = caption.encode()
            else:
                members[f"{i:04d}.json"] = json.dumps({"caption": caption, "key": f"{i:04d}"}).encode()
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_source(ray_session, tmp_path):
    _write_shard(tmp_path / "00000.tar")
    rows = _rows(read_source(SourceConfig(kind="webdataset", paths=[str(tmp_path / "*.tar")])))
    assert {k: r[C.SAMPLE_ID] for k, r in rows.items()} == _expected_ids()


def test_read_blocks_follow_the_cores_only_where_every_node_is_this_machine(monkeypatch):
    here, cores = "10.0.0.7", os.cpu_count() or 1

    def node(address: str, cpus: float) -> dict:
        return {"Alive": True, "NodeManagerAddress": address, "Resources": {"CPU": cpus}}

    monkeypatch.setattr(ray_runtime.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray_runtime.ray.util, "get_node_ip_address", lambda: here)
    for nodes, expected in [
        ([node(here, 8 * cores)], 2 * cores),  # the oversubscribed local Ray
        ([node(here, 2), node(here, 6 * cores), {**node("10.0.0.9", 6), "Alive": False}], 2 * cores),  # a test Cluster
        ([node(here, cores)], None),  # as many logical CPUs as cores: Ray Data's own choice
        ([node(here, 8 * cores), node("10.0.0.8", 8)], None),  # a real cluster
    ]:
        monkeypatch.setattr(ray_runtime.ray, "nodes", lambda nodes=nodes: nodes)
        assert local_read_blocks() == expected, nodes


def test_a_local_ray_reads_in_blocks_for_its_cores(ray_session, tmp_path):
    """The session's Ray has 16 logical CPUs: Ray Data alone would split the read into 32 blocks, a task each."""
    cores = os.cpu_count() or 1
    assert ray_session.cluster_resources()["CPU"] == 16
    assert local_read_blocks() == (2 * cores if cores < 16 else None)
    for shard in range(3):
        _write_shard(tmp_path / f"{shard:05d}.tar")
    dataset = read_source(SourceConfig(kind="webdataset", paths=[str(tmp_path / "*.tar")])).materialize()
    assert dataset.count() == 3 * len(PAIRS)
    # Ray Data may still cut a read task's output in two; split for 16 CPUs, this read made 15 blocks, a row each.
    assert dataset.num_blocks() <= (4 * cores if cores < 16 else 32)


def test_folder_sources(ray_session, tmp_path):
    for i, (image, caption) in enumerate(PAIRS):
        (tmp_path / f"{i:04d}.jpg").write_bytes(image)
        (tmp_path / f"{i:04d}.txt").write_text(caption)
    rows = _rows(read_source(SourceConfig(kind="folder", paths=[str(tmp_path)])))
    assert {k: r[C.SAMPLE_ID] for k, r in rows.items()} == _expected_ids()

    manifest = tmp_path / "manifest.jsonl"
    lines = [{"image": f"{i:04d}.jpg", "caption": c} for i, (_, c) in enumerate(PAIRS)]
    lines.append({"image": "missing.jpg", "caption": "gone"})
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rows = _rows(read_source(SourceConfig(kind="folder", paths=[], manifest=str(manifest))))
    assert rows["missing"][C.SOURCE_ERROR] == "unreadable_file:FileNotFoundError"
    assert {k: r[C.SAMPLE_ID] for k, r in rows.items() if k != "missing"} == _expected_ids()


def test_invalid_utf8_caption_is_flagged_not_lost(ray_session, tmp_path):
    (tmp_path / "x.jpg").write_bytes(PAIRS[0][0])
    (tmp_path / "x.txt").write_bytes(b"caf\xe9 au lait")
    (row,) = read_source(SourceConfig(kind="folder", paths=[str(tmp_path)])).take_all()
    assert not row[C.CAPTION_VALID_UTF8] and row[C.CAPTION] == "caf\ufffd au lait"
    assert row[C.SAMPLE_ID] == sample_id(PAIRS[0][0], b"caf\xe9 au lait")


def test_missing_paths_are_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_source(SourceConfig(kind="folder", paths=[str(tmp_path / "none")]))
    with pytest.raises(ValueError, match="no jpg"):
        read_source(SourceConfig(kind="folder", paths=[str(tmp_path)]))
