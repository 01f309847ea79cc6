"""Stage contracts: the scoring chain is checked column by column when it is built, before anything is read."""

from __future__ import annotations

import pytest

from pipelines import curation
from pipelines.contracts import Stage, StageContractError, check_chain, describe_chain
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
    """The chains the configs build (CLIP off or on, annotation off or on, OCR switched off) pass their own check,
    and a chain that merely lacks the OCR stage names the column nobody writes."""
    for overrides in ({}, TINY_MODELS, {"ocr": {"enabled": False}}, {**TINY_MODELS, "ocr": {"enabled": False}}):
        stages = curation.scoring_stages(config(**overrides))
        check_chain(stages, curation.SCORING_INPUT)
    switched_off = [stage.name for stage in curation.scoring_stages(config(ocr={"enabled": False}))]
    assert "OcrScores" not in switched_off and "disabled_ocr_columns" in switched_off
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


def test_stages_declare_what_their_workers_ask_for() -> None:
    """Each stage carries its pool's resources and actor counts (the job logs the chain with them); annotation on
    vLLM asks for its engine replicas' GPUs."""
    clip = {"clip": {}, "pool": {"num_gpus": 0.25}}
    chain = curation.scoring_stages(
        config(**{**TINY_MODELS, "clip": clip, "ocr": {"pool": {"num_cpus": 2, "max_size": 3}}})
    )
    by_name = {stage.name: stage for stage in chain}
    assert by_name["OcrScores"].resources == {"CPU": 2.0, "GPU": 0.0} and by_name["OcrScores"].actors == (1, 3)
    assert by_name["ClipScores"].resources["GPU"] == 0.25
    assert by_name["balance_columns"].actors is None  # a task, not a pool
    assert "OcrScores (2 CPU; 1-3 actors)" in describe_chain(chain)
    vllm = {"backend": "vllm", "weights_dir": "/models/qwen2.5-vl", "vllm": {"tensor_parallel_size": 2}}
    resources, actors = curation.captioner_resources(
        config(annotation={**vllm, "vllm": {**vllm["vllm"], "concurrency": [2, 4]}})
    )
    assert resources == {"GPU": 2.0} and actors == (2, 4)
    assert curation.captioner_resources(config(annotation={**vllm, "vllm": {"concurrency": 3}}))[1] == (1, 3)
