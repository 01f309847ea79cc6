"""What the DPO and GRPO Ray Train runs share: the ``TorchTrainer`` run (``training.trainer``), the
per-worker policy and optimiser,
the learning rate, and checkpoints (report, restore).

A checkpoint holds ``model/`` (the transformer, adapters merged, diffusers layout: what every role opens) and
``rl_state`` (optimiser, step, LoRA adapters) in safetensors + JSON, no pickle. A restarted worker group resumes
from the last one (``FailureConfig``); running the job again with the same ``output_dir`` and ``run_name`` resumes.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable

import ray.train
import ray.train.torch
import torch

from training.progress import Progress
from training.rl.config import RlBase, RlOptim
from training.rl.policy import Policy
from training.state_io import load_state, save_state
from training.trainer import fit_trainer

RL_STATE = "rl_state"


def with_absolute_paths(config: RlBase, *fields: str) -> RlBase:
    """Workers run in their own directories: every path they get must be absolute."""
    names = ("checkpoint", "base_weights_dir", "output_dir", *fields)
    update = {name: str(pathlib.Path(getattr(config, name)).resolve()) for name in names if getattr(config, name)}
    return config.model_copy(update=update)


def fit(
    loop: Callable[[dict], None], config: RlBase, loop_config: dict, *, label: str, total_steps: int, keys: tuple
) -> ray.train.Result:
    """One ``TorchTrainer`` run of ``loop`` with the config's workers, checkpoints and failure policy; the driver
    prints the progress of ``train.csv`` (``keys`` of each row) as ``[label]`` lines."""
    progress = Progress(config.run_folder / "train.csv", total_steps, label, keys)
    return fit_trainer(
        loop,
        config,
        name=config.run_name,
        storage_path=config.run_folder / "ray",
        loop_config=loop_config,
        progress=progress,
    )


class Worker:
    """A train worker's rank, device, policy (wrapped for DDP when there are several workers) and optimiser."""

    def __init__(self, config: RlBase, *, need_reference: bool):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.config = config
        torch.manual_seed(config.seed + self.rank)
        self.policy = Policy(
            config.checkpoint, lora=config.lora, need_reference=need_reference, device=self.device, seed=config.seed
        )
        self.model = ray.train.torch.prepare_model(self.policy.transformer, move_to_device=False)
        optim: RlOptim = config.optim
        self.optimizer = torch.optim.AdamW(
            self.policy.trainable_parameters(),
            lr=optim.lr,
            betas=optim.betas,
            weight_decay=optim.weight_decay,
            eps=optim.eps,
        )
        self.step = self.restore()

    def set_learning_rate(self) -> float:
        """Linear warm-up, then constant: fine-tuning runs are short."""
        optim = self.config.optim
        lr = optim.lr * min(1.0, (self.step + 1) / optim.warmup_steps) if optim.warmup_steps else optim.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def restore(self) -> int:
        """The step to start from: 0, or the last checkpoint's after a restart."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return 0
        with checkpoint.as_directory() as folder:
            state = load_state(folder, RL_STATE)
            if self.policy.lora is not None:
                self.policy.load_trainable_state(state["trainable"])
            else:
                from safetensors.torch import load_file

                weights = {}
                for path in sorted((pathlib.Path(folder) / "model" / "transformer").glob("*.safetensors")):
                    weights.update(load_file(str(path)))
                self.policy.transformer.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
            return int(state["step"])

    def report(self, metrics: dict, *, checkpoint: bool, algo: str) -> None:
        """``ray.train.report`` from every rank with a checkpoint that rank 0 attaches; nothing without one.

        Metrics reach Ray Train with checkpoints only: every report is a barrier across the workers and waits for the
        controller (about 2 s a step here); the run's CSVs and TensorBoard get every logged row."""
        if not checkpoint:
            return
        with tempfile.TemporaryDirectory() as folder:
            attached = None
            if self.rank == 0:
                folder = pathlib.Path(folder)
                self.policy.save(
                    folder / "model", metadata={"step": self.step, "run": self.config.run_name, "algo": algo}
                )
                state = {"optimizer": self.optimizer.state_dict(), "step": self.step}
                if self.policy.lora is not None:
                    state["trainable"] = self.policy.trainable_state()
                save_state(state, folder, RL_STATE)
                attached = ray.train.Checkpoint.from_directory(str(folder))
            ray.train.report(metrics, checkpoint=attached)
