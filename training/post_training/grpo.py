"""Flow-GRPO's objective (docs/qwen_image.md §8) as plain functions: advantages, the clipped ratio loss, the KL term,
and one update from a batch of rollouts. The Ray Train loop (``training.post_training.grpo_train``) and the tests call these.

- Advantage: ``A = (r - group mean) / (group std + eps)``, clipped to ``+-adv_clip`` (5).
- Per trained step: ``max(-A ratio, -A clip(ratio, 1 - e, 1 + e)) + kl_beta KL``, ``ratio = exp(logp - logp_old)``,
  log-probabilities averaged over elements in float32 (``models.sampler.sde_step``).
- KL to the reference: both policies' steps are Gaussians with the same std, so
  ``KL = ||mean - mean_ref||^2 / (2 std^2)``, averaged over elements like the log-probability.
- Each sample trains on ``train_steps`` of its ``num_steps - 1`` SDE steps, drawn at random per sample (the last
  sampling step is never trained).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from models.prompt_embeds import PromptEmbeds
from training.parallel import clip_grad_norm_, gradient_sync
from training.post_training.rollout import step_log_prob


def group_advantages(rewards: torch.Tensor, *, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """``rewards: [P, G]`` (G samples of each of P prompts) -> advantages ``[P, G]``, normalised per group."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, group >= 2], got {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return ((rewards - mean) / (std + eps)).clamp(-clip, clip)


def clipped_objective(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean loss, ratio)`` of ``max(-A ratio, -A clip(ratio, 1 - e, 1 + e))`` over ``[B]`` samples."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[B]`` KL between two Gaussians of the same std, averaged over the non-batch elements."""
    dims = tuple(range(1, mean.ndim))
    return ((mean.float() - ref_mean.float()) ** 2 / (2 * std.float() ** 2)).mean(dim=dims)


@dataclasses.dataclass
class RolloutBatch:
    """Rollouts ready to train on. ``latents: [B, N+1, 16, h, w]``, ``old_log_probs: [B, N-1]``,
    ``advantages: [B]``, ``prompt``: one row per sample, ``sigmas: [N+1]``."""

    latents: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    prompt: PromptEmbeds
    sigmas: torch.Tensor
    sigma_max: float
    negative: PromptEmbeds | None = None

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        prompt = PromptEmbeds(self.prompt.embeds[index], self.prompt.mask[index])
        negative = self.negative
        if negative is not None and negative.embeds.shape[0] > 1:
            negative = PromptEmbeds(negative.embeds[index], negative.mask[index])
        return dataclasses.replace(
            self,
            latents=self.latents[index],
            old_log_probs=self.old_log_probs[index],
            advantages=self.advantages[index],
            prompt=prompt,
            negative=negative,
        )


@dataclasses.dataclass
class GrpoSettings:
    train_steps: int
    clip_range: float = 1e-4
    kl_beta: float = 0.0
    noise_level: float = 0.7
    true_cfg_scale: float = 1.0
    num_minibatches: int = 1
    grad_clip: float | None = 1.0


def grpo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    settings: GrpoSettings,
    *,
    reference: Callable[[], contextlib.AbstractContextManager] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimiser step per minibatch over ``batch``; returns the mean loss, ratio, clip fraction, KL, grad norm.

    ``reference()`` enters a context that yields the reference model (needed when ``kl_beta > 0``).
    """
    if settings.kl_beta > 0 and reference is None:
        raise ValueError("kl_beta > 0 needs a reference model")
    num_samples, num_sde_steps = batch.old_log_probs.shape
    if settings.train_steps > num_sde_steps:
        raise ValueError(f"train_steps={settings.train_steps} exceeds the {num_sde_steps} SDE steps of the rollouts")
    device = batch.latents.device
    # Per sample, a random subset of its SDE steps (Flow-GRPO shuffles timesteps per sample).
    steps = torch.argsort(torch.rand(num_samples, num_sde_steps, generator=generator), dim=1)[:, : settings.train_steps]
    order = torch.randperm(num_samples, generator=generator)
    totals = {"loss": 0.0, "ratio": 0.0, "clip_fraction": 0.0, "kl": 0.0, "grad_norm": 0.0}
    minibatches = [chunk for chunk in order.chunk(settings.num_minibatches) if len(chunk)]
    for rows in minibatches:
        part = batch.rows(rows.to(device))
        part_steps = steps[rows].to(device)
        optimizer.zero_grad(set_to_none=True)
        for j in range(settings.train_steps):
            step = part_steps[:, j]
            arange = torch.arange(len(rows), device=device)
            latents, next_latents = part.latents[arange, step], part.latents[arange, step + 1]
            sigma, sigma_next = batch.sigmas[step], batch.sigmas[step + 1]
            kwargs = {
                "noise_level": settings.noise_level,
                "sigma_max": batch.sigma_max,
                "negative": part.negative,
                "true_cfg_scale": settings.true_cfg_scale,
            }
            last = j == settings.train_steps - 1
            with gradient_sync(model, last):
                log_prob, mean, std = step_log_prob(
                    model, latents, next_latents, sigma, sigma_next, part.prompt, **kwargs
                )
                loss, ratio = clipped_objective(
                    log_prob, part.old_log_probs[arange, step], part.advantages, settings.clip_range
                )
                if settings.kl_beta > 0:
                    with torch.no_grad(), reference() as reference_model:
                        _, ref_mean, _ = step_log_prob(
                            reference_model, latents, next_latents, sigma, sigma_next, part.prompt, **kwargs
                        )
                    kl = gaussian_kl(mean, ref_mean, std).mean()
                    loss = loss + settings.kl_beta * kl
                    totals["kl"] += float(kl.detach()) / settings.train_steps
                (loss / settings.train_steps).backward()
            totals["loss"] += float(loss.detach()) / settings.train_steps
            totals["ratio"] += float(ratio.detach().mean()) / settings.train_steps
            outside = (ratio.detach() - 1).abs() > settings.clip_range
            totals["clip_fraction"] += float(outside.float().mean()) / settings.train_steps
        if settings.grad_clip is not None:
            totals["grad_norm"] += clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], settings.grad_clip
            )
        optimizer.step()
    return {key: value / len(minibatches) for key, value in totals.items()}
