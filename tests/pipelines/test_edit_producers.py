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


def _multi_triplets(count: int, seed: int) -> list[tuple[list[bytes], str, bytes]]:
    """Edit-Plus triplets: two references (the second pastes its block into the first), an instruction, a target."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        first, second = photo_like(rng, 320, 320), photo_like(rng, 320, 320)
        target = first.copy()
        target[80:240, 80:240] = second[80:240, 80:240]
        instruction = f"put the middle of picture 2 into picture 1, variant {seed}.{index}"
        out.append(([png_bytes(first), png_bytes(second)], instruction, png_bytes(target)))
    return out


BAD_IMAGE = b"this is not an image"


def _write_multi_sources(folder) -> tuple[dict[str, SourceConfig], dict[str, dict[str, str]]]:
    """The three layouts with two good Edit-Plus triplets each and bad second images; returns the configs and, per
    layout, ``sample_id -> expected source_error`` ("" for a triplet the source delivers whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, dict[str, str]] = {}

    def expect(kind: str, references: list[bytes], instruction: str, target: bytes, error: str = "") -> None:
        ident = sample_id(target, instruction.encode(), references[0], tuple(references[1:]))
        expected.setdefault(kind, {})[ident] = error

    # Parquet: a source_images list column; the third triplet's second image does not decode, the fourth's is null.
    rows = _multi_triplets(4, seed=10)
    rows[2][0][1] = BAD_IMAGE
    images = [refs for refs, _, _ in rows[:3]] + [[rows[3][0][0], None]]
    for refs, instruction, target in rows[:3]:
        expect("parquet", refs, instruction, target)
    expect("parquet", [rows[3][0][0], b""], rows[3][1], rows[3][2], "no_source_image_2:null")
    table = pa.table(
        {
            "source_images": pa.array(images, pa.list_(pa.binary())),
            "instruction": [instruction for _, instruction, _ in rows],
            "target_image": [target for _, _, target in rows],
        }
    )
    pq.write_table(table, folder / "plus.parquet")

    # WebDataset: NNNN.src0.png + NNNN.src1.png; the third's src1 does not decode; a fourth is single-source src.png.
    rows = _multi_triplets(3, seed=20)
    rows[2][0][1] = BAD_IMAGE
    single = _triplets(1, seed=21)[0]
    with tarfile.open(folder / "plus.tar", "w") as tar:
        members = [
            [(f"src{n}.png", data) for n, data in enumerate(refs)] + [("png", t), ("txt", i.encode())]
            for refs, i, t in rows
        ]
        members.append([("src.png", single[0]), ("png", single[2]), ("txt", single[1].encode())])
        for index, files in enumerate(members):
            for name, data in files:
                info = tarfile.TarInfo(f"{index:04d}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for refs, instruction, target in rows:
        expect("webdataset", refs, instruction, target)
    expected["webdataset"][sample_id(single[2], single[1].encode(), single[0])] = ""

    # JSONL: a source_images list of paths; the third's second file does not decode, the fourth's does not exist.
    rows = _multi_triplets(4, seed=30)
    rows[2][0][1] = BAD_IMAGE
    lines = []
    for index, (refs, instruction, target) in enumerate(rows):
        paths = []
        for n, data in enumerate(refs):
            paths.append(f"plus{index}_src{n}.png")
            if index != 3 or n == 0:
                (folder / paths[-1]).write_bytes(data)
        (folder / f"plus{index}_tgt.png").write_bytes(target)
        lines.append(json.dumps({"source_images": paths, "image": f"plus{index}_tgt.png", "instruction": instruction}))
        if index < 3:
            expect("folder", refs, instruction, target)
    expect(
        "folder", [rows[3][0][0], b""], rows[3][1], rows[3][2], "no_source_image_2:unreadable_file:FileNotFoundError"
    )
    (folder / "plus.jsonl").write_text("\n".join(lines) + "\n")
    configs = {
        "parquet": SourceConfig(name="pq", kind="parquet", task="edit", paths=[str(folder / "plus.parquet")]),
        "webdataset": SourceConfig(name="wds", kind="webdataset", task="edit", paths=[str(folder / "plus.tar")]),
        "folder": SourceConfig(
            name="dir", kind="folder", task="edit", paths=[str(folder)], manifest=str(folder / "plus.jsonl")
        ),
    }
    return configs, expected


def test_multi_source_triplets_curated_and_stored(ray_session, tmp_path):
    """Edit-Plus triplets in the three layouts: every reference read (task edit_plus, references 2..n in their own
    column), a missing second image reported by the source with its number, a second image that does not decode
    dropped at S1 with a reason naming it; the kept triplets are stored with the latents of every reference."""
    from models.config import load_config
    from pipelines.curation import LABELS_FILE, CurationConfig, run_curation
    from store.reader import read_table

    configs, expected = _write_multi_sources(tmp_path / "in")
    second = C.source_image_bytes_column(2)
    for kind, config in configs.items():
        rows = read_source(config).take_all()
        assert {row[C.SAMPLE_ID]: row[C.SOURCE_ERROR] for row in rows} == expected[kind], kind
        for row in rows:
            if row[C.SOURCE_ERROR]:
                continue
            single = row[C.SOURCE].startswith("wds") and not row[second]
            assert row[C.TASK] == ("edit" if single else C.EDIT_PLUS), (kind, row[C.KEY])
            assert row[C.SOURCE_IMAGE_BYTES] and (single or row[second])
            assert not row[C.source_image_bytes_column(3)]
    assert sum(not row[second] for row in read_source(configs["webdataset"]).take_all()) == 1  # src.png still read

    config = load_config(
        CurationConfig,
        "configs/preprocess_edit_tiny.yaml",
        [
            f"output_dir={tmp_path / 'curated'}",
            f"encode.store_dir={tmp_path / 'store'}",
            f"sources={json.dumps([c.model_dump() for c in configs.values()])}",
            "synthetic_edits=0",
            "annotation.enabled=false",
        ],
    )
    result = run_curation(config)
    labels = {row["sample_id"]: row for row in pq.read_table(tmp_path / "curated" / LABELS_FILE).to_pylist()}
    everything = {ident: error for errors in expected.values() for ident, error in errors.items()}
    assert set(labels) == set(everything)
    bad_second = {"parquet": 2, "webdataset": 2, "folder": 2}
    bad_ids = set()
    for kind, errors in expected.items():
        idents = list(errors)
        bad_ids.add(idents[bad_second[kind]])
        for ident, error in errors.items():
            if error:  # dropped at S1 with the source's reason, which names the reference
                assert labels[ident]["stage"] == 0 and labels[ident]["drop_reason"] == error, labels[ident]
    for ident in bad_ids:
        assert labels[ident]["stage"] == 0, labels[ident]
        assert labels[ident]["drop_reason"].startswith("source_image_2:broken_file"), labels[ident]

    stored = read_table(
        tmp_path / "store", 256, min_stage=0, extra_columns=[C.TASK, C.extra_source_latents_column(256)]
    ).to_pylist()
    assert result.num_encoded == len(stored) > 0
    kept = {ident for ident, error in everything.items() if not error} - bad_ids
    assert {row[C.SAMPLE_ID] for row in stored} <= kept
    for row in stored:
        target = row[C.latents_column(256)]
        assert len(row[C.source_latents_column(256)]) == len(target)
        extras = row[C.extra_source_latents_column(256)]
        if row[C.TASK] == C.EDIT_PLUS:
            assert len(extras) == 1 and len(extras[0]) == len(target) and extras[0] != row[C.source_latents_column(256)]
        else:
            assert extras is None
    assert {row[C.TASK] for row in stored} == {"edit", C.EDIT_PLUS}
    # The instruction was encoded with every reference through the vision tower (Edit-Plus template): each 320 px
    # reference at the 384^2 vision area is 49 image tokens, which the single-source triplet has once.
    lengths = {task: [row[C.TEXT_LEN] for row in stored if row[C.TASK] == task] for task in ("edit", C.EDIT_PLUS)}
    assert min(lengths[C.EDIT_PLUS]) > max(lengths["edit"]) + 40, lengths


def test_every_reference_folds_into_the_triplets_checks():
    """Without Ray: the label pass sees the worst reference of each row on each check; a broken second image is
    named in the reason; a row without a second reference (NaN scores) is not touched by it."""
    from pipelines.curation import fold_source_image_scores
    from pipelines.operators.base import Check
    from pipelines.operators.stage import first_drop_reason
    from pipelines.operators.thresholds import FilterThresholds

    thresholds = FilterThresholds()
    broken = Check("broken_file", 1, C.SCORE_BROKEN_FILE, lambda t: (None, 0.0), "broken", "broken", C.DECODE_ERROR)
    small = Check("resolution", 1, C.SCORE_RESOLUTION, lambda t: (256.0, None), "resolution:low", "resolution:high")
    nan = float("nan")
    columns = {
        C.TASK: np.array([C.EDIT_PLUS, C.EDIT_PLUS, "edit", C.T2I], dtype=object),
        C.SCORE_BROKEN_FILE: np.zeros(4),
        C.SCORE_RESOLUTION: np.full(4, 512.0),
        C.DECODE_ERROR: np.full(4, "", dtype=object),
        C.source_image_column(C.SCORE_BROKEN_FILE): np.array([0.0, 0.0, 0.0, nan]),
        C.source_image_column(C.SCORE_RESOLUTION): np.array([512.0, 512.0, 512.0, nan]),
        C.source_image_column(C.SCORE_BROKEN_FILE, 2): np.array([1.0, 0.0, nan, nan]),
        C.source_image_column(C.SCORE_RESOLUTION, 2): np.array([nan, 64.0, nan, nan]),
        C.source_image_column(C.DECODE_ERROR, 2): np.array(["broken_file:unidentified", "", "", ""], dtype=object),
    }
    folded = fold_source_image_scores(columns, thresholds, [broken, small])
    reasons = first_drop_reason(folded, thresholds, [broken, small]).tolist()
    assert reasons == ["source_image_2:broken_file:unidentified", "resolution:low", "", ""]
    assert columns[C.DECODE_ERROR].tolist() == ["", "", "", ""]  # the input columns are not changed in place
