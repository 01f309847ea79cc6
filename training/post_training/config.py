"""Configs of the fine-tuning jobs: one validated object per algorithm (``jobs/rl.py --algo {dpo,grpo}``;
SFT is a pretraining recipe, ``configs/sft_tiny.yaml``).

Unknown keys and bad values are errors that name the key (``models.config.load_config``). Every job starts from a
checkpoint we wrote (a diffusers-layout folder holding at least ``transformer/``); the parts it lacks (VAE,
condition encoder) come from ``base_weights_dir`` for ``qwen-image`` or are built for ``tiny``, as the producers
encoded the store with them. Defaults that the report does not publish say where they come from.
"""

from __future__ import annotations

import pathlib
from typing import Any, Literal

import pydantic
import torch

from models.checkpoint import resolve_init
from models.config import StrictModel, read_lines
from models.lora import LoraSettings
from models.schedule import SigmaSampling
from pipelines.pools import PoolConfig
from training.optim import AdamConfig
from training.parallel import FrozenDtype, MixedPrecision, check_frozen_dtype, frozen_weights_dtype
from training.trainer import RunSettings


class RewardSpec(StrictModel):
    """One term of the reward: a registered name (``ocr``, ``clip``, ``mean_color``, ``latent_target``) or
    ``package.module:ClassName`` for a user's own ``training.post_training.rewards.Reward``; ``options`` go to its constructor."""

    kind: str
    weight: float = 1.0
    options: dict[str, Any] = {}


class RlOptim(AdamConfig):
    lr: float = pydantic.Field(default=1e-5, gt=0)
    weight_decay: float = pydantic.Field(default=0.0, ge=0)
    warmup_steps: int = pydantic.Field(default=0, ge=0)


def init_from_legacy_key(data: Any) -> Any:
    """Configs written before ``init`` named the start folder ``checkpoint``: both are read, one may be given."""
    if isinstance(data, dict) and "checkpoint" in data:
        if "init" in data:
            raise ValueError("give the start folder once: init (checkpoint is its older name)")
        data = {**data, "init": data["checkpoint"]}
        del data["checkpoint"]
    return data


class RlBase(RunSettings):
    """What DPO and GRPO share: the start checkpoint, the trainer's resources, checkpoints and logging."""

    # The start: a checkpoint or export we wrote, a finished run's folder (its final export), or a diffusers
    # pipeline folder as Qwen/Qwen-Image is published (models.checkpoint.check_model_folder). ``checkpoint``: older name.
    init: str
    base_weights_dir: str | None = None  # the parts the checkpoint lacks (vae/, text_encoder/...) for qwen-image
    output_dir: str = "outputs/rl"
    run_name: str
    lora: LoraSettings | None = None
    optim: RlOptim = RlOptim()
    # Run settings (workers, parallelism, checkpoints, logging: training.trainer.RunSettings), with the
    # defaults of short fine-tuning runs.
    checkpoint_every: int = pydantic.Field(default=50, ge=1)
    log_every: int = pydantic.Field(default=1, ge=1)

    # training.parallel.MixedPrecision. Under DDP it is autocast; under FSDP, the dtype parameters are gathered in
    # (gradients are reduced, and the optimiser steps, in fp32).
    mixed_precision: MixedPrecision = "auto"
    # The weights that do not train (the base under LoRA, a full fine-tune's reference) are stored in this dtype.
    # auto: under FSDP the compute dtype (bf16 on GPU: half the memory), under DDP fp32.
    frozen_dtype: FrozenDtype = "auto"
    # The final export's transformer (adapters merged) is saved in this dtype; the released weights are bf16.
    export_dtype: Literal["float32", "bfloat16"] = "bfloat16"

    @pydantic.model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return init_from_legacy_key(data)

    @pydantic.model_validator(mode="after")
    def _parallel(self) -> RlBase:
        if self.parallel.tensor_parallel > 1:
            raise ValueError(
                "DPO and GRPO shard with FSDP (parallel.strategy=fsdp, replicate for HSDP): tensor_parallel is not "
                "built for LoRA-wrapped layers"
            )
        check_frozen_dtype(self.frozen_dtype, self.parallel.strategy)
        return self

    def frozen_torch_dtype(self, compute: torch.dtype) -> torch.dtype:
        """The dtype of the frozen weights when the model computes in ``compute``."""
        return frozen_weights_dtype(self.frozen_dtype, self.parallel.strategy, compute)

    @property
    def run_folder(self) -> pathlib.Path:
        return (pathlib.Path(self.output_dir) / self.run_name).resolve()

    @pydantic.field_validator("init")
    @classmethod
    def _init(cls, path: str) -> str:
        return resolve_init(path)


class RewardPairsConfig(StrictModel):
    """Preference pairs from a reward: ``images_per_prompt`` ODE samples per prompt, best and worst kept."""

    prompts: list[str] = []
    prompts_file: str | None = None  # UTF-8, one prompt per line, added to ``prompts``
    images_per_prompt: int = pydantic.Field(default=4, ge=2)
    rewards: list[RewardSpec] = pydantic.Field(min_length=1)
    bucket: str = "1x1"  # aspect-ratio bucket; the image size is the bucket's size at DpoConfig.resolution
    num_steps: int = pydantic.Field(default=20, ge=1)
    true_cfg_scale: float = 4.0
    min_margin: float = pydantic.Field(default=0.0, ge=0)  # a prompt whose best and worst differ less gives no pair
    seed: int = 0
    pool: PoolConfig = PoolConfig(batch_size=4)  # generator actors (each loads the whole model)


class LabelPairsConfig(StrictModel):
    """Preference pairs from human labels: a JSONL or CSV file of ``prompt``, ``winner``, ``loser`` (image paths,
    relative to the file's folder), encoded with the VAE and the condition encoder."""

    path: str
    pool: PoolConfig = PoolConfig(batch_size=8)  # encoder actors (VAE and condition encoder)


class DpoConfig(RlBase):
    """Diffusion-DPO for flow matching (docs/qwen_image.md §8)."""

    pairs_dir: str  # a latent store of preference pairs (training.post_training.pairs)
    from_reward: RewardPairsConfig | None = None  # build pairs before training (appended to pairs_dir)
    from_labels: LabelPairsConfig | None = None
    resolution: int = pydantic.Field(default=256, ge=16)
    # beta depends on the loss scaling: per-sample means here, for which Flow-GRPO's DPO uses 100
    # (docs/qwen_image.md §8).
    beta: float = pydantic.Field(default=100.0, ge=0)
    # The winners' flow-matching error added to the loss with this weight (training.post_training.dpo); 0: plain
    # Diffusion-DPO.
    sft_weight: float = pydantic.Field(default=0.0, ge=0)
    num_steps: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(default=4, ge=1)  # pairs per worker and step
    sigma_sampling: SigmaSampling = "uniform"  # Diffusion-DPO draws t uniformly
    eval_fraction: float = pydantic.Field(default=0.1, ge=0, lt=1)  # held-out pairs (by pair id) for accuracy
    eval_every: int = pydantic.Field(default=0, ge=0)  # 0: at the end only
    eval_draws: int = pydantic.Field(default=4, ge=1)  # sigma/noise draws per held-out pair


class GrpoConfig(RlBase):
    """Flow-GRPO (docs/qwen_image.md §8): SDE rollouts on Ray actors, group-normalised advantages, clipped ratio."""

    prompts: list[str] = []
    prompts_file: str | None = None
    rewards: list[RewardSpec] = pydantic.Field(min_length=1)
    num_iterations: int = pydantic.Field(ge=1)
    prompts_per_iteration: int = pydantic.Field(default=2, ge=1)  # per train worker
    group_size: int = pydantic.Field(default=16, ge=2)  # images per prompt; 16-24 in the references
    height: int = 256
    width: int = 256
    num_steps: int = pydantic.Field(default=10, ge=2)  # SDE sampling steps per rollout
    train_steps: int = pydantic.Field(default=5, ge=1)  # K of the first num_steps - 1 steps trained per sample
    noise_level: float = pydantic.Field(default=0.7, gt=0)
    # Rollouts, trained steps and the ODE evaluation sample with this true CFG (" " the negative prompt), as the
    # model is sampled afterwards (4.0 in serving, evaluation and sample grids): what the policy learns from
    # unguided rollouts did not carry to guided samples even on the prompts it trained on (nano, from 0.849: 0.839
    # after 40 iterations without CFG, 0.927 after 40 and 0.958 after 80 with CFG 4; docs/nano.md, "Other starts").
    # 1.0 halves the transformer calls of every rollout and update.
    true_cfg_scale: float = pydantic.Field(default=4.0, ge=1.0)
    clip_range: float = pydantic.Field(default=1e-4, gt=0)
    adv_clip: float = pydantic.Field(default=5.0, gt=0)
    adv_eps: float = pydantic.Field(default=1e-4, gt=0)
    kl_beta: float = pydantic.Field(default=0.0, ge=0)  # Flow-GRPO uses 0.04 for some rewards
    num_minibatches: int = pydantic.Field(default=1, ge=1)  # optimiser steps per iteration
    num_rollout_actors: int = pydantic.Field(default=1, ge=1)
    rollout_cpus: float = pydantic.Field(default=1.0, gt=0)
    rollout_gpus: float = pydantic.Field(default=0.0, ge=0)
    eval_every: int = pydantic.Field(default=0, ge=0)  # ODE evaluation on fixed seeds; 0: at start and end only
    eval_images_per_prompt: int = pydantic.Field(default=2, ge=1)
    eval_prompts: int | None = pydantic.Field(default=None, ge=1)  # the first n prompts are evaluated; None: all
    # DAPO's dynamic sampling: a group whose images all score alike has no advantage and teaches nothing. With
    # n > 1, up to n rounds of prompts_per_iteration prompts are rolled out until that many groups whose rewards
    # differ are found; uniform groups fill the rest. 1: train on the groups as rolled out (Flow-GRPO).
    max_rollout_rounds: int = pydantic.Field(default=1, ge=1)

    @pydantic.model_validator(mode="after")
    def _steps(self) -> GrpoConfig:
        if self.train_steps > self.num_steps - 1:
            raise ValueError(
                f"train_steps={self.train_steps} must be at most num_steps - 1 = {self.num_steps - 1}: "
                "the last sampling step is not trained"
            )
        return self


def prompt_list(prompts: list[str], prompts_file: str | None) -> list[str]:
    """``prompts`` plus the lines of ``prompts_file``; an empty result is an error."""
    combined = list(prompts) + (read_lines(prompts_file, "prompts") if prompts_file else [])
    if not combined:
        raise ValueError("no prompts: set prompts or prompts_file")
    return combined
