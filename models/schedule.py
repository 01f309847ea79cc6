"""Noise levels: the inference schedule with dynamic shift and training sigma distributions (docs/qwen_image.md §7).

Convention (diffusers): sigma = 1 is pure noise; ``x_sigma = (1 - sigma) x0 + sigma noise``; the model receives
``timestep = sigma`` and predicts the velocity ``noise - x0``.

Inference: ``sigmas = linspace(1, 1/N, N)``, shifted by ``mu`` that grows with the packed image token count L
(``mu = L m + (base_shift - base_len m)``), ``sigma' = e^mu / (e^mu + 1/sigma - 1)``, stretched so the last sigma is
``shift_terminal`` (0.02), then 0 appended. Computed in float32 NumPy, as ``FlowMatchEulerDiscreteScheduler`` does,
so our sampler and the diffusers pipeline walk the same sigmas bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from models.presets import QWEN_IMAGE_SCHEDULER_CONFIG

SigmaSampling = Literal["uniform", "logit_normal"]
LossWeighting = Literal["none", "sigma_sqrt", "cosmap"]


def shift_mu(image_seq_len: int, config: Mapping = QWEN_IMAGE_SCHEDULER_CONFIG) -> float:
    """The dynamic shift for ``image_seq_len`` packed tokens (linear between base and max sequence lengths)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + (base_shift - slope * base_len)


def inference_sigmas(num_steps: int, image_seq_len: int, config: Mapping = QWEN_IMAGE_SCHEDULER_CONFIG) -> torch.Tensor:
    """``num_steps + 1`` float32 sigmas from about 1 down to 0 (the last entry is exactly 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if (
        config.get("invert_sigmas")
        or config.get("use_karras_sigmas")
        or config.get("use_exponential_sigmas")
        or config.get("use_beta_sigmas")
    ):
        raise ValueError("only the Qwen-Image schedule (dynamic exponential shift, terminal stretch) is supported")
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
    if config.get("use_dynamic_shifting", True):
        mu = shift_mu(image_seq_len, config)
        if config.get("time_shift_type", "exponential") == "exponential":
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        else:
            sigmas = mu / (mu + (1 / sigmas - 1))
    else:
        shift = config.get("shift", 1.0)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    terminal = config.get("shift_terminal")
    if terminal and sigmas[-1] < 1:  # a one-step schedule is [1.0]: nothing to stretch
        one_minus = 1 - sigmas
        sigmas = 1 - one_minus / (one_minus[-1] / (1 - terminal))
    sigmas = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def sample_training_sigmas(
    batch_size: int,
    scheme: SigmaSampling = "logit_normal",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B]`` sigmas in (0, 1) for training: uniform, or logit-normal (SD3's default, mean 0 std 1)."""
    if scheme == "uniform":
        sigmas = torch.rand(batch_size, generator=generator)
    elif scheme == "logit_normal":
        sigmas = torch.sigmoid(torch.randn(batch_size, generator=generator) * logit_std + logit_mean)
    else:
        raise ValueError(f"unknown sigma sampling {scheme!r}; choose 'uniform' or 'logit_normal'")
    # Keep clear of the ends, where x_sigma is exactly data or exactly noise and the target is still defined but
    # the timestep embedding is never seen at inference.
    return sigmas.clamp(1e-5, 1 - 1e-5).to(device)


def loss_weights(sigmas: torch.Tensor, weighting: LossWeighting = "none") -> torch.Tensor:
    """Per-sample loss weights (SD3, Esser et al. 2024): none, ``sigma_sqrt`` (sigma^-2) or ``cosmap``."""
    if weighting == "none":
        return torch.ones_like(sigmas)
    if weighting == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if weighting == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    raise ValueError(f"unknown loss weighting {weighting!r}; choose 'none', 'sigma_sqrt' or 'cosmap'")
