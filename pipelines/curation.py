"""The curation job (producers I): sources -> every operator once -> annotation -> scored Parquet -> labels + funnel.

Two passes, so that deduplication is global and thresholds stay re-applicable:

1. Streaming (Ray Data): read the sources, decode and score every CPU operator in one actor pool, embed with CLIP
   (alignment, NSFW, aesthetic), annotate with the captioner, read text with OCR (language, density, small
   characters, watermark verification), detect faces and categorise, compute the balance fields, score captions; write everything, image bytes included, to
   ``<output>/scored/`` (Parquet). Nothing is dropped in this pass: every input row is written with its scores.
2. Over stored scores only (no image is read): the global duplicate pass over perceptual hashes, then ``stage``
   (the highest of S1..S7 passed; S7 ranks quality within each category among the samples that pass S1..S6) and
   the first ``drop_reason`` under the configured thresholds, written to
   ``<output>/labels.parquet`` keyed by ``sample_id``; the funnel report next to it. Re-running this pass with new
   thresholds (``relabel``) costs seconds per million samples: "score once, filter many".

3. With ``encode.store_dir`` set: the kept samples (``stage >= encode.min_stage``) not yet in the latent store are
   encoded (VAE latents per resolution, condition-encoder hidden states) and committed (``pipelines.produce``).

The second pass holds the small score columns of the whole corpus in one process (about 200 bytes a sample).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pydantic
import ray.data
import yaml

from models.config import StrictModel
from pipelines.annotation import Captioner, CaptionerConfig, annotate
from pipelines.contracts import Stage, apply_chain, check_chain, describe_chain
from pipelines.encode import EncodeConfig
from pipelines.funnel import write_funnel_report
from pipelines.operators.balance import BALANCE_READS, BALANCE_WRITES, add_quality_rank, balance_checks, balance_columns
from pipelines.operators.base import NUM_STAGES, Check
from pipelines.operators.caption import CaptionScores, caption_checks
from pipelines.operators.clip_scores import (
    DISABLED_CLIP_READS,
    ClipScores,
    ClipScoresConfig,
    clip_checks,
    disabled_clip_columns,
)
from pipelines.operators.dedup import add_duplicate_column
from pipelines.operators.faces import FaceScores, FaceScoresConfig, face_checks
from pipelines.operators.registry import OperatorConfig, ScoreOperators, build_operators, operator_checks
from pipelines.operators.stage import compute_stage, first_drop_reason
from pipelines.operators.text_ocr import (
    DISABLED_OCR_READS,
    OcrScores,
    OcrScoresConfig,
    disabled_ocr_columns,
    text_ocr_checks,
)
from pipelines.operators.thresholds import FilterThresholds
from pipelines.pools import PoolConfig, map_stage
from pipelines.sources import SourceConfig, read_source
from pipelines.synth.config import SynthConfig
from pipelines.synth.edits import EditSynthConfig
from store import columns as C
from store.columns import ANN_RAW, CLIP_EMBEDDING, CLIP_SCORES, ELIGIBLE, OCR_COLUMNS

logger = logging.getLogger(__name__)

SCORED_DIR = "scored"
LABELS_FILE = "labels.parquet"
# Columns the label pass never reads: the heavy ones.
HEAVY_COLUMNS: tuple[str, ...] = (
    C.IMAGE_BYTES,
    C.SOURCE_IMAGE_BYTES,
    *C.EXTRA_SOURCE_IMAGE_COLUMNS,
    CLIP_EMBEDDING,
    ANN_RAW,
)

SOURCE_CHECK = Check(
    name="source",
    stage=1,
    column=C.SCORE_SOURCE_ERROR,
    bounds=lambda t: (None, 0.0),
    low_reason="source_error",
    high_reason="source_error",
    detail_column=C.SOURCE_ERROR,
)


class CurationConfig(StrictModel):
    sources: list[SourceConfig] = pydantic.Field(min_length=1)
    output_dir: str
    overwrite: bool = False  # score again even when a complete scoring pass exists (a re-run resumes otherwise)
    limit: int | None = pydantic.Field(default=None, ge=1)
    operators: OperatorConfig = OperatorConfig()
    thresholds: FilterThresholds = FilterThresholds()
    cpu_pool: PoolConfig = PoolConfig(max_size=2, batch_size=32)
    caption_pool: PoolConfig = PoolConfig(batch_size=64)
    clip: ClipScoresConfig = ClipScoresConfig()
    annotation: CaptionerConfig = CaptionerConfig()
    ocr: OcrScoresConfig = OcrScoresConfig()
    faces: FaceScoresConfig = FaceScoresConfig()
    encode: EncodeConfig = EncodeConfig()  # encode.store_dir set: pass 3 encodes kept samples into the latent store
    synth: SynthConfig = SynthConfig()
    # Synthetic text-rendering samples added per real input sample (0: none). With a limit, the synthetic count is
    # ratio x limit; otherwise ratio x the number of real rows (counted first).
    synthetic_ratio: float = pydantic.Field(default=0.0, ge=0)
    # Synthetic edit triplets (text replacement, colour and background changes, depth from a renderer, novel views:
    # pipelines.synth.edits) added to the inputs, for warm-up and tests; 0: none.
    synthetic_edits: int = pydantic.Field(default=0, ge=0)
    edit_synth: EditSynthConfig = EditSynthConfig()
    min_rows_per_file: int = pydantic.Field(default=2000, ge=1)


@dataclasses.dataclass
class CurationResult:
    output_dir: pathlib.Path
    num_samples: int
    funnel: dict
    num_encoded: int = 0


def all_checks(config: CurationConfig) -> list[Check]:
    """Every check of every stage for this configuration, in stage order (the order of drop reasons)."""
    checks = [SOURCE_CHECK, *operator_checks(build_operators(config.operators))]
    checks += [*caption_checks(), *clip_checks(config.clip)]
    checks += text_ocr_checks(watermark=config.annotation.active, ocr=config.ocr.enabled)
    checks += [*face_checks(), *balance_checks()]
    return sorted(checks, key=lambda check: check.stage)


def disabled_notes(config: CurationConfig) -> dict[str, str]:
    """Model-based operators that do not run under ``config`` (no weights configured), with why: logged at the
    start and shown in the funnel report."""
    notes = {
        "clip": config.clip.disabled_note(),
        "annotation": config.annotation.disabled_note(),
        "ocr": config.ocr.disabled_note(),
    }
    return {name: note for name, note in notes.items() if note}


def _with_synthetic(real: ray.data.Dataset, config: CurationConfig) -> ray.data.Dataset:
    """Real rows plus ``synthetic_ratio`` synthetic text-rendering rows per real row, in one dataset.

    Compositional samples take their backgrounds from the real images. Both sides carry the same columns:
    ``rendered_text`` is empty on real rows, the synthesiser's own bookkeeping column is dropped.
    """
    from pipelines.synth.source import synthetic_dataset

    num_real = config.limit if config.limit is not None else real.count()
    num_synthetic = max(1, round(config.synthetic_ratio * num_real))
    synthetic = synthetic_dataset(config.synth, num_synthetic, backgrounds=real)
    columns = [*C.SOURCE_COLUMNS, C.RENDERED_TEXT]
    real = real.map_batches(_add_empty_rendered_text, batch_format="numpy")
    return real.select_columns(columns).union(synthetic.select_columns(columns))


def _add_empty_rendered_text(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**batch, C.RENDERED_TEXT: np.full(len(batch[C.SAMPLE_ID]), "", dtype=object)}


def scoring_stages(config: CurationConfig) -> list[Stage]:
    """Pass 1's scoring chain in order, each stage with its contract (``pipelines.contracts``)."""

    def pool(stage: type, pool_config: PoolConfig, **kwargs) -> Stage:
        apply = functools.partial(map_stage, stage=stage, pool=pool_config, **kwargs)
        actors = (pool_config.min_size, pool_config.max_size)
        return Stage(stage.__name__, stage.READS, stage.WRITES, apply, pool_config.worker_resources(), actors)

    def task(function, reads: tuple[str, ...], writes: tuple[str, ...]) -> Stage:
        return Stage(function.__name__, reads, writes, lambda d: d.map_batches(function, batch_format="numpy"))

    stages = [pool(ScoreOperators, config.cpu_pool, config=config.operators)]
    if config.clip.clip is None:
        stages.append(task(disabled_clip_columns, DISABLED_CLIP_READS, CLIP_SCORES))
    else:
        stages.append(pool(ClipScores, config.clip.pool, config=config.clip))
    if config.annotation.active:  # the configured backend: transformers actors or vLLM
        apply = functools.partial(annotate, config=config.annotation)
        stages.append(Stage(Captioner.__name__, Captioner.READS, Captioner.WRITES, apply, *captioner_resources(config)))
    if config.ocr.enabled:
        stages.append(pool(OcrScores, config.ocr.pool, config=config.ocr))  # reads the watermark list when annotated
    else:
        stages.append(task(disabled_ocr_columns, DISABLED_OCR_READS, OCR_COLUMNS))
    stages.append(pool(FaceScores, config.faces.pool, config=config.faces))  # reads OCR (and annotation)
    stages.append(task(balance_columns, BALANCE_READS, BALANCE_WRITES))
    stages.append(pool(CaptionScores, config.caption_pool))
    return stages


def captioner_resources(config: CurationConfig) -> tuple[dict[str, float], tuple[int, int]]:
    """What the annotation stage's workers ask for: the transformers pool's actors, or vLLM engine replicas of
    ``tensor_parallel_size`` GPUs each."""
    annotation = config.annotation
    if annotation.backend == "transformers":
        return annotation.pool.worker_resources(), (annotation.pool.min_size, annotation.pool.max_size)
    replicas = annotation.vllm.concurrency  # n: autoscaling 1..n, or [min, max]
    low, high = (1, replicas) if isinstance(replicas, int) else replicas
    return {"GPU": float(annotation.vllm.tensor_parallel_size)}, (low, high)


# What the sources deliver to the scoring chain (the synthesisers' rows carry the same columns).
SCORING_INPUT: tuple[str, ...] = (*C.SOURCE_COLUMNS, C.RENDERED_TEXT)


def scoring_dataset(config: CurationConfig) -> ray.data.Dataset:
    """Pass 1 as a lazy Ray Dataset: every input row with every score, nothing dropped. The chain's contracts are
    checked first: a chain out of order fails here, before any source is read."""
    stages = scoring_stages(config)
    check_chain(stages, SCORING_INPUT)
    logger.info("curation: scoring chain %s", describe_chain(stages))
    datasets = [read_source(source) for source in config.sources]
    dataset = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    if config.limit is not None:
        dataset = dataset.limit(config.limit)
    if config.synthetic_ratio > 0:
        dataset = _with_synthetic(dataset, config)
    if config.synthetic_edits > 0:
        from pipelines.synth.edits import synthetic_edit_dataset

        if config.synthetic_ratio == 0:  # otherwise _with_synthetic has added the column to the real rows
            dataset = dataset.map_batches(_add_empty_rendered_text, batch_format="numpy")
        columns = list(SCORING_INPUT)
        edits = synthetic_edit_dataset(config.edit_synth, config.synthetic_edits).select_columns(columns)
        dataset = dataset.select_columns(columns).union(edits)
    for note in disabled_notes(config).values():
        logger.warning("curation: %s", note)
    return apply_chain(dataset, stages)


SCORED_DONE = "_SUCCESS"


def _prepare_output(config: CurationConfig) -> tuple[pathlib.Path, bool]:
    """The output folder, and whether its scoring pass is already complete (then a re-run resumes after it)."""
    output = pathlib.Path(config.output_dir)
    scored = output / SCORED_DIR
    complete = (scored / SCORED_DONE).is_file()
    if config.overwrite or (scored.exists() and not complete):
        # An interrupted scoring pass left an unknown subset of shards: score again from the start.
        shutil.rmtree(scored, ignore_errors=True)
        complete = False
    output.mkdir(parents=True, exist_ok=True)
    (output / "curation_config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return output, complete


def read_score_columns(output_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every light column of the scored shards (not image bytes, embeddings or raw answers), as numpy."""
    dataset = pads.dataset(str(pathlib.Path(output_dir) / SCORED_DIR), format="parquet")
    names = [name for name in dataset.schema.names if name not in HEAVY_COLUMNS]
    table = dataset.to_table(columns=names)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}


def fold_source_image_scores(
    columns: dict[str, np.ndarray], thresholds: FilterThresholds, checks: list[Check]
) -> dict[str, np.ndarray]:
    """Edit triplets pass a check only if all their images do: where an input image fails a check that the
    target passes, the triplet takes that input image's score of that column. Stage, drop reasons and the funnel
    then see the worst image of each triplet on each check (the reason names the check, as for a pair). Multi-image
    edits fold every reference in turn (``source_image_<n>.<column>``, present where the row has reference n); a
    check with a detail column (the decoder's reason for a broken file) then reads ``source_image_<n>:<reason>``,
    naming the reference that failed."""
    if C.TASK not in columns:
        return columns
    has_source = np.asarray(columns[C.TASK], dtype=object) != C.T2I
    if not has_source.any():
        return columns
    columns = dict(columns)
    for index in range(1, C.MAX_SOURCE_IMAGES + 1):
        present = has_source
        if index > 1:
            marker = C.source_image_column(C.SCORE_BROKEN_FILE, index)
            if marker not in columns:
                continue
            present = has_source & ~np.isnan(np.asarray(columns[marker], dtype=np.float64))
        if not present.any():
            continue
        for column in sorted({check.column for check in checks}):
            source_column = C.source_image_column(column, index)
            if source_column not in columns:
                continue
            worse = np.zeros(len(has_source), dtype=bool)
            for check in checks:
                if check.column != column:
                    continue
                failed = check.passes(columns[column], thresholds) & ~check.passes(columns[source_column], thresholds)
                failed &= present
                worse |= failed
                if index > 1 and check.detail_column is not None and failed.any():
                    _name_reference(columns, check, thresholds, index, failed)
            if worse.any():
                columns[column] = np.where(worse, columns[source_column], columns[column])
    return columns


def _name_reference(
    columns: dict[str, np.ndarray], check: Check, thresholds: FilterThresholds, index: int, failed: np.ndarray
) -> None:
    """Where reference ``index`` fails ``check``, its detail column reads ``source_image_<n>:<reason>``."""
    detail = np.asarray(columns.get(check.detail_column, np.full(len(failed), "", dtype=object)), dtype=object).copy()
    own = columns.get(C.source_image_column(check.detail_column, index))
    scores = np.asarray(columns[C.source_image_column(check.column, index)], dtype=np.float64)
    for row in np.flatnonzero(failed):
        reason = str(own[row]) if own is not None and own[row] else check.reason(float(scores[row]), thresholds)
        detail[row] = f"{C.SOURCE_IMAGE_PREFIX[:-1]}_{index}:{reason}"
    columns[check.detail_column] = detail


def relabel(output_dir: str | pathlib.Path, config: CurationConfig) -> dict:
    """Pass 2: duplicates, stage and drop reasons from stored scores; writes labels and the funnel report."""
    output_dir = pathlib.Path(output_dir)
    checks = all_checks(config)
    columns = add_duplicate_column(read_score_columns(output_dir), config.thresholds)
    columns = fold_source_image_scores(columns, config.thresholds, checks)
    # S7 keeps the top quality of each category among the samples that reach it: rank after stages 1-6.
    before_s7 = [check for check in checks if check.stage < NUM_STAGES]
    columns[ELIGIBLE] = compute_stage(columns, config.thresholds, before_s7) >= NUM_STAGES - 1
    columns = add_quality_rank(columns)
    funnel = write_funnel_report(output_dir, columns, config.thresholds, checks, notes=disabled_notes(config))
    labels = pa.table(
        {
            C.SAMPLE_ID: pa.array(columns[C.SAMPLE_ID], pa.string()),
            C.SCORE_DUPLICATE: pa.array(columns[C.SCORE_DUPLICATE], pa.float64()),
            C.STAGE: pa.array(compute_stage(columns, config.thresholds, checks), pa.int8()),
            C.DROP_REASON: pa.array(first_drop_reason(columns, config.thresholds, checks), pa.string()),
            C.QUALITY_RANK: pa.array(columns[C.QUALITY_RANK], pa.float64()),
        }
    )
    temporary = output_dir / f".{LABELS_FILE}.tmp"
    pq.write_table(labels, temporary)
    temporary.replace(output_dir / LABELS_FILE)
    return funnel


def run_curation(config: CurationConfig) -> CurationResult:
    """Scoring, labels and funnel, then (with ``encode.store_dir``) encoding into the latent store."""
    output, scored_already = _prepare_output(config)
    if scored_already:
        _say(f"1/3 scoring: {output / SCORED_DIR} holds a complete scoring pass; resuming after it")
    else:
        ocr = "OCR" if config.ocr.enabled else "no OCR (switched off)"
        _say(f"1/3 scoring: decode, every operator, models, {ocr}, faces (streaming; nothing dropped)")
        started = time.perf_counter()
        scoring_dataset(config).write_parquet(str(output / SCORED_DIR), min_rows_per_file=config.min_rows_per_file)
        (output / SCORED_DIR / SCORED_DONE).write_text("")
        _say(f"1/3 scoring done in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    funnel = relabel(output, config)
    _say(
        f"2/3 labels: {funnel['num_input']} samples, {funnel['num_kept_all_stages']} pass every stage, "
        f"{funnel['num_dropped']} dropped with a reason ({time.perf_counter() - started:.0f} s)"
    )
    result = CurationResult(output_dir=output, num_samples=funnel["num_input"], funnel=funnel)
    if config.encode.store_dir is not None:
        from pipelines.produce import encode_pass

        _say(f"3/3 encoding the samples of stage >= {config.encode.min_stage} into {config.encode.store_dir}")
        started = time.perf_counter()
        result.num_encoded = encode_pass(output / SCORED_DIR, output / LABELS_FILE, config.encode)
        _say(f"3/3 encoded {result.num_encoded} samples in {time.perf_counter() - started:.0f} s")
    return result


def _say(message: str) -> None:
    """One progress line of the curation job (Ray Data's bars, in a terminal, show the detail)."""
    print(f"[curation] {message}", flush=True)
