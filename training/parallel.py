"""Parallelism applied to a built model, in a fixed order (torchtitan's style): DDP by default, FSDP2 on request.

``apply_parallelism`` moves the model to the worker's device and wraps it; ``unwrap`` returns the published
``QwenImageTransformer2DModel`` inside, for saving and sampling.
"""

from __future__ import annotations

import torch

from training.config import PretrainConfig


def apply_fsdp(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: shard each transformer block, then the root (parameters all-gathered per block in forward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 all-gather with fp32 gradient reduce-scatter, as the report describes (docs/qwen_image.md §4).
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.transformer_blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def apply_parallelism(model: torch.nn.Module, config: PretrainConfig, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if config.parallelism == "fsdp":
        if not torch.distributed.is_initialized():
            raise ValueError("parallelism=fsdp needs a distributed process group (run under Ray Train)")
        return apply_fsdp(model)
    import ray.train.torch

    return ray.train.torch.prepare_model(model, move_to_device=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (FSDP2 modules are the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
