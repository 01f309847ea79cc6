"""The flow-matching training loss (docs/qwen_image.md §7, diffusers convention).

``x_sigma = (1 - sigma) x0 + sigma noise``; the model sees ``timestep = sigma`` and is trained to predict the
velocity ``noise - x0`` with a (weighted) mean squared error. The per-sample errors are returned too: DPO compares
them between a winner and a loser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from diffusers import QwenImageTransformer2DModel

from models.packing import img_shapes, pack_latents, pack_sources, unpack_latents
from models.prompt_embeds import PromptEmbeds
from models.sampler import predict_velocity
from models.schedule import LossWeighting, SigmaSampling, loss_weights, sample_training_sigmas


@dataclasses.dataclass
class FlowMatchingOutput:
    loss: torch.Tensor  # scalar, weighted mean over the batch
    per_sample: torch.Tensor  # [B] unweighted mean squared error per sample
    sigmas: torch.Tensor  # [B]
    prediction: torch.Tensor  # [B, 16, h, w] predicted velocity


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) x0 + sigma noise`` with ``sigmas: [B]`` broadcast over ``[B, C, h, w]``."""
    sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1 - sigmas) * latents + sigmas * noise


def velocity_at(
    transformer: QwenImageTransformer2DModel,
    noisy: torch.Tensor,
    sigmas: torch.Tensor,
    prompt: PromptEmbeds,
    source_latents: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The model's velocity ``[B, 16, h, w]`` for unpacked noisy latents ``[B, 16, h, w]`` at ``sigmas: [B]``;
    editing: conditioned on the clean ``source_latents: [B, 16, h', w']`` (frame 1 of the sequence), or on several
    references (a sequence of such, frames 1, 2, ... in order: Edit-Plus)."""
    batch, _, rows, cols = noisy.shape
    source_tokens, source_grids = pack_sources(source_latents, batch, noisy.device, noisy.dtype)
    shapes = img_shapes(batch, rows, cols, sources=source_grids)
    tokens = predict_velocity(transformer, pack_latents(noisy), sigmas, prompt, shapes, source_tokens)
    return unpack_latents(tokens, rows, cols)


def flow_matching_loss(
    transformer: QwenImageTransformer2DModel,
    latents: torch.Tensor,
    prompt: PromptEmbeds,
    *,
    sigmas: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    sigma_sampling: SigmaSampling = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    weighting: LossWeighting = "none",
    generator: torch.Generator | None = None,
    source_latents: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> FlowMatchingOutput:
    """Flow-matching loss for normalised latents ``[B, 16, h, w]`` conditioned on ``prompt`` (one row per sample)
    and, for edit samples, on the clean ``source_latents`` (one tensor, or a sequence for several references; the
    loss is on the generated tokens only)."""
    batch = latents.shape[0]
    if prompt.embeds.shape[0] != batch:
        raise ValueError(f"{prompt.embeds.shape[0]} prompts for {batch} latents")
    if sigmas is None:
        sigmas = sample_training_sigmas(
            batch,
            sigma_sampling,
            logit_mean=logit_mean,
            logit_std=logit_std,
            generator=generator,
            device=latents.device,
        )
    if noise is None:
        gen_device = generator.device if generator is not None else latents.device
        noise = torch.randn(latents.shape, generator=generator, device=gen_device, dtype=latents.dtype).to(
            latents.device
        )
    prediction = velocity_at(transformer, noisy_latents(latents, noise, sigmas), sigmas, prompt, source_latents)
    target = noise - latents
    per_sample = ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    loss = (loss_weights(sigmas, weighting).to(per_sample) * per_sample).mean()
    return FlowMatchingOutput(loss=loss, per_sample=per_sample, sigmas=sigmas, prediction=prediction)
