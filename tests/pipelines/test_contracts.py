"""Stage contracts: the scoring chain is checked column by column when it is built, before anything is read."""

from __future__ import annotations

import pytest

from pipelines import curation
from pipelines.contracts import Stage, StageContractError, check_chain
from pipelines.operators.registry import build_operators
from store import columns

from ..conftest import TINY_MODELS


def config(**overrides) -> curation.CurationConfig:
    sources = [{"kind": "webdataset", "paths": ["/nonexistent/00000.tar"]}]
    return curation.CurationConfig.model_validate({"sources": sources, "output_dir": "/nonexistent/out", **overrides})


def test_pipeline_contract_checked_at_build(monkeypatch) -> None:
    """FaceScores moved before OcrScores, whose text columns it reads: building the scoring dataset fails naming the
    stage and the column, and no source is read (no Ray task started)."""
    stages = curation.scoring_stages(config())
    names = [stage.name for stage in stages]
    faces = stages.pop(names.index("FaceScores"))
    stages.insert(names.index("OcrScores"), faces)

    def never(*args, **kwargs):
        raise AssertionError("a source was read before the chain was checked")

    monkeypatch.setattr(curation, "scoring_stages", lambda _: stages)
    monkeypatch.setattr(curation, "read_source", never)
    with pytest.raises(StageContractError) as refused:
        curation.scoring_dataset(config())
    message = str(refused.value)
    assert "stage FaceScores" in message and repr(columns.SCORE_TEXT_AREA) in message
    assert "OcrScores writes it, after FaceScores" in message


def test_every_configured_chain_is_in_order() -> None:
    """The chains the configs build (CLIP off or on, annotation off or on) pass their own check, and a chain without
    the OCR stage names the column nobody writes."""
    for overrides in ({}, TINY_MODELS):
        stages = curation.scoring_stages(config(**overrides))
        check_chain(stages, curation.SCORING_INPUT)
    assert [s.name for s in curation.scoring_stages(config(**TINY_MODELS))][:3] == [
        "ScoreOperators",
        "ClipScores",
        "Captioner",
    ]
    without_ocr = [stage for stage in curation.scoring_stages(config()) if stage.name != "OcrScores"]
    with pytest.raises(StageContractError, match="FaceScores .* 'score_text_area'.*no stage of the chain writes it"):
        check_chain(without_ocr, curation.SCORING_INPUT)


def test_a_stage_reading_a_source_column_the_source_lacks_is_refused() -> None:
    stage = Stage("Reader", (columns.CAPTION,), (), apply=lambda dataset: dataset)
    with pytest.raises(StageContractError, match="stage Reader \\(#1 of 1\\) reads column 'caption'"):
        check_chain([stage], [columns.IMAGE_BYTES])


def test_operator_scores_are_registered_in_build_order() -> None:
    assert [operator.name for operator in build_operators()] == list(columns.OPERATOR_SCORES)
