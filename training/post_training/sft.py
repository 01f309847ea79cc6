"""SFT as a recipe of pretraining (docs/qwen_image.md §5): one phase of the same Ray Train loop on a curated subset of
the store (hand-picked ``sample_id``s and/or predicates over stored scores and annotation), with a lower learning rate,
starting from a checkpoint. Checkpoints, metrics, the loss curve and sample grids are pretraining's.

The ``init`` folder's transformer is the starting point (``PretrainConfig.init``: a checkpoint we wrote, or the
released diffusers folder); with ``lora`` only adapters train. The VAE and condition encoder of the sample grids come
from the ``init`` folder when it holds them (an export, the released folder), else from ``base_weights_dir`` or the
tiny preset.
"""

from __future__ import annotations

import pathlib

from store import columns as C
from store.reader import count_rows
from training.config import PretrainConfig
from training.post_training.config import SftConfig, read_lines
from training.pretrain import run_pretraining

# PretrainConfig keys that SftConfig sets itself.
OWN_KEYS = (
    "store_dir",
    "output_dir",
    "run_name",
    "preset",
    "weights_dir",
    "init",
    "lora",
    "phases",
    "batch_size",
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
)


def curated_predicates(config: SftConfig) -> list:
    """The config's predicates plus ``sample_id in [...]`` for the hand-picked ids (inline and from the file)."""
    ids = list(config.sample_ids) + (read_lines(config.sample_ids_file, "sample_ids") if config.sample_ids_file else [])
    return list(config.predicates) + ([(C.SAMPLE_ID, "in", sorted(set(ids)))] if ids else [])


def sft_pretrain_config(config: SftConfig) -> PretrainConfig:
    """The pretraining config SFT runs: one phase named ``sft`` over the curated subset, from ``init`` (whose
    preset it takes, and which must hold a transformer: ``PretrainConfig`` checks)."""
    clashes = sorted(set(config.pretrain) & set(OWN_KEYS))
    if clashes:
        raise ValueError(f"sft: set {clashes} at the top level of the SFT config, not under 'pretrain'")
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
            "weights_dir": config.base_weights_dir,
            "init": str(pathlib.Path(config.init).resolve()),
            "lora": config.lora.model_dump() if config.lora else None,
            "phases": [phase],
            "batch_size": config.batch_size,
            "num_workers": config.num_workers,
            "use_gpu": config.use_gpu,
            "cpus_per_worker": config.cpus_per_worker,
            "optim": optim,
        }
    )


def run_sft(config: SftConfig) -> dict:
    """Check the curated subset, run the pretraining loop from the checkpoint; returns its summary."""
    predicates = curated_predicates(config)
    selected = count_rows(config.store_dir, config.resolution, min_stage=config.min_stage, predicates=predicates)
    if selected < config.batch_size:
        raise ValueError(
            f"the curated subset has {selected} rows at {config.resolution}px, fewer than batch_size="
            f"{config.batch_size}: check sample_ids / predicates / min_stage against {config.store_dir}"
        )
    pretrain = sft_pretrain_config(config)
    print(f"[sft] {selected} curated rows; {config.num_steps} steps at lr {config.lr}", flush=True)
    summary = run_pretraining(pretrain)
    return {**summary, "num_curated_rows": selected}
