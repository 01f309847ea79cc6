"""The AdamW every trainer builds, with the kernel its config names.

``fused`` (the default) updates every parameter in one kernel per dtype and device, on CPU as on CUDA; ``foreach``
groups the element-wise ops across parameters; ``for-loop`` runs them parameter by parameter, as torch does on CPU
when neither is asked for. All three compute the same update, with last-bit differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

import torch

AdamImplementation = Literal["fused", "foreach", "for-loop"]


class AdamSettings(Protocol):
    """An optimiser config section (``training.config.OptimConfig``, ``RlOptim``)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    eps: float
    implementation: AdamImplementation


def adamw(parameters: Iterable[torch.nn.Parameter], optim: AdamSettings) -> torch.optim.AdamW:
    implementation = optim.implementation
    kernel = {"fused": True} if implementation == "fused" else {"foreach": implementation == "foreach"}
    return torch.optim.AdamW(
        parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, eps=optim.eps, **kernel
    )
