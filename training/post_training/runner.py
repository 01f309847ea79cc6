"""What the DPO and GRPO Ray Train runs share on top of the trainer skeleton (``training.trainer``): the per-worker
policy and optimiser, the learning rate (``training.schedule``), checkpoints (``training.checkpointer``) and the
final export.

A checkpoint holds the trained weights (the LoRA adapters, or every weight without LoRA) and the optimiser in DCP
shards, with the step; a restarted worker group resumes from the last one (``FailureConfig``), and running the job
again with the same ``output_dir`` and ``run_name`` resumes. The run ends with an export under ``<run>/exports/``: a
complete pipeline folder whose transformer has the adapters merged (what every role opens) and whose frozen parts
link to the start checkpoint's (or ``base_weights_dir``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import ray.train
import ray.train.torch
import torch

from models.checkpoint import read_metadata, trained_edit_vision_area
from store.header import EDIT_VISION_AREA
from training.checkpointer import (
    ensure_base,
    export_adapter,
    export_pipeline,
    load_checkpoint,
    report_checkpoint,
)
from training.optim import adamw
from training.parallel import autocast, build_mesh, compute_dtype
from training.post_training.config import RlBase
from training.post_training.policy import Policy
from training.progress import Progress
from training.schedule import learning_rate, set_learning_rate
from training.trainer import fit_trainer


def with_absolute_paths(config: RlBase, *fields: str) -> RlBase:
    """Workers run in their own directories: every path they get must be absolute."""
    names = ("init", "base_weights_dir", "output_dir", *fields)
    update = {name: str(pathlib.Path(getattr(config, name)).resolve()) for name in names if getattr(config, name)}
    return config.model_copy(update=update)


def fit(
    loop: Callable[[dict], None], config: RlBase, loop_config: dict, *, label: str, total_steps: int, keys: tuple
) -> ray.train.Result:
    """One ``TorchTrainer`` run of ``loop`` with the config's workers, checkpoints and failure policy; the driver
    prints the progress of ``train.csv`` (``keys`` of each row) as ``[label]`` lines. The workers get the folder
    the export links its frozen parts to as ``loop_config["base"]``."""
    preset = read_metadata(config.init).get("preset", "qwen-image")
    base = ensure_base(config.run_folder, preset, [config.init, config.base_weights_dir])
    progress = Progress(config.run_folder / "train.csv", total_steps, label, keys)
    return fit_trainer(
        loop,
        config,
        name=config.run_name,
        storage_path=config.run_folder / "ray",
        loop_config={**loop_config, "base": str(base)},
        progress=progress,
    )


def export_folder(config: RlBase, step: int, algo: str) -> pathlib.Path:
    return config.run_folder / "exports" / f"step{step:07d}-{algo}"


def adapter_folder(config: RlBase, step: int, algo: str) -> pathlib.Path:
    """Where a LoRA run's adapter file (``pytorch_lora_weights.safetensors``) of ``step`` goes."""
    return export_folder(config, step, algo).with_name(f"step{step:07d}-{algo}-adapter")


def adapter_summary(config: RlBase, step: int, algo: str) -> dict:
    """The summary's ``adapter`` entry of a LoRA run (the adapter file), empty without LoRA."""
    from models.lora import ADAPTER_FILE

    return {"adapter": str(adapter_folder(config, step, algo) / ADAPTER_FILE)} if config.lora is not None else {}


class Worker:
    """A train worker's rank, device, policy (spread over the workers as ``config.parallel`` says) and optimiser."""

    def __init__(self, config: RlBase, *, need_reference: bool):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.config = config
        self.parallel = build_mesh(config.parallel, self.device, self.world, self.rank)
        self.dtype = compute_dtype(config.mixed_precision, self.device)
        torch.manual_seed(config.seed + self.rank)
        self.policy = Policy(
            config.init,
            lora=config.lora,
            need_reference=need_reference,
            parallel=self.parallel,
            compute_dtype=self.dtype,
            frozen_dtype=config.frozen_torch_dtype(self.dtype),
            seed=config.seed,
        )
        self.model = self.policy.model
        self.optimizer = adamw(self.policy.trainable_parameters(), config.optim)
        self.step = self.restore()
        # What the start model's metadata says of its training data, carried into every export (serving reads it).
        area = trained_edit_vision_area(config.init)
        self.inherited = {EDIT_VISION_AREA: area} if area is not None else {}

    def autocast(self):
        """The context of every forward pass (``training.parallel.autocast``)."""
        return autocast(self.parallel, self.dtype)

    def set_learning_rate(self) -> float:
        """Linear warm-up, then constant: fine-tuning runs are short."""
        optim = self.config.optim
        return set_learning_rate(self.optimizer, learning_rate(self.step, lr=optim.lr, warmup_steps=optim.warmup_steps))

    @property
    def trainable_only(self) -> bool:
        """With LoRA, checkpoints hold the adapters alone: the frozen base comes from the start checkpoint."""
        return self.policy.lora is not None

    def restore(self) -> int:
        """The step to start from: 0, or the last checkpoint's after a restart (on any number of workers)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return 0
        with checkpoint.as_directory() as folder:
            info, _ = load_checkpoint(
                folder, model=self.model, optimizer=self.optimizer, rank=self.rank, trainable_only=self.trainable_only
            )
        return int(info["step"])

    def report(self, metrics: dict, *, checkpoint: bool, algo: str) -> None:
        """``ray.train.report`` from every rank with its part of a checkpoint; nothing without one.

        Metrics reach Ray Train with checkpoints only: every report is a barrier across the workers and waits for the
        controller (about 2 s a step here); the run's CSVs and TensorBoard get every logged row."""
        if not checkpoint:
            return
        report_checkpoint(
            metrics,
            model=self.model,
            optimizer=self.optimizer,
            rank=self.rank,
            world=self.world,
            info={"step": self.step, "run": self.config.run_name, "algo": algo},
            trainable_only=self.trainable_only,
        )

    def export(self, base: str, algo: str) -> pathlib.Path | None:
        """Every rank (a collective): the complete pipeline folder of the current policy, adapters merged, gathered
        tensor by tensor and written by rank 0 (its path there, None elsewhere); with LoRA, first the adapter alone
        in diffusers' format (``adapter_folder``)."""
        if self.config.lora is not None:
            export_adapter(self.model, adapter_folder(self.config, self.step, algo), rank=self.rank)
        return export_pipeline(
            self.model,
            export_folder(self.config, self.step, algo),
            rank=self.rank,
            dtype=getattr(torch, self.config.export_dtype),
            base_folder=base,
            preset=self.policy.preset,
            metadata={"step": self.step, "run": self.config.run_name, "algo": algo, **self.inherited},
        )
