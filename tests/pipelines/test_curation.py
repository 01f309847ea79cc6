"""The curation job end to end on Ray: every input accounted for, bad inputs included; labels and funnel report."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.contracts import chain_writes
from pipelines.curation import (
    SCORED_DIR,
    CurationConfig,
    all_checks,
    disabled_notes,
    read_score_columns,
    relabel,
    run_curation,
    scoring_dataset,
    scoring_stages,
)
from pipelines.sources import SourceConfig, sample_id
from pipelines.synth.sample_corpus import sample_pairs

from ..conftest import TINY_MODELS
from ..fixtures import bad_inputs


def _mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """Seeded byte mutations of a valid JPEG: flips, cuts, insertions, header damage."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        buffer = bytearray(data)
        kind = index % 4
        if kind == 0:
            for position in rng.integers(0, len(buffer), 20):
                buffer[position] = int(rng.integers(0, 256))
        elif kind == 1:
            buffer = buffer[: int(rng.integers(1, len(buffer)))]
        elif kind == 2:
            position = int(rng.integers(0, len(buffer)))
            buffer[position:position] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        else:
            buffer[2 : 2 + 32] = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
        out.append(bytes(buffer))
    return out


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> tuple[str, list[str]]:
    folder = tmp_path_factory.mktemp("bad")
    names, images, captions = [], [], []
    for name, data, caption in bad_inputs():
        names.append(name)
        images.append(data)
        captions.append(caption)
    good = sample_pairs(1)[0][1]
    for index, data in enumerate(_mutations(good, 16, seed=3)):
        names.append(f"mutation_{index}")
        images.append(data)
        captions.append(b"A mutated picture of a hill.")
    # Captions as binary: invalid UTF-8 must reach the pipeline as it was.
    table = pa.table({"key": names, "jpg": pa.array(images, pa.binary()), "txt": pa.array(captions, pa.binary())})
    pq.write_table(table, folder / "bad.parquet")
    ids = [sample_id(image, caption) for image, caption in zip(images, captions, strict=True)]
    return str(folder / "bad.parquet"), ids


def test_default_config_uses_no_random_model(ray_session, tmp_path):
    """The job's defaults (no weights configured) build no CLIP and no captioner stage and no check of theirs; the
    funnel says why; OCR switched off likewise. Asked for by name, the tiny models run."""
    from models.config import load_config

    photos = tmp_path / "photos"
    photos.mkdir()
    for index, (_, image, _) in enumerate(sample_pairs(2)):
        (photos / f"{index}.jpg").write_bytes(image)
    source = f"sources=[{{kind: folder, paths: [{photos}]}}]"
    default = load_config(CurationConfig, None, [f"output_dir={tmp_path / 'out'}", source])
    assert default.clip.clip is None and not default.annotation.active
    plan = repr(scoring_dataset(default))  # lazy: nothing runs
    assert "ClipScores" not in plan and "Captioner" not in plan and "disabled_clip_columns" in plan
    names = {check.name for check in all_checks(default)}
    assert not names & {"clip_alignment", "nsfw", "aesthetic", "watermark"} and "ocr" in names
    assert sorted(disabled_notes(default)) == ["annotation", "clip"]
    without_ocr = default.model_validate({**default.model_dump(), "ocr": {"enabled": False}})
    plan = repr(scoring_dataset(without_ocr))
    assert "OcrScores" not in plan and "disabled_ocr_columns" in plan
    assert not {check.name for check in all_checks(without_ocr)} & {"ocr", "text_area", "text_height"}
    assert sorted(disabled_notes(without_ocr)) == ["annotation", "clip", "ocr"]

    chosen = default.model_validate({**default.model_dump(), **TINY_MODELS})
    plan = repr(scoring_dataset(chosen))
    assert "MapBatches(ClipScores)" in plan and "MapBatches(Captioner)" in plan
    assert {"clip_alignment", "watermark"} <= {check.name for check in all_checks(chosen)}
    assert disabled_notes(chosen) == {}
    with pytest.raises(ValueError, match="weights_dir"):
        CurationConfig.model_validate({**default.model_dump(), "annotation": {"preset": "qwen-image"}})
    with pytest.raises(ValueError, match="configure clip"):
        CurationConfig.model_validate({**default.model_dump(), "clip": {"nsfw_head": "nsfw.safetensors"}})


def test_bad_inputs_are_accounted_for(ray_session, bad_corpus, tmp_path):
    """With the default configuration: no model decides, and the funnel says which did not run."""
    path, expected_ids = bad_corpus
    config = CurationConfig.model_validate(
        {"sources": [{"kind": "parquet", "paths": [path]}], "output_dir": str(tmp_path / "out"), "min_rows_per_file": 1}
    )
    result = run_curation(config)
    labels = pq.read_table(tmp_path / "out" / "labels.parquet").to_pydict()
    # Every input is there exactly once, and is either kept (all stages) or dropped with a reason.
    assert sorted(labels["sample_id"]) == sorted(expected_ids)
    for stage, reason in zip(labels["stage"], labels["drop_reason"], strict=True):
        assert (stage == 7) != bool(reason), (stage, reason)
    assert result.num_samples == len(expected_ids)
    funnel = result.funnel
    assert funnel["num_kept_all_stages"] + funnel["num_dropped"] == funnel["num_input"] == len(expected_ids)

    by_key = dict(zip(read_score_columns(tmp_path / "out")["key"], labels["drop_reason"], strict=True))
    assert by_key["zero_bytes"] == "broken_file:empty"
    assert by_key["truncated_jpeg"] == "broken_file:truncated"
    assert by_key["random_bytes"] == "broken_file:unidentified"
    assert by_key["bomb_header"] == "too_large:decompression_bomb"  # refused from the header, nothing decoded
    assert by_key["one_pixel"].split(":")[0] in ("file_size", "resolution")
    assert by_key["invalid_utf8"] == "caption_invalid:invalid_utf8"
    assert by_key["empty_caption"] == "caption_invalid:empty"
    assert by_key["huge_caption"] == "caption_tokens:too_long"
    assert sorted(funnel["disabled"]) == ["annotation", "clip"]
    assert "no CLIP model configured" in (tmp_path / "out" / "funnel.html").read_text()
    assert not any(reason.startswith(("clip_alignment", "watermark")) for reason in labels["drop_reason"])


def test_curation_writes_scores_labels_and_funnel(curated_corpus, tmp_path):
    import shutil

    config, result = curated_corpus
    output = pathlib.Path(config.output_dir)
    assert result.num_samples == 30
    scored = read_score_columns(output)
    synthetic = [i for i, source in enumerate(scored["source"]) if str(source).startswith("synthetic/")]
    assert len(synthetic) == 6 and all(scored["rendered_text"][i] for i in synthetic)
    assert not any(scored["rendered_text"][i] for i in range(30) if i not in synthetic)
    columns = scored
    for name in (
        "score_blur",
        "score_phash",
        "score_clip_alignment",
        "score_caption_tokens",
        "ann_image_type",
        "annotation_error",
        "caption_fused",
    ):
        assert name in columns, name
    # Every column the scoring chain's stages declare they write is in the scored output (the contracts are true).
    written = set(pads.dataset(str(output / SCORED_DIR), format="parquet").schema.names)
    assert chain_writes(scoring_stages(config)) <= written, chain_writes(scoring_stages(config)) - written
    labels = pq.read_table(output / "labels.parquet").to_pydict()
    assert sum(labels["score_duplicate"][i] == 1.0 for i in range(30)) >= 1  # the corpus holds exact duplicates
    funnel = json.loads((output / "funnel.json").read_text())
    assert funnel["survivors_per_stage"]["S1"] < 30 and funnel["drop_reasons"]
    assert (output / "funnel.html").is_file() and (output / "funnel" / "stages.png").is_file()
    assert any((output / "funnel").glob("hist_blur*.png"))

    # Score once, filter many: stricter thresholds re-applied to the stored scores drop more, reading no image.
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    stricter = config.model_copy(
        update={
            "output_dir": str(copy),
            "thresholds": config.thresholds.model_copy(
                update={"s2": config.thresholds.s2.model_copy(update={"min_blur": 1e9})}
            ),
        }
    )
    refunnel = relabel(copy, stricter)
    assert refunnel["survivors_per_stage"]["S2"] == 0
    # A second run with the same output resumes after the complete scoring pass.
    again = config.model_copy(update={"output_dir": str(copy)})
    assert run_curation(again).funnel == result.funnel


def test_config_errors_name_the_key(tmp_path):
    from models.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="thresholds.s2.min_blurr"):
        load_config(
            CurationConfig,
            None,
            [f"output_dir={tmp_path}", "sources=[{kind: folder, paths: [x]}]", "thresholds.s2.min_blurr=3"],
        )
    with pytest.raises(ConfigError, match="sources"):
        load_config(CurationConfig, None, [f"output_dir={tmp_path}", "sources=[]"])
    config = load_config(CurationConfig, None, [f"output_dir={tmp_path}", "sources=[{kind: folder, paths: [x]}]"])
    assert config.sources == [SourceConfig(kind="folder", paths=["x"])]
