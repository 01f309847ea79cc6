"""Fine-tuning on a user's own images in one job: folders of images with captions -> curation -> latent store ->
LoRA (or full) training -> adapter, sample grids, loss curve.

    python jobs/finetune.py --config configs/lora_tiny.yaml --sample 12         # built-in images, tiny model
    python jobs/finetune.py --config configs/lora_qwen_image.yaml 'images=[{path: /data/my_style}]'

Each folder holds images with sidecar ``.txt`` captions (``cat.jpg`` + ``cat.txt``), or a JSONL manifest of
``{"image": path, "caption": text}``, the layout LoRA trainers use. Per folder: a caption prefix (the trigger word)
and repeats (its weight relative to the other folders: a folder with ``repeats: 2`` is drawn twice as often per
image as one with ``repeats: 1``). The producers' curation runs on them with the same filters as for pretraining
data (``curation`` overrides any threshold; ``min_stage`` says how many stages an image must pass: 1, the default,
keeps every readable, large-enough, non-duplicate image), then the kept images are encoded into the run's latent
store with the ``init`` model's own VAE and condition encoder (nearest aspect-ratio bucket, no up-scaling). Training
is one phase of the pretraining loop (``training.pretrain``) from ``init``, with ``lora`` adapters; re-running with
the same ``output_dir`` and ``run_name`` resumes (curation keeps its scores, the store its samples, training its
checkpoints).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Literal

import pydantic

from models.config import StrictModel
from models.lora import LoraSettings
from store import columns as C
from training.trainer import RunSettings


class ImageFolder(StrictModel):
    """A folder of the user's images."""

    path: str
    manifest: str | None = None  # a JSONL of {"image", "caption"} instead of sidecar .txt files
    caption_prefix: str = ""  # the trigger word(s), put before every caption of the folder, e.g. "sks dog, "
    repeats: float = pydantic.Field(default=1.0, gt=0)  # weight relative to the other folders
    # "edit": (source image, instruction, target) triplets for an edit LoRA, from a JSONL manifest of
    # {"source_image", "image", "instruction"}; they train as the pretraining loop trains edits.
    task: Literal["t2i", "edit"] = "t2i"


class FinetuneConfig(RunSettings):
    images: list[ImageFolder] = pydantic.Field(min_length=1)
    # The model to fine-tune: a diffusers pipeline folder as Qwen/Qwen-Image is published, a checkpoint or export we
    # wrote, or a finished run (models.checkpoint.check_model_folder). None: the tiny preset's random weights, written
    # once to <run>/base (smoke runs and tests only: a LoRA of random weights learns nothing useful).
    init: str | None = None
    output_dir: str = "outputs/finetune"
    run_name: str = "lora"
    resolution: int = pydantic.Field(default=1024, ge=16)
    min_stage: int = pydantic.Field(default=1, ge=1, le=7)
    curation: dict[str, Any] = {}  # pipelines.curation.CurationConfig keys: thresholds, pools, operators
    lora: LoraSettings | None = LoraSettings()  # None: full fine-tuning
    num_steps: int = pydantic.Field(ge=1)
    lr: float = pydantic.Field(default=1e-4, gt=0)
    warmup_steps: int = pydantic.Field(default=10, ge=0)
    batch_size: int = pydantic.Field(default=1, ge=1)
    # Prompts of the sample grids; empty: the first captions of the data, trigger words included.
    sample_prompts: list[str] = []
    sample_every: int = pydantic.Field(default=0, ge=0)  # 0: at the end only
    # Any other training.config.PretrainConfig key (samples, export_dtype, frozen_dtype, mixed_precision, ...).
    pretrain: dict[str, Any] = {}

    @property
    def run_folder(self) -> pathlib.Path:
        return (pathlib.Path(self.output_dir) / self.run_name).resolve()


def source_name(index: int, folder: ImageFolder) -> str:
    """The ``source`` value of a folder's samples in the store (the repeats weigh this column)."""
    return f"folder{index}-{pathlib.Path(folder.path).name}"


def base_model(config: FinetuneConfig) -> tuple[str, str]:
    """``(folder, preset)`` of the ``init`` folder, checked; without one, the tiny preset written once as a complete
    pipeline folder."""
    from models.checkpoint import check_model_folder, follow_run, save_components
    from models.presets import build_components

    if config.init is not None:
        folder = follow_run(config.init)
    else:
        folder = str(config.run_folder / "base")
        if not (pathlib.Path(folder) / "model_index.json").is_file():
            save_components(folder, build_components("tiny", seed=config.seed))
    return folder, check_model_folder(folder)[0]


def curation_config(config: FinetuneConfig, init: str, preset: str):
    """The producer config for the folders: the user's overrides, the folders as sources, encoding into the run's
    store with the ``init`` model's own VAE and condition encoder (of ``preset``) at the training resolution."""
    from pipelines.curation import CurationConfig

    sources = [
        {
            "name": source_name(index, folder),
            "kind": "folder",
            "paths": [str(pathlib.Path(folder.path).resolve())],
            "manifest": str(pathlib.Path(folder.manifest).resolve()) if folder.manifest else None,
            "caption_prefix": folder.caption_prefix,
            "task": folder.task,
        }
        for index, folder in enumerate(config.images)
    ]
    encode = {
        **config.curation.get("encode", {}),
        "store_dir": str(config.run_folder / "store"),
        "preset": preset,
        "weights_dir": init,
        "resolutions": [config.resolution],
        "min_stage": config.min_stage,
    }
    return CurationConfig.model_validate(
        {
            "min_rows_per_file": 1,
            **config.curation,
            "sources": sources,
            "output_dir": str(config.run_folder / "curated"),
            "encode": encode,
        }
    )


def pretrain_config(config: FinetuneConfig, init: str, prompts: list[str]):
    """One phase of the pretraining loop over the run's store, from ``init``, the folders weighted by repeats."""
    from training.config import PretrainConfig

    weights = {source_name(i, folder): folder.repeats for i, folder in enumerate(config.images)}
    phase = {
        "name": "finetune",
        "num_steps": config.num_steps,
        "resolution": config.resolution,
        "min_stage": config.min_stage,
        "mixture": {C.SOURCE: weights} if len(set(weights.values())) > 1 else {},
    }
    pretrain = dict(config.pretrain)
    samples = {"prompts": prompts, "every_steps": config.sample_every, **pretrain.pop("samples", {})}
    optim = {"weight_decay": 0.0, **pretrain.pop("optim", {}), "lr": config.lr, "warmup_steps": config.warmup_steps}
    run = config.model_dump(include=set(RunSettings.model_fields))
    return PretrainConfig.model_validate(
        {
            "export_dtype": "float32" if config.init is None else "bfloat16",
            **pretrain,
            **run,
            "store_dir": str(config.run_folder / "store"),
            "output_dir": config.output_dir,
            "run_name": config.run_name,
            "init": init,
            "lora": config.lora.model_dump() if config.lora else None,
            "phases": [phase],
            "batch_size": config.batch_size,
            "samples": samples,
            "optim": optim,
        }
    )


def first_captions(store_dir: pathlib.Path, resolution: int, count: int = 3) -> list[str]:
    from store.reader import read_table

    captions = read_table(store_dir, resolution).column(C.CAPTION).to_pylist()
    return list(dict.fromkeys(captions))[:count]


def run_finetune(config: FinetuneConfig) -> dict:
    """Curate and encode the folders, train, and return the run's summary (adapter, grids, loss curve, funnel)."""
    from pipelines.curation import run_curation

    config.run_folder.mkdir(parents=True, exist_ok=True)
    init, preset = base_model(config)
    print(f"[finetune] model {init}; {len(config.images)} image folder(s)", flush=True)
    curated = run_curation(curation_config(config, init, preset))
    store = config.run_folder / "store"
    prompts = first_captions(store, config.resolution) if store.is_dir() else []
    if not prompts:
        raise ValueError(
            f"no image of {[f.path for f in config.images]} passed stage {config.min_stage} at {config.resolution}px: "
            f"see {curated.output_dir / 'funnel.html'} (lower min_stage, resolution or the curation thresholds)"
        )
    prompts = config.sample_prompts or prompts
    print(f"[finetune] {curated.num_encoded} image(s) newly encoded into {store}", flush=True)
    from training.pretrain import run_pretraining

    summary = run_pretraining(pretrain_config(config, init, prompts))
    summary = {**summary, "store": str(store), "funnel": str(curated.output_dir / "funnel.html")}
    (config.run_folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
