"""Progressive pretraining on Ray Train: one ``TorchTrainer`` run per phase of the curriculum.

Each phase lists the latent store when it starts (so shards that producers committed meanwhile are trained on),
switches resolution and filters, and starts from the previous phase's final checkpoint. Within a phase Ray Train
restarts failed workers from the last checkpoint (``FailureConfig``); a job that is run again with the same
``output_dir`` and ``run_name`` skips finished phases and resumes the current one (``ray.train.get_checkpoint``).

Each phase ends with an export under ``<run>/exports/``: a complete ``QwenImagePipeline`` folder whose frozen parts
(VAE, condition encoder, tokenizer, scheduler) are links to the run's base (``weights_dir``, or ``<run>/base`` for
the tiny preset, written once here). The last export is the run's ``checkpoint`` in ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import pathlib

import ray

from store import columns as C
from training.config import EditSample, PretrainConfig
from training.loop import export_folder, merged_folder, train_loop_per_worker
from training.metrics import plot_loss_curve
from training.progress import Progress
from training.trainer import fit_trainer

logger = logging.getLogger(__name__)
PROGRESS_KEYS = ("phase", "loss", "samples_per_s")


def read_edit_image(path: str):
    """A sample edit's input image as RGB (EXIF orientation applied); one that cannot be read is a ``ValueError``."""
    from PIL import Image, ImageOps

    try:
        return ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    except OSError as error:
        raise ValueError(f"samples.edits: cannot read image {path!r}: {error}") from None


@ray.remote
def encode_sample_prompts(preset: str, weights_dir: str | None, samples: list[str] | dict) -> dict:
    """Condition embeddings of prompts (a list), or of a ``SampleConfig``'s prompts and edits (its dump: each edit's
    instruction with the input image through the vision tower), computed once, away from the train workers."""
    import numpy as np

    from models.condition_encoder import ConditionEncoder
    from models.generation import edit_source_size, resize_lanczos
    from models.presets import build_components

    components = build_components(preset, weights_dir=weights_dir, parts=("text_encoder", "tokenizer"))
    encoder = ConditionEncoder(components.text_encoder, components.tokenizer)
    if not isinstance(samples, dict):
        samples = {"prompts": list(samples), "edits": []}
    prompts = samples["prompts"]
    embeds = [e.float().numpy() for e in encoder.encode(prompts).unpadded()] if prompts else []
    negative = encoder.encode([" "]).unpadded()[0].float().numpy()
    out = {"texts": prompts, "embeds": embeds, "negative": negative, "edits": []}
    encoders = {
        template: ConditionEncoder(components.text_encoder, components.tokenizer, template=template)
        for template in ("edit", "edit_plus")
    }
    for edit in samples["edits"]:
        sample = EditSample.model_validate(edit)
        images = [read_edit_image(path) for path in sample.paths]
        vision = [
            resize_lanczos(image, *edit_source_size(samples["edit_vision_area"], *image.size)) for image in images
        ]
        # The edit template takes one image per instruction, the Edit-Plus template a list of them.
        seen = vision if sample.template == "edit" else [vision]
        encoder = encoders[sample.template]
        out["edits"].append(
            {
                "instruction": sample.instruction,
                "images": [np.asarray(image) for image in images],
                "embeds": encoder.encode_edit([sample.instruction], seen).unpadded()[0].float().numpy(),
                "negative": encoder.encode_edit([" "], seen).unpadded()[0].float().numpy(),
            }
        )
    return out


def _run_folder(config: PretrainConfig) -> pathlib.Path:
    return (pathlib.Path(config.output_dir) / config.run_name).resolve()


def check_store(config: PretrainConfig) -> None:
    """The store's header (``store.header``) against this run: its latents normalised as the run's VAE
    expects them (the exported pipeline decodes with it), and every phase's resolution encoded. A store without a
    header (written before it existed) is not checked."""
    from models.presets import vae_config
    from store.header import StoreHeaderMismatch, check_header

    vae = vae_config(config.preset, config.weights_dir)
    reader = f"the run's VAE (preset {config.preset!r}, weights {config.weights_dir or 'of the preset'})"
    expected = {"latents_mean": list(vae["latents_mean"]), "latents_std": list(vae["latents_std"])}
    header = check_header(config.store_dir, expected, reader)
    if header is None:
        return
    missing = sorted({phase.resolution for phase in config.phases} - set(header["resolutions"]))
    if missing:
        raise StoreHeaderMismatch(
            f"phases read resolutions {missing} that the latent store {config.store_dir} was not encoded at "
            f"(it has {header['resolutions']})"
        )


def count_phase_rows(config: PretrainConfig, phase) -> int:
    """The stored rows a phase selects (stage, predicates, hand-picked ids), counted from the filter's columns only;
    fewer than one batch is an error before any worker starts (a curated subset that matched nothing, a typo in a
    predicate's column value)."""
    from store.reader import count_rows

    rows = count_rows(config.store_dir, phase.resolution, min_stage=phase.min_stage, predicates=phase.predicates)
    if rows < config.batch_size_of(phase):
        raise ValueError(
            f"phase {phase.name!r} selects {rows} rows of {config.store_dir} at {phase.resolution}px (stage >= "
            f"{phase.min_stage}, predicates {phase.predicates}), fewer than batch_size={config.batch_size_of(phase)}"
        )
    return rows


def with_edit_vision_area(config: PretrainConfig) -> PretrainConfig:
    """``samples.edit_vision_area`` resolved: the area the run's edit rows were encoded at (the store's header, or the
    in-job curation's encoder), which the sample grids use and the exports record; a given one must equal it."""
    from store.header import EDIT_VISION_AREA, read_header, resolve_edit_vision_area

    if config.feed == "stream":
        recorded, where = config.curation.encode.edit_vision_area, "the job's curation encodes edits"
    else:
        header = read_header(config.store_dir) or {}
        recorded, where = header.get(EDIT_VISION_AREA), f"the latent store {config.store_dir} encoded its edits"
    area = resolve_edit_vision_area(config.samples.edit_vision_area, recorded, "samples.edit_vision_area", where)
    return config.model_copy(update={"samples": config.samples.model_copy(update={"edit_vision_area": area})})


def _curate_in_job(config: PretrainConfig) -> pathlib.Path:
    """Feed "stream": the producer pipeline's global passes (scoring, deduplication, stages, funnel) in this job,
    resumable like the producer job; encoding is left to each phase's streamed dataset."""
    from pipelines.curation import run_curation

    curation = config.curation.model_copy(
        update={
            "output_dir": str(pathlib.Path(config.curation.output_dir).resolve()),
            "encode": config.curation.encode.model_copy(update={"store_dir": None}),
        }
    )
    print(f"[pretrain] feed 'stream': curating into {curation.output_dir}", flush=True)
    result = run_curation(curation)
    print(f"[pretrain] curated {result.num_samples} samples; encoding each phase's share on the fly", flush=True)
    return result.output_dir


def _streamed_phase(config: PretrainConfig, phase, curated: pathlib.Path):
    """The phase's rows, encoded on the fly from the curated samples that reach its stage (a lazy Ray Dataset)."""
    import pyarrow.dataset as pads

    from pipelines.curation import LABELS_FILE, SCORED_DIR
    from pipelines.produce import encoded_dataset, kept_samples
    from training.data import SYNTHETIC_PREFIX, odds_for_share, streamed_phase_dataset

    keep = kept_samples(curated / LABELS_FILE, phase.min_stage)
    if not keep:
        raise ValueError(f"phase {phase.name!r}: no curated sample reaches stage {phase.min_stage}")
    odds = None
    if phase.synthetic_share is not None:
        sources = pads.dataset(str(curated / SCORED_DIR), format="parquet").to_table(columns=[C.SAMPLE_ID, C.SOURCE])
        kept = [src for sid, src in zip(*(sources.column(i).to_pylist() for i in (0, 1)), strict=True) if sid in keep]
        synthetic = sum(str(source).startswith(SYNTHETIC_PREFIX) for source in kept)
        odds = odds_for_share(phase.synthetic_share, synthetic, len(kept) - synthetic)
    encoded = encoded_dataset(curated / SCORED_DIR, keep, config.curation.encode)
    return streamed_phase_dataset(encoded, phase, config.seed, odds)


def write_base(config: PretrainConfig) -> pathlib.Path:
    """The frozen parts every export links to (``training.checkpointer.ensure_base``): ``weights_dir``, which must
    then hold them all, or ``<run>/base`` for the tiny preset."""
    from models.presets import missing_parts
    from training.checkpointer import FROZEN_PARTS, ensure_base

    if config.weights_dir:
        missing = missing_parts(config.weights_dir, FROZEN_PARTS)
        if missing:
            raise ValueError(f"weights_dir {config.weights_dir} lacks what every export links to: {', '.join(missing)}")
    return ensure_base(_run_folder(config), config.preset, [config.weights_dir])


def run_pretraining(config: PretrainConfig) -> dict:
    """All phases; returns the final checkpoint path and where the metrics, grids and loss curve are."""
    # Workers run in their own directories: every path they get must be absolute.
    update = {"output_dir": str(pathlib.Path(config.output_dir).resolve())}
    if config.store_dir:
        update["store_dir"] = str(pathlib.Path(config.store_dir).resolve())
    config = config.model_copy(update=update)
    for edit in config.samples.edits:  # an unreadable image is an error before anything starts
        for path in edit.paths:
            read_edit_image(path)
    if config.feed == "store":
        check_store(config)
    config = with_edit_vision_area(config)
    gpus = 1 if config.use_gpu else 0
    # No grids asked for (samples.prompts and samples.edits empty) and no caption dropout: no condition encoder is
    # loaded. With caption dropout the task's empty-prompt embedding is what dropped captions become.
    prompts = None
    if config.samples.prompts or config.samples.edits or config.loss.caption_dropout:
        # Encoded by a task of its own while the run starts; the workers fetch the embeddings before their first
        # step (training.loop), so the encoder's load and the worker group's start overlap.
        prompts = encode_sample_prompts.options(num_gpus=gpus, resources=config.worker_resources).remote(
            config.preset, config.weights_dir, config.samples.model_dump(mode="json")
        )
    folder = _run_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.model_dump_json(indent=2))
    base = write_base(config)
    curated = _curate_in_job(config) if config.feed == "stream" else None
    init_checkpoint = export = None
    phase_rows: dict[str, int] = {}
    for index, phase in enumerate(config.phases):
        marker = folder / f"phase-{index:02d}.done.json"
        if marker.exists():
            done = json.loads(marker.read_text())
            init_checkpoint, export = done["checkpoint"], done["export"]
            logger.info("phase %d (%s) finished earlier: %s", index, phase.name, export)
            continue
        selected = ""
        if config.feed == "store":
            phase_rows[phase.name] = count_phase_rows(config, phase)
            selected = f", {phase_rows[phase.name]} stored rows"
        print(
            f"[pretrain] phase {index + 1}/{len(config.phases)} {phase.name!r}: {phase.num_steps} steps at "
            f"{phase.resolution}px, stage >= {phase.min_stage}{selected}",
            flush=True,
        )
        # Feed "store": workers read the store themselves (training.data.StoreStream), listed at every epoch,
        # so shards committed while a phase runs join at its next epoch, and always at the next phase.
        result = fit_trainer(
            train_loop_per_worker,
            config,
            name=f"{config.run_name}-{index:02d}-{phase.name}",
            storage_path=folder / "ray",
            loop_config={
                "phase_index": index,
                "phase": phase.model_dump(mode="json"),
                "init_checkpoint": init_checkpoint,
                "sample_prompts": prompts,
                "base": str(base),
            },
            datasets={"train": _streamed_phase(config, phase, curated)} if curated else None,
            progress=Progress(folder / "metrics.csv", config.total_steps, "pretrain", PROGRESS_KEYS),
        )
        init_checkpoint = result.checkpoint.path
        export = str(export_folder(config, config.phase_bounds()[index][1], phase.name))
        marker.write_text(json.dumps({"checkpoint": init_checkpoint, "export": export, "metrics": result.metrics}))
    final = pathlib.Path(export)
    curve = plot_loss_curve(folder / "metrics.csv", folder / "loss_curve.png")
    model = {"checkpoint": str(final)}
    if config.lora is not None:  # the adapter alone, on its base; the merged pipeline only when asked for
        from models.lora import ADAPTER_FILE

        merged = merged_folder(final)
        model = {
            "checkpoint": str(merged) if config.lora.merge else None,
            "adapter": str(final / ADAPTER_FILE),
            "base": str(pathlib.Path(config.init or config.weights_dir).resolve()),
        }
    summary = {
        **model,
        "metrics": str(folder / "metrics.csv"),
        "loss_curve": str(curve),
        "phase_rows": phase_rows,  # rows each phase run here selected from the store (feed "store")
        "samples": str(folder / "samples"),
        "tensorboard": str(folder / "tensorboard"),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
