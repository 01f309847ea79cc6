"""The trainer skeleton that pretraining, SFT, DPO, GRPO and VAE fine-tuning share: the run settings every training
config has (``RunSettings``), and the one place that builds and runs the ``TorchTrainer``.

The run's config says where its workers go (``num_workers``, ``use_gpu``, ``cpus_per_worker``, and
``worker_resources``, custom node resources such as ``{"consumer": 0.01}`` that place them on the nodes which have
them), how many checkpoints are kept and how often a failed worker group is restarted from the last one. Every
worker receives that config as ``loop_config["config"]`` (JSON, so it validates it again).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pydantic
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from models.config import StrictModel
from training.parallel import ParallelConfig
from training.progress import Progress, ProgressPrinter

if TYPE_CHECKING:
    import ray.data


class RunSettings(StrictModel):
    """The section every training config shares: where the workers go, how the model is spread over them,
    checkpoints, restarts and logging. Jobs subclass it and may change a default (a fine-tuning run checkpoints more
    often than pretraining)."""

    num_workers: int = pydantic.Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = pydantic.Field(default=1.0, gt=0)
    # Custom node resources each train worker also requests, e.g. {"consumer": 0.01}: places the workers on the GPU
    # nodes that platform/ gives that resource. Empty: anywhere (local runs).
    worker_resources: dict[str, float] = {}
    parallel: ParallelConfig = ParallelConfig()
    checkpoint_every: int = pydantic.Field(default=100, ge=1)  # optimiser steps between checkpoints
    keep_checkpoints: int = pydantic.Field(default=2, ge=1)
    max_failures: int = pydantic.Field(default=2, ge=0)  # restarts of a failed worker group, from the last checkpoint
    log_every: int = pydantic.Field(default=10, ge=1)  # steps between rows of the metrics CSV
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _mesh_fits(self) -> RunSettings:
        if self.parallel.strategy == "fsdp":
            self.parallel.mesh_shape(self.num_workers)  # raises when the workers do not form the mesh
        return self


class TrainerConfig(Protocol):
    """The fields of a run's config that the trainer reads (``PretrainConfig``, ``RlBase``, ``VaeFinetuneConfig``)."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    worker_resources: dict[str, float]
    keep_checkpoints: int
    max_failures: int

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


def scaling_config(config: TrainerConfig) -> ScalingConfig:
    """``num_workers`` workers, each with ``cpus_per_worker`` CPUs, a GPU when ``use_gpu``, and ``worker_resources``."""
    return ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=config.use_gpu,
        resources_per_worker={
            "CPU": config.cpus_per_worker,
            **({"GPU": 1} if config.use_gpu else {}),
            **config.worker_resources,
        },
    )


def run_config(config: TrainerConfig, *, name: str, storage_path: str | pathlib.Path) -> RunConfig:
    """The run's name and folder, its checkpoints (the last ``keep_checkpoints``) and restarts (``max_failures``)."""
    return RunConfig(
        name=name,
        storage_path=str(storage_path),
        checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        failure_config=FailureConfig(max_failures=config.max_failures),
    )


def fit_trainer(
    loop: Callable[[dict], None],
    config: TrainerConfig,
    *,
    name: str,
    storage_path: str | pathlib.Path,
    loop_config: dict[str, Any] | None = None,
    datasets: dict[str, ray.data.Dataset] | None = None,
    progress: Progress | None = None,
) -> ray.train.Result:
    """Runs ``loop`` on the config's workers with ``{"config": config (JSON), **loop_config}``; returns the result.

    ``progress`` names the metrics CSV the driver follows and prints while the workers run. A run that fails after
    its restarts raises the workers' error."""
    trainer = TorchTrainer(
        loop,
        train_loop_config={"config": config.model_dump(mode="json"), **(loop_config or {})},
        scaling_config=scaling_config(config),
        run_config=run_config(config, name=name, storage_path=storage_path),
        datasets=datasets,
    )
    with ProgressPrinter(progress) if progress is not None else contextlib.nullcontext():
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result
