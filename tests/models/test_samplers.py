"""The SDE step of Flow-GRPO: its mean, its noise scale and its log-probability."""

from __future__ import annotations

import math

import pytest
import torch

from models.sampler import sde_step, true_cfg


def test_sde_step_log_prob_is_gaussian_density():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(3, 16, 4, 4, generator=generator)
    velocity = torch.randn(3, 16, 4, 4, generator=generator)
    sigma, sigma_next, a = 0.6, 0.5, 0.7
    prev, log_prob, mean, std = sde_step(velocity, sample, sigma, sigma_next, noise_level=a, generator=generator)

    std_t = a * math.sqrt(sigma / (1 - sigma))
    dt = sigma_next - sigma
    expected_mean = (
        sample * (1 + std_t**2 / (2 * sigma) * dt) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    torch.testing.assert_close(mean, expected_mean)
    assert std.item() == pytest.approx(std_t * math.sqrt(-dt), rel=1e-6)
    normal = torch.distributions.Normal(expected_mean, std_t * math.sqrt(-dt))
    torch.testing.assert_close(log_prob, normal.log_prob(prev).mean(dim=(1, 2, 3)))

    # Scoring the stored transition gives the same log-prob; a different one scores lower.
    _, again, _, _ = sde_step(velocity, sample, sigma, sigma_next, noise_level=a, prev_sample=prev)
    torch.testing.assert_close(again, log_prob)
    _, worse, _, _ = sde_step(velocity, sample, sigma, sigma_next, noise_level=a, prev_sample=prev + 1.0)
    assert torch.all(worse < log_prob)


def test_sde_step_without_noise_is_the_euler_step():
    sample, velocity = torch.randn(2, 16, 2, 2), torch.randn(2, 16, 2, 2)
    _, _, mean, _ = sde_step(velocity, sample, 0.8, 0.7, noise_level=1e-8)
    torch.testing.assert_close(mean, sample + (0.7 - 0.8) * velocity)


def test_sde_step_first_step_at_sigma_one_is_finite():
    sample, velocity = torch.randn(1, 16, 2, 2), torch.randn(1, 16, 2, 2)
    prev, log_prob, _, std = sde_step(velocity, sample, 1.0, 0.9, sigma_max=0.9)
    assert torch.isfinite(prev).all() and torch.isfinite(log_prob).all() and torch.isfinite(std).all()
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step(velocity, sample, 0.5, 0.6)


def test_true_cfg_rescales_to_the_conditional_norm():
    cond, uncond = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    combined = true_cfg(cond, uncond, 4.0)
    torch.testing.assert_close(combined.norm(dim=-1), cond.norm(dim=-1))
    direction = uncond + 4.0 * (cond - uncond)
    cosine = torch.nn.functional.cosine_similarity(combined, direction, dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
