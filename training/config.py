"""Pretraining configuration: the model, the optimiser, the progressive phases, checkpoints and metrics.

A recipe is a YAML file of these keys (``configs/pretrain_*.yaml``); every key can be overridden on the command
line (``optim.lr=1e-4``). Unknown keys and bad values are errors that name the key.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from models.checkpoint import check_model_folder, follow_run
from models.config import StrictModel, read_lines
from models.lora import LoraSettings
from models.schedule import LossWeighting, SigmaSampling
from pipelines.curation import CurationConfig
from store import columns as C
from training.optim import AdamConfig
from training.parallel import FrozenDtype, MixedPrecision, check_frozen_dtype
from training.trainer import RunSettings


class PhaseConfig(StrictModel):
    """A curriculum phase (docs/qwen_image.md §5): which rows of the store, at which resolution, for how long."""

    name: str
    num_steps: int = pydantic.Field(ge=1)
    resolution: int = 256
    min_stage: int = pydantic.Field(default=1, ge=0, le=7)
    # (column, operator, value) over stored columns, e.g. ["score_aesthetic", ">=", 5.0] or ["category", "in", [..]]
    predicates: list[tuple[str, str, float | int | str | list]] = []
    # Hand-picked samples (an SFT phase, docs/qwen_image.md §5): their ids inline and/or in a file, one per line.
    # Both become the predicate ``sample_id in [...]`` when the config is read (the file on the machine that reads
    # the config, so workers never need it); the ids are kept in ``predicates`` only.
    sample_ids: list[str] = []
    sample_ids_file: str | None = None
    # Mixture weights per value of a stored categorical column, e.g. {"category": {"text_rendering": 2.0}};
    # rows are kept with probability weight / max weight (values not listed weigh 1.0).
    mixture: dict[str, dict[str, float]] = {}
    # Task mixture: weights per task (store.columns.TASKS: "t2i", "edit", "depth", "novel_view", "edit_plus",
    # "inpaint"), applied like ``mixture`` to the stored ``task`` column (a task left out weighs 1.0; weight 0 leaves
    # it out of the phase). Empty: every task as stored.
    tasks: dict[C.Task, float] = {}
    # Share of synthetic text-rendering rows (source "synthetic/..."); None leaves the store's share.
    synthetic_share: float | None = pydantic.Field(default=None, ge=0, le=1)
    lr_scale: float = pydantic.Field(default=1.0, gt=0)
    # Per data-parallel worker and micro-batch in this phase; None: the run's batch_size. Low resolutions fit larger
    # batches than the last phase (the memory plan, jobs/memory_plan.py, gives the largest per resolution).
    batch_size: int | None = pydantic.Field(default=None, ge=1)

    @pydantic.field_validator("tasks")
    @classmethod
    def _task_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(weight < 0 for weight in weights.values()) or (weights and max(weights.values()) <= 0):
            raise ValueError(f"task weights must be non-negative with at least one positive, got {weights}")
        return weights

    @pydantic.model_validator(mode="before")
    @classmethod
    def _sample_ids_into_predicates(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not (data.get("sample_ids") or data.get("sample_ids_file")):
            return data
        ids = list(data.get("sample_ids") or [])
        if data.get("sample_ids_file"):
            ids += read_lines(data["sample_ids_file"], "sample_ids")
        if not ids:
            raise ValueError(f"sample_ids_file {data['sample_ids_file']} lists no sample id")
        predicates = [*data.get("predicates", []), (C.SAMPLE_ID, "in", sorted(set(ids)))]
        return {**data, "predicates": predicates, "sample_ids": [], "sample_ids_file": None}

    @pydantic.model_validator(mode="after")
    def _tasks_into_mixture(self) -> PhaseConfig:
        """The task weights are a mixture over the stored ``task`` column (one mechanism for every weighting)."""
        if self.tasks and self.mixture.get(C.TASK) != self.tasks:
            if C.TASK in self.mixture:
                raise ValueError(f"give task weights once: in tasks or in mixture[{C.TASK!r}], not both")
            self.mixture = {**self.mixture, C.TASK: dict(self.tasks)}  # re-validates once, then equal
        return self


class OptimConfig(AdamConfig):
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = pydantic.Field(default=0.1, ge=0, le=1)  # cosine floor, as a fraction of lr
    grad_accum: int = pydantic.Field(default=1, ge=1)


class LossConfig(StrictModel):
    sigma_sampling: SigmaSampling = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: LossWeighting = "none"
    # Share of text-to-image samples whose condition is replaced by the empty prompt's (" ", the sampler's negative
    # prompt), so that true CFG's unconditional branch is one the model has learned. Edit samples keep theirs.
    caption_dropout: float = pydantic.Field(default=0.0, ge=0, lt=1)


class EditSample(StrictModel):
    """An edit for the sample grids: an instruction and its input image file (``image``: the edit template), or
    several (``images``: the Edit-Plus template, "Picture 1", "Picture 2", ... in the order given)."""

    image: str | None = None
    images: list[str] = pydantic.Field(default=[], max_length=C.MAX_SOURCE_IMAGES)
    instruction: str

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> EditSample:
        if (self.image is None) == (not self.images):
            raise ValueError("an edit sample takes an input image (image: path) or several (images: [paths])")
        return self

    @property
    def template(self) -> str:
        return "edit" if self.image is not None else "edit_plus"

    @property
    def paths(self) -> list[str]:
        return [self.image] if self.image is not None else list(self.images)


class SampleConfig(StrictModel):
    """Sample grids from fixed prompts: rank 0 decodes them with the VAE (the condition encoder runs once, in a
    task of its own while the run starts: consumers never load it). ``edits`` add a grid of edits (input | result)."""

    every_steps: int = pydantic.Field(default=0, ge=0)  # 0: only at the end of each phase
    prompts: list[str] = ["a red apple on a wooden table", 'a shop sign that reads "OPEN"', "一只橘猫在雪地里"]
    edits: list[EditSample] = []
    # The area at which the vision tower sees an edit's input image: the one the run's edits were encoded at.
    # None (the default): the latent store's header's (or the in-job curation's encode.edit_vision_area), else
    # 384 x 384; a value that differs from the store's is refused. The exports record it in their metadata.
    edit_vision_area: int | None = pydantic.Field(default=None, ge=28 * 28)
    num_steps: int = pydantic.Field(default=20, ge=1)
    true_cfg_scale: float = 4.0
    seed: int = 0


class PretrainConfig(RunSettings):
    # Where batches come from. "store" (the normal mode): the latent store at ``store_dir``, which producers may be
    # appending to as a separate job. "stream": the producer pipeline ``curation`` runs inside this job; its global
    # passes (scoring, deduplication, stages) first, then each phase's kept samples are encoded on the fly by Ray
    # Data actor pools and handed to the workers without being stored (re-encoded every epoch: for short runs, or
    # where storage is the constraint).
    feed: Literal["store", "stream"] = "store"
    store_dir: str | None = None
    curation: CurationConfig | None = None
    output_dir: str = "outputs/pretrain"
    run_name: str = "pretrain"
    preset: str = "tiny"
    # Where training starts: a diffusers pipeline folder as Qwen/Qwen-Image (or -Edit) is published, a checkpoint
    # or export we wrote, or a finished run's folder (its final export); checked part by part
    # (models.checkpoint.check_model_folder). Its transformer is the start; when it holds the frozen parts (VAE,
    # condition encoder, tokenizer, scheduler) they are the run's base too (sample grids, exports' links), unless
    # weights_dir names another folder. None: weights_dir's transformer, or the tiny preset's random weights.
    init: str | None = None
    weights_dir: str | None = None  # the frozen parts (a diffusers-layout folder); the tiny preset's when None
    # LoRA: adapters train, the base (from init or weights_dir) stays frozen in frozen_dtype; checkpoints hold the
    # adapters (and their optimiser) only, and each export is the adapter file in diffusers' format
    # (pytorch_lora_weights.safetensors), plus the merged pipeline when lora.merge is set.
    lora: LoraSettings | None = None
    # The frozen base's dtype. auto: the compute dtype under FSDP (bf16 on GPU), fp32 under DDP.
    frozen_dtype: FrozenDtype = "auto"
    phases: list[PhaseConfig] = pydantic.Field(min_length=1)
    batch_size: int = pydantic.Field(default=8, ge=1)  # per data-parallel worker, per micro-batch (or the phase's)
    # training.parallel.MixedPrecision. With DDP it is autocast; with FSDP, the dtype parameters are gathered in
    # (gradients are always reduced, and the optimiser always steps, in fp32).
    mixed_precision: MixedPrecision = "auto"
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    ema_decay: float | None = pydantic.Field(default=None, gt=0, lt=1)
    # Exports (complete diffusers pipeline folders under <run>/exports/) are written at the end of every phase, and
    # every export_every steps when it is set (0: phase ends only); their transformer is saved in export_dtype.
    export_every: int = pydantic.Field(default=0, ge=0)
    export_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    samples: SampleConfig = SampleConfig()
    shuffle_buffer: int = pydantic.Field(default=256, ge=0)  # rows; 0 keeps the store's order
    # Failure injection for tests: the first time this step is reached, the rank-0 training worker process kills
    # itself with SIGKILL (a dead worker, as a lost node or an OOM kill leaves it), and Ray Train restarts the group.
    fail_at_step: int | None = None

    @pydantic.field_validator("init")
    @classmethod
    def _init(cls, path: str | None) -> str | None:
        return None if path is None else follow_run(path)  # checked once, in _model_source

    @pydantic.model_validator(mode="after")
    def _model_source(self) -> PretrainConfig:
        from models.presets import missing_parts
        from training.checkpointer import FROZEN_PARTS

        if self.init is not None:
            preset, parts = check_model_folder(self.init)
            if "transformer" not in parts:
                raise ValueError(f"init {self.init} holds no transformer to train")
            if "preset" in self.model_fields_set and self.preset != preset:
                raise ValueError(f"preset {self.preset!r} differs from init's ({preset!r}, {self.init}): leave it out")
            if self.preset != preset:
                self.preset = preset  # assignment validates again; then equal
            if self.weights_dir is None and not missing_parts(self.init, FROZEN_PARTS):
                self.weights_dir = self.init  # the released folder or an export: its frozen parts are the base
        if self.lora is not None:
            if self.init is None and self.weights_dir is None:
                raise ValueError("lora adapts trained weights: set init (the folder to fine-tune) or weights_dir")
            if self.parallel.tensor_parallel > 1:
                raise ValueError("lora: tensor_parallel is not built for LoRA-wrapped layers; shard with fsdp")
            if self.lora.quantize != "none" and (self.parallel.strategy != "ddp" or self.num_workers != 1):
                raise ValueError(
                    f"lora.quantize={self.lora.quantize} trains on one worker (parallel.strategy=ddp, num_workers=1): "
                    "a quantised base is for fine-tuning on one GPU; on more, shard a bf16 base with fsdp"
                )
        gpu_autocast = self.use_gpu and self.mixed_precision != "fp32"
        check_frozen_dtype(self.frozen_dtype, self.parallel.strategy, autocast=gpu_autocast)
        return self

    @pydantic.model_validator(mode="after")
    def _feed_has_its_source(self) -> PretrainConfig:
        if self.feed == "store" and not self.store_dir:
            raise ValueError("feed 'store' needs store_dir (the latent store to read)")
        if self.feed == "stream":
            if self.curation is None:
                raise ValueError("feed 'stream' needs curation (the producer pipeline to run in this job)")
            missing = sorted({phase.resolution for phase in self.phases} - set(self.curation.encode.resolutions))
            if missing:
                raise ValueError(f"feed 'stream': phases train at {missing} px, not in curation.encode.resolutions")
            if self.parallel.tensor_parallel > 1:
                raise ValueError(
                    "feed 'stream' gives every worker its own rows, but a tensor-parallel group must read the same "
                    "ones: use feed 'store' with parallel.tensor_parallel > 1"
                )
        return self

    @property
    def total_steps(self) -> int:
        return sum(phase.num_steps for phase in self.phases)

    def batch_size_of(self, phase: PhaseConfig) -> int:
        """The phase's batch per data-parallel worker and micro-batch: its own, else the run's."""
        return phase.batch_size or self.batch_size

    def phase_bounds(self) -> list[tuple[int, int]]:
        """(first step, end step) of each phase in global steps."""
        bounds, start = [], 0
        for phase in self.phases:
            bounds.append((start, start + phase.num_steps))
            start += phase.num_steps
        return bounds


def default_phases(scale: float = 1.0) -> list[PhaseConfig]:
    """The recipe of docs/qwen_image.md §5 in four phases: 256 on mass data without text; 256 with text and synthetic
    data; 640 on curated, balanced data; 1328 jointly with 640 on the top of each category. ``scale`` multiplies
    the step counts (1.0: a small run of 4,000 steps; real runs scale it by thousands)."""

    def steps(count: int) -> int:
        return max(1, round(count * scale))

    return [
        PhaseConfig(
            name="s256-mass",
            num_steps=steps(1000),
            resolution=256,
            min_stage=2,
            mixture={C.CATEGORY: {"text_rendering": 0.1}},
        ),
        PhaseConfig(
            name="s256-text",
            num_steps=steps(1000),
            resolution=256,
            min_stage=4,
            synthetic_share=0.05,
            mixture={C.CATEGORY: {"text_rendering": 1.0}},
        ),
        PhaseConfig(
            name="s640-curated",
            num_steps=steps(1000),
            resolution=640,
            min_stage=5,
            mixture={C.CATEGORY: {"general": 1.0, "portrait": 2.0, "text_rendering": 2.0}},
        ),
        PhaseConfig(
            name="s1328-balanced",
            num_steps=steps(1000),
            resolution=1328,
            min_stage=7,
            lr_scale=0.5,
            mixture={C.CATEGORY: {"general": 1.0, "portrait": 2.0, "text_rendering": 2.0}},
        ),
    ]


def limit_steps(config: PretrainConfig, max_steps: int) -> PretrainConfig:
    """A smoke-run copy: phases trimmed in order so the whole run takes at most ``max_steps`` steps."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    phases, left = [], max_steps
    for phase in config.phases:
        if left == 0:
            break
        phases.append(phase.model_copy(update={"num_steps": min(phase.num_steps, left)}))
        left -= phases[-1].num_steps
    update = {"phases": phases, "checkpoint_every": min(config.checkpoint_every, max_steps)}
    return config.model_copy(update=update)
