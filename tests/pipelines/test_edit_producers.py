"""Edit triplets through the producers: the three source layouts, both images scored, encoded beside each other."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.sources import SourceConfig, read_source, sample_id
from pipelines.synth.sample_corpus import photo_like, png_bytes
from store import columns as C


def _triplets(count: int, seed: int = 0) -> list[tuple[bytes, str, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        source = photo_like(rng, 320, 320)
        target = source.copy()
        target[80:240, 80:240] = rng.integers(0, 256, 3)  # the edit: a block repainted
        out.append((png_bytes(source), f"paint the middle block, variant {index}", png_bytes(target)))
    return out


def _write_sources(folder, triplets) -> dict[str, SourceConfig]:
    folder.mkdir(parents=True, exist_ok=True)
    # Parquet: one row lacks its input image (null).
    table = pa.table(
        {
            "source_image": [t[0] for t in triplets[:-1]] + [None],
            "instruction": [t[1] for t in triplets],
            "target_image": [t[2] for t in triplets],
        }
    )
    pq.write_table(table, folder / "triplets.parquet")
    # WebDataset: NNNN.src.png + NNNN.png + NNNN.txt.
    with tarfile.open(folder / "triplets.tar", "w") as tar:
        for index, (source, instruction, target) in enumerate(triplets):
            for name, data in (("src.png", source), ("png", target), ("txt", instruction.encode())):
                info = tarfile.TarInfo(f"{index:04d}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    # Folder: a JSONL manifest.
    lines = []
    for index, (source, instruction, target) in enumerate(triplets):
        (folder / f"src{index}.png").write_bytes(source)
        (folder / f"tgt{index}.png").write_bytes(target)
        lines.append(
            json.dumps({"source_image": f"src{index}.png", "image": f"tgt{index}.png", "instruction": instruction})
        )
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "parquet": SourceConfig(name="pq", kind="parquet", task="edit", paths=[str(folder / "triplets.parquet")]),
        "webdataset": SourceConfig(name="wds", kind="webdataset", task="edit", paths=[str(folder / "triplets.tar")]),
        "folder": SourceConfig(
            name="dir", kind="folder", task="edit", paths=[str(folder)], manifest=str(folder / "manifest.jsonl")
        ),
    }


def test_edit_sources_read_triplets(ray_session, tmp_path):
    triplets = _triplets(3)
    expected = {sample_id(target, instruction.encode(), source) for source, instruction, target in triplets}
    for kind, config in _write_sources(tmp_path, triplets).items():
        rows = read_source(config).take_all()
        assert {row[C.TASK] for row in rows} == {"edit"}, kind
        good = [row for row in rows if not row[C.SOURCE_ERROR]]
        bad = [row for row in rows if row[C.SOURCE_ERROR]]
        if kind == "parquet":  # the row without an input image is reported, not lost
            assert len(bad) == 1 and bad[0][C.SOURCE_ERROR] == "no_source_image:null"
            assert len(good) == 2
        else:
            assert not bad and {row[C.SAMPLE_ID] for row in good} == expected, kind
        for row in good:
            assert row[C.SOURCE_IMAGE_BYTES] and row[C.IMAGE_BYTES] != row[C.SOURCE_IMAGE_BYTES]
            assert row[C.CAPTION].startswith("paint the middle block")
    # A triplet's id differs from the id of its target as a pair: the input image is part of the sample.
    source, instruction, target = triplets[0]
    assert sample_id(target, instruction.encode(), source) != sample_id(target, instruction.encode())


def test_edit_config_errors(tmp_path):
    pq.write_table(pa.table({"jpg": [b"x"], "caption": ["c"]}), tmp_path / "pairs.parquet")
    with pytest.raises(ValueError, match="source_image_column"):
        read_source(SourceConfig(kind="parquet", task="edit", paths=[str(tmp_path / "pairs.parquet")]))
    with pytest.raises(ValueError, match="manifest"):
        read_source(SourceConfig(kind="folder", task="depth", paths=[str(tmp_path)]))


def test_edit_curation_scores_both_images_and_encodes_source_latents(ray_session, tmp_path):
    """Curation with a triplet source (one with a tiny input image) and synthetic edits; the kept triplets are
    encoded with their source latents; the triplet whose input image fails the resolution check is dropped for it
    although its target passes."""
    from models.config import load_config
    from pipelines.curation import LABELS_FILE, CurationConfig, run_curation
    from store.reader import read_table

    triplets = _triplets(2, seed=1)
    rng = np.random.default_rng(9)
    tiny_source = png_bytes(photo_like(rng, 48, 48))
    triplets.append((tiny_source, "paint the middle block, tiny source", triplets[0][2]))
    folder = tmp_path / "in"
    sources = _write_sources(folder, triplets)
    config = load_config(
        CurationConfig,
        "configs/preprocess_edit_tiny.yaml",
        [
            f"output_dir={tmp_path / 'curated'}",
            f"encode.store_dir={tmp_path / 'store'}",
            f"sources={json.dumps([sources['webdataset'].model_dump()])}",
            "synthetic_edits=5",
            "annotation.enabled=false",  # the captioner is not what this test is about (and costs most)
        ],
    )
    result = run_curation(config)
    labels = pq.read_table(tmp_path / "curated" / LABELS_FILE).to_pylist()
    assert len(labels) == 3 + 5
    tiny_id = sample_id(triplets[2][2], triplets[2][1].encode(), tiny_source)
    tiny = next(row for row in labels if row["sample_id"] == tiny_id)
    assert tiny["stage"] == 0 and tiny["drop_reason"].startswith("resolution"), tiny

    stored = read_table(tmp_path / "store", 256, min_stage=0, extra_columns=[C.TASK, C.SOURCE])
    assert result.num_encoded == stored.num_rows > 0
    by_task = {}
    for row in stored.to_pylist():
        by_task.setdefault(row[C.TASK], []).append(row)
        assert row[C.source_latents_column(256)] is not None  # every stored row here is an edit
        assert len(row[C.source_latents_column(256)]) == len(row[C.latents_column(256)])
    assert tiny_id not in {row[C.SAMPLE_ID] for row in stored.to_pylist()}
    assert set(by_task) >= {"edit"}
