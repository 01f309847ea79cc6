"""The AdamW every trainer builds, with the kernel its config names.

``fused`` (the default) updates every parameter in one kernel per dtype and device, on CPU as on CUDA; ``foreach``
groups the element-wise ops across parameters; ``for-loop`` runs them parameter by parameter, as torch does on CPU
when neither is asked for. All three compute the same update, with last-bit differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

AdamImplementation = Literal["fused", "foreach", "for-loop"]


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
    implementation: AdamImplementation = "fused",
) -> torch.optim.AdamW:
    kernel = {"fused": True} if implementation == "fused" else {"foreach": implementation == "foreach"}
    return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, **kernel)
