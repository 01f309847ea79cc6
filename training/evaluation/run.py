"""The evaluation of the models: Ray Data pipelines whose rows land as Parquet, then the report.

- VAE reconstruction, per model: ``(set, index)`` rows -> render (tasks) -> encode / decode, PSNR / SSIM (VAE
  actors) -> OCR of original and reconstruction (OCR actors) -> PNG -> ``<output>/rows/<model>/vae/``;
- generation, one pipeline for every model: prompt rows (characters per tier, English and Chinese texts, CLIP
  prompts, shape scenes) for each model in turn -> images (generator actors, each row with its model at its task's
  size) -> OCR and task score (OCR actors) -> the judge's verdicts on shape scenes -> CLIP score (CLIP actors) ->
  PNG -> ``<output>/rows/generation/`` (a ``model`` column tells the models apart). One pipeline starts its actors
  and Ray Data's execution once, not once a model; each actor still loads each model it meets.

The driver only lists the rows it hands to ``from_items`` and reads back the scalar columns it aggregates.
"""

from __future__ import annotations

import pathlib
import shutil
import time

import ray.data

from models.ray_runtime import local_read_blocks
from pipelines.pools import map_stage
from store import columns as C
from training.evaluation import report
from training.evaluation.config import MODEL_LIST, EvaluateConfig, ModelSpec
from training.evaluation.stages import (
    ORDINARY,
    TEXT_SETS,
    ClipScores,
    Generate,
    OcrScores,
    VaeReconstruction,
    judge_scores,
    render_vae_inputs,
    to_png,
)
from training.evaluation.text_accuracy import CLIP, SCENES, char_rows, text_rows


def vae_rows(config: EvaluateConfig) -> list[dict]:
    rows = [{C.EVAL_SET: name, C.EVAL_INDEX: i} for name in TEXT_SETS for i in range(config.vae.num_text_images)]
    return rows + [{C.EVAL_SET: ORDINARY, C.EVAL_INDEX: i} for i in range(config.vae.num_ordinary_images)]


def prompt_rows(config: EvaluateConfig) -> list[dict]:
    """Every generation prompt with its task, group, expected text, index within its task and seed (one per row)."""
    rows = char_rows(config.chars.tiers, config.chars.num_per_tier, config.chars.template, config.seed)
    rows += text_rows("en", config.text.num_per_language, config.text.template_en, config.seed)
    rows += text_rows("zh", config.text.num_per_language, config.text.template_zh, config.seed)
    rows += [
        {C.EVAL_TASK: CLIP, C.EVAL_GROUP: "general", C.EVAL_PROMPT: prompt, C.EVAL_EXPECTED: ""}
        for prompt in config.clip_prompts
    ]
    rows = [{**row, C.EVAL_SIZE: config.generation.resolution} for row in rows]
    rows += scene_rows(config)
    counts: dict[str, int] = {}
    numbered = []
    for number, row in enumerate(rows):
        # Position within its task, for the grids.
        index = counts[row[C.EVAL_TASK]] = counts.get(row[C.EVAL_TASK], -1) + 1
        numbered.append({**row, C.EVAL_INDEX: index, C.EVAL_SEED: config.seed * 100_003 + number})
    return numbered


def scene_rows(config: EvaluateConfig) -> list[dict]:
    """Shape-scene prompts (captions of the scene grammar) of the configured split, at the scenes' resolution."""
    from pipelines.synth import shapes

    drawn = shapes.scenes(
        config.scenes.num_prompts, seed=config.seed + 1, kinds=tuple(config.scenes.kinds), split=config.scenes.split
    )
    return [
        {
            C.EVAL_TASK: SCENES,
            C.EVAL_GROUP: "one" if len(scene.objects) == 1 else "two",
            C.EVAL_PROMPT: shapes.caption(scene),
            C.EVAL_EXPECTED: shapes.caption(scene),
            C.EVAL_SIZE: config.scenes.resolution,
        }
        for scene in drawn
    ]


def _write(dataset: ray.data.Dataset, folder: pathlib.Path) -> pathlib.Path:
    shutil.rmtree(folder, ignore_errors=True)
    dataset.map_batches(to_png, batch_format="numpy").write_parquet(str(folder))
    return folder


def run_vae(config: EvaluateConfig, spec: ModelSpec, folder: pathlib.Path) -> pathlib.Path:
    rows = vae_rows(config)
    dataset = ray.data.from_items(rows, override_num_blocks=local_read_blocks()).map_batches(
        render_vae_inputs,
        batch_format="numpy",
        batch_size=config.vae.pool.batch_size,
        fn_kwargs={"resolution": config.vae.resolution, "seed": config.seed, "folder": config.vae.ordinary_folder},
    )
    dataset = map_stage(dataset, VaeReconstruction, config.vae.pool, spec_json=spec.model_dump_json())
    dataset = map_stage(dataset, OcrScores, config.ocr_pool)
    return _write(dataset, folder)


def needs_ocr(rows: list[dict]) -> bool:
    """Whether any generated row is scored by OCR: shape scenes are not (the judge scores them, and reads their
    words itself), so a run of scenes only starts no OCR actors."""
    return any(row[C.EVAL_TASK] != SCENES for row in rows)


def run_generation(config: EvaluateConfig, specs: list[ModelSpec], folder: pathlib.Path) -> pathlib.Path:
    """Every prompt row for each model of ``specs``, in one pipeline (rows ordered by model)."""
    prompts = prompt_rows(config)
    rows = [{C.EVAL_MODEL: spec.name, **row} for spec in specs for row in prompts]
    dataset = ray.data.from_items(rows, override_num_blocks=local_read_blocks())
    dataset = map_stage(
        dataset,
        Generate,
        config.generation.pool,
        specs_json=MODEL_LIST.dump_json(specs).decode(),
        generation_json=config.generation.model_dump_json(),
    )
    if needs_ocr(prompts):
        dataset = map_stage(dataset, OcrScores, config.ocr_pool)
    dataset = dataset.map_batches(judge_scores, batch_format="numpy", batch_size=64)
    if config.clip is not None:
        dataset = map_stage(dataset, ClipScores, config.clip_pool, clip_json=config.clip.model_dump_json())
    return _write(dataset, folder)


def run_evaluation(config: EvaluateConfig) -> dict:
    """The models' VAEs in turn, then their generations in one pipeline; returns where the JSON, the comparison
    table and the grids are."""
    output = pathlib.Path(config.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(config.model_dump_json(indent=2))
    vae_folders: dict[str, pathlib.Path | None] = {spec.name: None for spec in config.models}
    if config.vae.enabled:
        for number, spec in enumerate(config.models, 1):
            if spec.reference:
                continue
            started = time.perf_counter()
            print(
                f"[evaluate] model {number}/{len(config.models)} {spec.name!r}: VAE reconstruction of "
                f"{len(vae_rows(config))} images",
                flush=True,
            )
            vae_folders[spec.name] = run_vae(config, spec, output / "rows" / spec.name / "vae")
            print(f"[evaluate]   done in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    names = ", ".join(spec.name for spec in config.models)
    print(
        f"[evaluate] generation and scores of {len(prompt_rows(config))} prompts for each of {len(config.models)} "
        f"models ({names}), in one pipeline",
        flush=True,
    )
    gen_folder = run_generation(config, config.models, output / "rows" / "generation")
    print(f"[evaluate]   done in {time.perf_counter() - started:.0f} s", flush=True)
    results = {
        spec.name: report.model_results(spec, vae_folders[spec.name], gen_folder, output, config.grid_size)
        for spec in config.models
    }
    return report.write_report(results, config, output)
