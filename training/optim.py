"""The AdamW every trainer builds, with the kernel its config names.

``fused`` (the default) updates every parameter in one kernel per dtype and device, on CPU as on CUDA; ``foreach``
groups the element-wise ops across parameters; ``for-loop`` runs them parameter by parameter, as torch does on CPU
when neither is asked for. All three compute the same update, with last-bit differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import pydantic
import torch

from models.config import StrictModel

AdamImplementation = Literal["fused", "foreach", "for-loop"]


class AdamConfig(StrictModel):
    """AdamW's settings, warm-up and gradient clipping: what every trainer's optimiser section holds (pretraining's
    ``OptimConfig`` adds a schedule and accumulation; post-training's ``RlOptim`` has smaller defaults)."""

    lr: float = pydantic.Field(default=1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = pydantic.Field(default=0.01, ge=0)
    eps: float = 1e-8
    warmup_steps: int = pydantic.Field(default=100, ge=0)
    grad_clip: float | None = pydantic.Field(default=1.0, gt=0)
    implementation: AdamImplementation = "fused"  # AdamW's kernel (see the module docstring)


def adamw(parameters: Iterable[torch.nn.Parameter], optim: AdamConfig) -> torch.optim.AdamW:
    implementation = optim.implementation
    kernel = {"fused": True} if implementation == "fused" else {"foreach": implementation == "foreach"}
    return torch.optim.AdamW(
        parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, eps=optim.eps, **kernel
    )
