"""The learning-rate schedule every trainer uses: linear warm-up, then constant or cosine decay to a floor."""

from __future__ import annotations

import math
from typing import Literal


def learning_rate(
    step: int,
    *,
    lr: float,
    warmup_steps: int = 0,
    schedule: Literal["constant", "cosine"] = "constant",
    total_steps: int = 1,
    min_lr_ratio: float = 0.0,
    scale: float = 1.0,
) -> float:
    """The rate for optimiser step ``step`` (0-based): ``lr * scale`` after ``warmup_steps`` of linear warm-up;
    with ``cosine``, then decayed to ``min_lr_ratio`` of it by ``total_steps``."""
    peak = lr * scale
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer, rate: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate
