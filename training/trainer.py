"""One Ray Train run (``TorchTrainer``), as pretraining, RL fine-tuning and VAE fine-tuning start it.

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

import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from training.progress import Progress, ProgressPrinter

if TYPE_CHECKING:
    import ray.data


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
