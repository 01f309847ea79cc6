"""Diffusion-DPO for flow matching (docs/qwen_image.md §8) as plain functions; the Ray Train loop is ``dpo_train``.

Winner and loser get the same sigma and the same noise. With per-sample mean squared velocity errors ``e``:
``d_policy = e_policy(x_w) - e_policy(x_l)``, ``d_ref`` likewise under the frozen reference, and
``loss = -log sigmoid(-beta (d_policy - d_ref))``. ``-beta (d_policy - d_ref)`` is the implicit reward margin
(winner's implicit reward minus loser's); a pair counts as correct when the policy has moved towards the winner
relative to the reference (margin > 0), half when it has not moved at all (margin = 0, as at the start).

The margin can grow while the winner's own error grows too (both images get less likely, the loser faster), which
degrades a model that drew most winners right to begin with. ``sft_weight`` adds the winner's flow-matching error
to the loss, ``sft_weight * e_policy(x_w)`` (RPO's negative log-likelihood term on the chosen sample, in flow
matching's units), meant to keep the winners likely while the margin grows; 0 is plain Diffusion-DPO.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.flow_matching import flow_matching_loss
from models.prompt_embeds import PromptEmbeds
from models.schedule import SigmaSampling, sample_training_sigmas
from training.parallel import clip_grad_norm_


@dataclasses.dataclass
class PairBatch:
    """``winner`` / ``loser``: normalised latents ``[B, 16, h, w]`` of one shape; ``prompt``: one row per pair."""

    winner: torch.Tensor
    loser: torch.Tensor
    prompt: PromptEmbeds


@dataclasses.dataclass
class DpoOutput:
    loss: torch.Tensor  # scalar
    margin: torch.Tensor  # [B] implicit reward margin, -beta (d_policy - d_ref)
    d_policy: torch.Tensor  # [B]
    d_ref: torch.Tensor  # [B]
    winner_error: torch.Tensor  # [B] the policy's flow-matching error on the winners (the sft term's)

    @property
    def accuracy(self) -> torch.Tensor:
        """Pairs the policy prefers more than the reference does; ties (no change yet) count half."""
        return pair_accuracy(self.d_policy - self.d_ref)


def pair_accuracy(delta: torch.Tensor) -> torch.Tensor:
    """Share of ``delta = d_policy - d_ref < 0`` (ties count half): independent of beta."""
    return ((delta < 0).float() + 0.5 * (delta == 0).float()).mean()


def _pair_errors(
    model, batch: PairBatch, sigmas: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B]`` winner errors and ``[B]`` loser errors, both at the same sigma and noise, in one forward pass."""
    latents = torch.cat([batch.winner, batch.loser])
    prompt = PromptEmbeds(torch.cat([batch.prompt.embeds] * 2), torch.cat([batch.prompt.mask] * 2))
    errors = flow_matching_loss(
        model, latents, prompt, sigmas=torch.cat([sigmas, sigmas]), noise=torch.cat([noise, noise])
    ).per_sample
    winner, loser = errors.chunk(2)
    return winner, loser


def dpo_loss(
    model,
    reference: Callable[[], contextlib.AbstractContextManager],
    batch: PairBatch,
    *,
    beta: float,
    sft_weight: float = 0.0,
    sigma_sampling: SigmaSampling = "uniform",
    generator: torch.Generator | None = None,
) -> DpoOutput:
    """The DPO loss of a batch of pairs (plus ``sft_weight`` times the winners' mean error); ``reference()`` enters
    a context yielding the reference model."""
    if batch.winner.shape != batch.loser.shape:
        raise ValueError(f"winner {tuple(batch.winner.shape)} and loser {tuple(batch.loser.shape)} differ in shape")
    count = batch.winner.shape[0]
    sigmas = sample_training_sigmas(count, sigma_sampling, generator=generator, device=batch.winner.device)
    noise = torch.randn(batch.winner.shape, generator=generator, dtype=batch.winner.dtype).to(batch.winner.device)
    winner, loser = _pair_errors(model, batch, sigmas, noise)
    with torch.no_grad(), reference() as reference_model:
        reference_winner, reference_loser = _pair_errors(reference_model, batch, sigmas, noise)
    d_policy, d_ref = winner - loser, reference_winner - reference_loser
    margin = -beta * (d_policy - d_ref)
    loss = -F.logsigmoid(margin).mean()
    if sft_weight:
        loss = loss + sft_weight * winner.mean()
    return DpoOutput(loss=loss, margin=margin.detach(), d_policy=d_policy, d_ref=d_ref, winner_error=winner.detach())


@torch.no_grad()
def evaluate_pairs(
    model,
    reference: Callable[[], contextlib.AbstractContextManager],
    batches: list[PairBatch],
    *,
    beta: float,
    num_draws: int = 4,
    sigma_sampling: SigmaSampling = "uniform",
    seed: int = 0,
) -> dict[str, float]:
    """Held-out pair accuracy and mean margin, each pair's ``d_policy - d_ref`` averaged over ``num_draws``
    sigma/noise draws (fixed by ``seed``, so successive evaluations compare like with like)."""
    generator = torch.Generator().manual_seed(seed)
    deltas, losses = [], []
    for batch in batches:
        draws = [
            dpo_loss(model, reference, batch, beta=beta, sigma_sampling=sigma_sampling, generator=generator)
            for _ in range(num_draws)
        ]
        deltas.append(torch.stack([d.d_policy - d.d_ref for d in draws]).mean(dim=0))
        losses.append(torch.stack([d.loss for d in draws]).mean())
    delta = torch.cat(deltas)
    return {
        "eval_accuracy": float(pair_accuracy(delta)),
        "eval_margin": float((-beta * delta).mean()),
        "eval_loss": float(torch.stack(losses).mean()),
        "eval_pairs": int(delta.numel()),
    }


def dpo_step(
    model,
    optimizer: torch.optim.Optimizer,
    reference: Callable[[], contextlib.AbstractContextManager],
    batch: PairBatch,
    *,
    beta: float,
    sft_weight: float = 0.0,
    sigma_sampling: SigmaSampling = "uniform",
    grad_clip: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimiser step; returns loss, implicit reward margin, pair accuracy, the winners' error and grad norm."""
    optimizer.zero_grad(set_to_none=True)
    out = dpo_loss(
        model, reference, batch, beta=beta, sft_weight=sft_weight, sigma_sampling=sigma_sampling, generator=generator
    )
    out.loss.backward()
    grad_norm = 0.0
    if grad_clip is not None:
        grad_norm = clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return {
        "loss": float(out.loss.detach()),
        "margin": float(out.margin.mean()),
        "accuracy": float(out.accuracy),
        "winner_error": float(out.winner_error.mean()),
        "grad_norm": grad_norm,
    }
