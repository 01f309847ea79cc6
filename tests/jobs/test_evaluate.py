"""The evaluation job end to end on Ray Data: a checkpoint and the reference renderer in one comparison table."""

from __future__ import annotations

import json
import math
import pathlib

from models.checkpoint import save_components
from models.presets import build_components


def test_evaluate_job_compares_models(ray_session, tmp_path) -> None:
    from jobs.evaluate import main

    # A checkpoint holding only a VAE (what jobs/finetune_vae.py writes); the other parts come from its preset.
    checkpoint = save_components(tmp_path / "ckpt", build_components("tiny", parts=("vae",)))
    summary = main(
        [
            "--config",
            "configs/evaluate_tiny.yaml",
            "--limit",
            "2",
            f"output_dir={tmp_path / 'eval'}",
            f"models=[{{name: reference-render, reference: true}}, {{name: ckpt, checkpoint: {checkpoint}}}]",
            "vae.resolution=64",
            "generation.resolution=64",
            "generation.num_steps=2",
            "scenes.num_prompts=4",
        ]
    )
    results = json.loads(pathlib.Path(summary["results"]).read_text())
    assert list(results) == ["reference-render", "ckpt"]
    reference, model = results["reference-render"], results["ckpt"]
    # The reference draws each character plainly: OCR reads the common tier back.
    assert reference["chars"]["gb2312_level1"]["accuracy"] == 1.0
    assert reference["chars"]["gb2312_level1"]["num_prompts"] == 2 and "vae" not in reference
    # Random tiny weights render no legible character.
    assert model["chars"]["gb2312_level1"]["accuracy"] == 0.0
    for name in ("text_en", "text_zh", "ordinary"):
        entry = model["vae"][name]
        assert entry["num_images"] == 2 and 0 < entry["psnr"] < 60 and -1 < entry["ssim"] < 1
    assert not math.isnan(model["clip_score"]) and model["num_images"] == 3 * 2 + 2 * 2 + 2 + 2
    # Shape scenes (held-out split, at 64 px while the rest ran at 64 too): the reference draws each scene exactly
    # and the judge agrees on every attribute; random weights draw noise, not the scene.
    assert reference["scenes"]["overall"] == 1.0 and reference["scenes"]["num_prompts"] == 2
    assert model["scenes"]["overall"] < 1.0 and pathlib.Path(reference["scenes"]["grid"]).is_file()
    table = pathlib.Path(summary["table"]).read_text()
    assert "| reference-render |" in table and "| ckpt |" in table and "n/a" in table and "scenes colour" in table
    for grid in (model["vae"]["grid"], model["grid"], reference["grid"], summary["char_chart"]):
        assert pathlib.Path(grid).is_file()


def test_report_of_a_scenes_only_run_shows_what_it_measured(tmp_path):
    """The nano evaluation (configs/evaluate_nano.yaml: scenes only, no VAE, text or CLIP task): the table has the
    judge's columns and no empty ones, and the settings say what ran."""
    from models.config import load_config
    from training.evaluation.config import EvaluateConfig
    from training.evaluation.report import write_report

    config = load_config(EvaluateConfig, "configs/evaluate_nano.yaml", [])
    assert config.clip is None and not config.vae.enabled
    scenes = {"colour": 1.0, "shape": 0.75, "position": 1.0, "count": 1.0, "overall": 0.75, "num_prompts": 4}
    empty = {"accuracy": None, "num_prompts": 0}
    results = {
        name: {"chars": {}, "text": {"en": empty, "zh": empty}, "clip_score": None, "scenes": scenes}
        for name in ("untrained", "trained")
    }
    summary = write_report(results, config, tmp_path)
    table = pathlib.Path(summary["table"]).read_text()
    assert table.splitlines()[0] == "| model | scenes colour | shape | position | count | all |"
    assert "| trained | 1.000 | 0.750 | 1.000 | 1.000 | 0.750 |" in table
    assert "no CLIP score" in table and "VAE at" not in table and "48 prompts (held_out split) at 64px" in table


def test_scenes_only_evaluation_needs_no_ocr_stage():
    """A run of shape scenes only (the nano evaluation) starts no OCR actors: the judge scores the scenes from a batch
    that never went through OCR, and fills the score and verdict columns the report reads."""
    import numpy as np

    from models.config import load_config
    from pipelines.synth import shapes
    from store import columns as C
    from training.evaluation.config import EvaluateConfig
    from training.evaluation.run import needs_ocr, prompt_rows
    from training.evaluation.stages import judge_scores

    rows = prompt_rows(load_config(EvaluateConfig, "configs/evaluate_nano.yaml", ["scenes.num_prompts=3"]))
    assert not needs_ocr(rows)
    assert needs_ocr(prompt_rows(load_config(EvaluateConfig, None, ["scenes.num_prompts=3"])))  # characters, texts
    batch = {key: np.array([row[key] for row in rows]) for key in (C.EVAL_TASK, C.EVAL_PROMPT, C.EVAL_SIZE)}
    batch[C.EVAL_IMAGE] = np.stack([shapes.render_scene(shapes.parse_caption(row[C.EVAL_PROMPT]), 64) for row in rows])
    judged = judge_scores(batch)
    assert judged[C.EVAL_SCORE].tolist() == [1.0, 1.0, 1.0]
    assert all("shape✓" in read for read in judged[C.EVAL_READ])


def test_one_generator_actor_serves_every_model_with_the_images_each_would_get_alone():
    """The generation stage holds one model at a time and switches on the rows' ``model``: a batch mixing the
    reference and a model gives each row the image its model gives it in a batch of its own (bit for bit), and a row
    naming a model the run does not have is refused."""
    import numpy as np
    import pytest

    from models.config import load_config
    from store import columns as C
    from training.evaluation.config import MODEL_LIST, EvaluateConfig, ModelSpec
    from training.evaluation.run import prompt_rows
    from training.evaluation.stages import Generate
    from training.evaluation.text_accuracy import TEXT_EN

    config = load_config(
        EvaluateConfig, "configs/evaluate_nano.yaml", ["scenes.num_prompts=2", "generation.num_steps=2"]
    )
    specs = [ModelSpec(name="reference-render", reference=True), ModelSpec(name="untrained", preset="tiny")]
    stage = Generate(MODEL_LIST.dump_json(specs).decode(), config.generation.model_dump_json())

    def batch(rows: list[tuple[str, dict]]) -> dict:
        keys = (C.EVAL_TASK, C.EVAL_PROMPT, C.EVAL_EXPECTED, C.EVAL_SIZE, C.EVAL_SEED)
        out = {key: np.array([row[key] for _, row in rows]) for key in keys}
        return {**out, C.EVAL_MODEL: np.array([name for name, _ in rows])}

    first, second = prompt_rows(config)
    mixed = stage(batch([("untrained", first), ("reference-render", second), ("untrained", second)]))[C.EVAL_IMAGE]
    alone = stage(batch([("untrained", first), ("untrained", second)]))[C.EVAL_IMAGE]
    reference = stage(batch([("reference-render", second)]))[C.EVAL_IMAGE]
    assert np.array_equal(mixed[0], alone[0]) and np.array_equal(mixed[2], alone[1])
    assert np.array_equal(mixed[1], reference[0]) and not np.array_equal(mixed[1], mixed[2])
    assert stage.loaded == "reference-render" and stage.generator is None
    # The reference draws each row as its task says, in a batch that mixes scenes and text (as blocks do).
    text = {**second, C.EVAL_TASK: TEXT_EN, C.EVAL_EXPECTED: "HELLO", C.EVAL_PROMPT: 'a sign that says "HELLO"'}
    both = stage(batch([("reference-render", second), ("reference-render", text)]))[C.EVAL_IMAGE]
    assert np.array_equal(both[0], reference[0])
    assert np.array_equal(both[1], stage(batch([("reference-render", text)]))[C.EVAL_IMAGE][0])
    with pytest.raises(ValueError, match="'trained', which is not one of this run's models"):
        stage(batch([("trained", first)]))
