"""The SDE rollout: each step's log-probability is the density of that step's Gaussian, and the trainer's
recomputation of a stored step gives the same value (on-policy ratio 1)."""

from __future__ import annotations

import math

import torch

from models.packing import img_shapes, pack_latents, unpack_latents
from models.sampler import predict_velocity
from training.post_training.rollout import sde_rollout, step_log_prob

NOISE_LEVEL = 0.7


def test_sde_logprob_matches_gaussian(tiny_components, color_prompts):
    transformer = tiny_components.transformer
    _, prompt = color_prompts
    prompt = prompt.repeat_interleave(2)
    generator = torch.Generator().manual_seed(0)
    trajectory = sde_rollout(
        transformer, prompt, height=32, width=32, num_steps=5, noise_level=NOISE_LEVEL, generator=generator
    )
    assert trajectory.latents.shape == (4, 6, 16, 4, 4) and trajectory.log_probs.shape == (4, 4)
    sigmas = trajectory.sigmas.double()
    assert sigmas[0] == 1.0 and trajectory.sigma_max == float(trajectory.sigmas[1])
    for step in range(4):
        latents, following = trajectory.latents[:, step], trajectory.latents[:, step + 1]
        # The step's Gaussian, written out from docs/qwen_image.md §8 without the sampler's code.
        with torch.no_grad():
            tokens = pack_latents(latents)
            sigma_in = trajectory.sigmas[step].expand(4)
            velocity = unpack_latents(
                predict_velocity(transformer, tokens, sigma_in, prompt, img_shapes(4, 4, 4)), 4, 4
            )
        sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
        capped = trajectory.sigma_max if sigma >= 1 else sigma  # sigma = 1 would make std_t infinite
        std_t = NOISE_LEVEL * math.sqrt(sigma / (1 - capped))
        dt = sigma_next - sigma
        mean = latents * (1 + std_t**2 / (2 * sigma) * dt) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
        normal = torch.distributions.Normal(mean.double(), std_t * math.sqrt(-dt))
        expected = normal.log_prob(following.double()).mean(dim=(1, 2, 3))
        torch.testing.assert_close(trajectory.log_probs[:, step].double(), expected, rtol=1e-5, atol=1e-4)

        # The trainer recomputes the same value from the stored transition: the on-policy ratio is exactly 1.
        with torch.no_grad():
            recomputed, _, _ = step_log_prob(
                transformer,
                latents,
                following,
                trajectory.sigmas[step].expand(4),
                trajectory.sigmas[step + 1].expand(4),
                prompt,
                noise_level=NOISE_LEVEL,
                sigma_max=trajectory.sigma_max,
            )
        torch.testing.assert_close(recomputed, trajectory.log_probs[:, step], rtol=1e-6, atol=1e-6)
    # The last step goes to sigma 0 deterministically (an Euler step), and is not part of the policy.
    assert trajectory.sigmas[-1] == 0


def test_rollout_is_seeded_and_cfg_changes_it(tiny_components, color_prompts):
    transformer, (_, prompt) = tiny_components.transformer, color_prompts
    kwargs = {"height": 32, "width": 32, "num_steps": 3}
    first = sde_rollout(transformer, prompt, generator=torch.Generator().manual_seed(3), **kwargs)
    again = sde_rollout(transformer, prompt, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(first.latents, again.latents)
    negative = type(prompt)(torch.zeros_like(prompt.embeds[:1]), prompt.mask[:1])
    guided = sde_rollout(
        transformer, prompt, negative=negative, true_cfg_scale=4.0, generator=torch.Generator().manual_seed(3), **kwargs
    )
    assert not torch.allclose(guided.final, first.final)
    # GRPO trains guided rollouts (its default true CFG 4): the trainer recomputes each guided step's log-probability
    # with the same negative and scale, so the on-policy ratio is exactly 1, and without the guidance it is not.
    for step in range(kwargs["num_steps"] - 1):
        latents, following = guided.latents[:, step], guided.latents[:, step + 1]
        sigmas = guided.sigmas[step].expand(2), guided.sigmas[step + 1].expand(2)
        common = {"noise_level": NOISE_LEVEL, "sigma_max": guided.sigma_max}
        with torch.no_grad():
            recomputed, _, _ = step_log_prob(
                transformer, latents, following, *sigmas, prompt, negative=negative, true_cfg_scale=4.0, **common
            )
            unguided, _, _ = step_log_prob(transformer, latents, following, *sigmas, prompt, **common)
        torch.testing.assert_close(recomputed, guided.log_probs[:, step], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(unguided, guided.log_probs[:, step], rtol=1e-3, atol=1e-3)
