"""SFT as a recipe of pretraining (SPEC section 5): one phase of the same Ray Train loop on a curated subset of the
store (hand-picked ``sample_id``s and/or predicates over stored scores and annotation), with a lower learning
rate, starting from a checkpoint. Checkpoints, metrics, the loss curve and sample grids are pretraining's.

Pretraining reads every model part from ``weights_dir`` (the transformer to start from, the VAE and condition
encoder for its sample grids), while a training checkpoint holds only the transformer; ``start_weights`` puts the
checkpoint's transformer beside the other parts in one folder: links to ``base_weights_dir``, or for ``tiny``
the preset's parts written once.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from models.checkpoint import METADATA_KEY, MODEL_INDEX, read_metadata, save_components
from models.presets import ALL_PARTS, build_components
from pipelines.store import columns as C
from pipelines.store.reader import read_table
from training.config import PretrainConfig
from training.pretrain import run_pretraining
from training.rl.config import SftConfig, read_lines

# PretrainConfig keys that SftConfig sets itself.
OWN_KEYS = (
    "store_dir",
    "output_dir",
    "run_name",
    "preset",
    "weights_dir",
    "phases",
    "batch_size",
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
)


def start_weights(checkpoint: str | pathlib.Path, base_weights_dir: str | None, folder: pathlib.Path) -> pathlib.Path:
    """A complete diffusers-layout folder: the checkpoint's parts, the rest from ``base_weights_dir`` (linked) or
    built for the ``tiny`` preset."""
    checkpoint = pathlib.Path(checkpoint).resolve()
    metadata = read_metadata(checkpoint)
    if not metadata:
        raise ValueError(f"{checkpoint} is not a checkpoint folder we wrote (no model_index.json with our metadata)")
    preset, saved = metadata.get("preset", "qwen-image"), list(metadata.get("parts", ["transformer"]))
    rest = [part for part in ALL_PARTS if part not in saved]
    if base_weights_dir is None and rest:
        # tiny: the preset builds the missing parts exactly as the producers did (same seeds).
        save_components(folder, build_components(preset, parts=rest), metadata={"built_for": "sft"})
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for part in rest:
            _link(pathlib.Path(base_weights_dir).resolve() / part, folder / part)
    for part in saved:
        _link(checkpoint / part, folder / part)
    index = dict(MODEL_INDEX)
    index[METADATA_KEY] = {"preset": preset, "parts": list(ALL_PARTS), "start_checkpoint": str(checkpoint)}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def _link(source: pathlib.Path, target: pathlib.Path) -> None:
    """``target`` -> ``source`` (replacing whatever was there: a re-run may start from another checkpoint)."""
    if not source.is_dir():
        raise ValueError(f"model part {source} does not exist")
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.symlink_to(source, target_is_directory=True)


def curated_predicates(config: SftConfig) -> list:
    """The config's predicates plus ``sample_id in [...]`` for the hand-picked ids (inline and from the file)."""
    ids = list(config.sample_ids) + (read_lines(config.sample_ids_file, "sample_ids") if config.sample_ids_file else [])
    return list(config.predicates) + ([(C.SAMPLE_ID, "in", sorted(set(ids)))] if ids else [])


def sft_pretrain_config(config: SftConfig, weights_dir: pathlib.Path) -> PretrainConfig:
    """The pretraining config SFT runs: one phase named ``sft`` over the curated subset."""
    clashes = sorted(set(config.pretrain) & set(OWN_KEYS))
    if clashes:
        raise ValueError(f"sft: set {clashes} at the top level of the SFT config, not under 'pretrain'")
    preset = read_metadata(weights_dir).get("preset", "qwen-image")
    phase = {
        "name": "sft",
        "num_steps": config.num_steps,
        "resolution": config.resolution,
        "min_stage": config.min_stage,
        "predicates": curated_predicates(config),
    }
    optim = {**config.pretrain.get("optim", {}), "lr": config.lr, "warmup_steps": config.warmup_steps}
    return PretrainConfig.model_validate(
        {
            **config.pretrain,
            "store_dir": config.store_dir,
            "output_dir": config.output_dir,
            "run_name": config.run_name,
            "preset": preset,
            "weights_dir": str(weights_dir),
            "phases": [phase],
            "batch_size": config.batch_size,
            "num_workers": config.num_workers,
            "use_gpu": config.use_gpu,
            "cpus_per_worker": config.cpus_per_worker,
            "optim": optim,
        }
    )


def run_sft(config: SftConfig) -> dict:
    """Check the curated subset, assemble the start weights, run the pretraining loop; returns its summary."""
    predicates = curated_predicates(config)
    selected = read_table(config.store_dir, config.resolution, min_stage=config.min_stage, predicates=predicates)
    if selected.num_rows < config.batch_size:
        raise ValueError(
            f"the curated subset has {selected.num_rows} rows at {config.resolution}px, fewer than batch_size="
            f"{config.batch_size}: check sample_ids / predicates / min_stage against {config.store_dir}"
        )
    folder = (pathlib.Path(config.output_dir) / config.run_name).resolve()
    weights = start_weights(config.checkpoint, config.base_weights_dir, folder / "start_weights")
    print(f"[sft] {selected.num_rows} curated rows; {config.num_steps} steps at lr {config.lr}", flush=True)
    summary = run_pretraining(sft_pretrain_config(config, weights))
    return {**summary, "num_curated_rows": selected.num_rows}
