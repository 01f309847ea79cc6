"""Samplers: the flow-matching Euler ODE with true CFG, and the SDE step with its log-probability.

``sample`` is the one sampler every role uses (demo, sample grids, serving, evaluation); for the same modules,
seed and settings it gives the latents ``diffusers.QwenImagePipeline`` gives (tests/models/test_pipeline_parity.py).

True CFG (docs/qwen_image.md §6): ``comb = neg + s (cond - neg)``, rescaled per token to the norm of ``cond`` over the
last dimension. The SDE step (Flow-GRPO, docs/qwen_image.md §8) turns the ODE into a stochastic policy with a per-step
log-probability, for GRPO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers import QwenImageTransformer2DModel

from models.packing import LATENT_CHANNELS, img_shapes, latent_size, pack_latents, pack_sources, unpack_latents
from models.presets import QWEN_IMAGE_SCHEDULER_CONFIG
from models.prompt_embeds import PromptEmbeds
from models.schedule import inference_sigmas

StepCallback = Callable[[int, int], None]


def predict_velocity(
    transformer: QwenImageTransformer2DModel,
    tokens: torch.Tensor,
    sigma: torch.Tensor,
    prompt: PromptEmbeds,
    shapes: list[list[tuple[int, int, int]]],
    source_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity ``[B, N, 64]`` for packed latents ``tokens: [B, N, 64]`` at noise level ``sigma: [B]``.

    Editing: ``source_tokens: [B, M, 64]`` (the clean source image's packed latents) are appended to the sequence
    (``shapes`` then lists both grids, see ``packing.img_shapes``) and the prediction is sliced back to ``N``.
    """
    # An all-valid mask is passed as None, as the diffusers pipeline does, so both take the same attention path.
    mask = None if bool(prompt.mask.all()) else prompt.mask
    hidden = tokens if source_tokens is None else torch.cat([tokens, source_tokens.to(tokens.dtype)], dim=1)
    velocity = transformer(
        hidden_states=hidden,
        timestep=sigma.to(tokens.dtype),
        encoder_hidden_states=prompt.embeds,
        encoder_hidden_states_mask=mask,
        img_shapes=shapes,
        return_dict=False,
    )[0]
    return velocity if source_tokens is None else velocity[:, : tokens.shape[1]]


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale (cond - uncond)``, rescaled per token to the norm of ``cond`` (last dimension)."""
    combined = uncond + scale * (cond - uncond)
    return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


def initial_noise(
    batch_size: int,
    rows: int,
    cols: int,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B, 16, rows, cols]`` Gaussian noise drawn as diffusers' ``randn_tensor`` draws it.

    One generator for the batch, or one per sample (then each image depends only on its own seed, which is what a
    server needs to make "the same seed gives the same image" hold whatever the batch).
    """
    shape = (batch_size, LATENT_CHANNELS, rows, cols)
    if isinstance(generator, list):
        if len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for a batch of {batch_size}")
        draws = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(draws).to(device)
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def strength_start(num_steps: int, strength: float) -> int:
    """The step an image-to-image run at ``strength`` starts from (diffusers' ``get_timesteps``): the full schedule of
    ``num_steps`` is computed and its first ``int(num_steps - num_steps * strength)`` steps are skipped, so the run
    starts at ``sigmas[start]`` and takes ``num_steps - start`` steps; ``strength = 1`` starts from pure noise."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    start = int(max(num_steps - min(num_steps * strength, num_steps), 0))
    if start >= num_steps:
        raise ValueError(f"strength={strength} with num_steps={num_steps} leaves no step to take")
    return start


def add_noise(image: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``sigma noise + (1 - sigma) image``: the flow-matching forward process at one noise level, written as
    ``FlowMatchEulerDiscreteScheduler.scale_noise`` writes it (same rounding)."""
    return sigma * noise + (1.0 - sigma) * image


@torch.no_grad()
def sample(
    transformer: QwenImageTransformer2DModel,
    prompt: PromptEmbeds,
    *,
    height: int,
    width: int,
    num_steps: int = 50,
    negative: PromptEmbeds | None = None,
    true_cfg_scale: float = 4.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    scheduler_config: Mapping = QWEN_IMAGE_SCHEDULER_CONFIG,
    on_step: StepCallback | None = None,
    source_latents: torch.Tensor | Sequence[torch.Tensor] | None = None,
    image_latents: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler ODE from noise to normalised latents ``[B, 16, H/8, W/8]``.

    ``prompt`` holds one row per image. True CFG runs when ``true_cfg_scale > 1`` and ``negative`` is given (one row
    per image too, or one row for all). ``latents`` replaces the initial noise. ``on_step(step, steps)`` is called
    after each step taken, for progress reporting. Editing: ``source_latents: [B, 16, h, w]`` (normalised, any size)
    condition every step, or a sequence of such tensors (several references, frames 1, 2, ...); the schedule's shift
    counts the generated tokens only, as diffusers does.

    Image to image: ``image_latents: [B, 16, H/8, W/8]`` (normalised) is noised to the schedule's level at
    ``strength_start(num_steps, strength)`` and the run takes the remaining steps. Inpainting adds ``mask: [B, 1,
    H/8, W/8]`` (1 where the image is regenerated, 0 where it is kept): after every step the kept latents are set to
    the image noised to the next step's level (the clean image after the last), as ``QwenImageInpaintPipeline``
    blends them.
    """
    rows, cols = latent_size(height, width)
    batch_size = prompt.embeds.shape[0]
    device, dtype = prompt.embeds.device, prompt.embeds.dtype
    grid = (batch_size, LATENT_CHANNELS, rows, cols)
    do_cfg = negative is not None and true_cfg_scale > 1
    if do_cfg and negative.embeds.shape[0] == 1 and batch_size > 1:
        negative = negative.repeat_interleave(batch_size)
    if image_latents is None and (mask is not None or strength != 1.0):
        raise ValueError("strength and mask apply to image to image: pass image_latents")
    start = 0 if image_latents is None else strength_start(num_steps, strength)
    if latents is None:
        latents = initial_noise(batch_size, rows, cols, generator=generator, dtype=dtype, device=device)
    elif latents.shape != grid:
        raise ValueError(f"latents must be {grid}, got {tuple(latents.shape)}")
    tokens = pack_latents(latents.to(device, dtype))
    source_tokens, source_grids = pack_sources(source_latents, batch_size, device, dtype)
    shapes = img_shapes(batch_size, rows, cols, sources=source_grids)
    sigmas = inference_sigmas(num_steps, tokens.shape[1], scheduler_config).to(device)
    image_tokens, noise_tokens, mask_tokens = None, tokens, None
    if image_latents is not None:
        if image_latents.shape != grid:
            raise ValueError(f"image_latents must be {grid}, got {tuple(image_latents.shape)}")
        image_tokens = pack_latents(image_latents.to(device, dtype))
        tokens = add_noise(image_tokens, noise_tokens, sigmas[start])
    if mask is not None:
        if mask.shape != (batch_size, 1, rows, cols):
            raise ValueError(f"mask must be {(batch_size, 1, rows, cols)}, got {tuple(mask.shape)}")
        mask_tokens = pack_latents(mask.to(device, dtype).repeat(1, LATENT_CHANNELS, 1, 1))
    # The scheduler hands the model (sigma * 1000) / 1000; doing the same keeps the two samplers bit-identical.
    train_steps = scheduler_config.get("num_train_timesteps", 1000)
    timesteps = sigmas[:-1] * train_steps
    for step in range(start, num_steps):
        timestep = timesteps[step].expand(batch_size).to(dtype) / train_steps
        velocity = predict_velocity(transformer, tokens, timestep, prompt, shapes, source_tokens)
        if do_cfg:
            velocity = true_cfg(
                velocity,
                predict_velocity(transformer, tokens, timestep, negative, shapes, source_tokens),
                true_cfg_scale,
            )
        tokens = (tokens.float() + (sigmas[step + 1] - sigmas[step]) * velocity).to(velocity.dtype)
        if mask_tokens is not None:
            kept = image_tokens if step == num_steps - 1 else add_noise(image_tokens, noise_tokens, sigmas[step + 1])
            tokens = ((1 - mask_tokens) * kept + mask_tokens * tokens).to(velocity.dtype)
        if on_step is not None:
            on_step(step + 1 - start, num_steps - start)
    return unpack_latents(tokens, rows, cols)


def sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    *,
    noise_level: float = 0.7,
    sigma_max: float | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Flow-GRPO SDE step from ``sigma`` to ``sigma_next`` (``sigma_next < sigma``), in float32.

    ``std_t = a sqrt(sigma / (1 - sigma))``, ``dt = sigma_next - sigma``;
    ``mean = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt``;
    ``x_next = mean + std_t sqrt(-dt) eps``. ``sigma_max`` stands in for sigma in ``1 - sigma`` where sigma is 1
    (the first step of the schedule), as Flow-GRPO does, so that std stays finite.

    Returns ``(x_next, log_prob [B], mean, std)``; ``log_prob`` is the Gaussian log-density of ``x_next`` averaged
    over all non-batch elements. Pass ``prev_sample`` to score a stored transition instead of drawing a new one.
    """
    velocity, sample = velocity.float(), sample.float()
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=sample.device)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=sample.device)
    view = (-1,) + (1,) * (sample.ndim - 1)
    sigma = sigma.reshape(view) if sigma.ndim else sigma
    sigma_next = sigma_next.reshape(view) if sigma_next.ndim else sigma_next
    if bool((sigma_next >= sigma).any()):
        raise ValueError("sde_step goes from noise towards data: sigma_next must be below sigma")
    capped = (
        sigma if sigma_max is None else torch.where(sigma >= 1, torch.as_tensor(sigma_max, device=sigma.device), sigma)
    )
    std_t = noise_level * torch.sqrt(sigma / (1 - capped))
    dt = sigma_next - sigma
    mean = sample * (1 + std_t**2 / (2 * sigma) * dt) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * torch.sqrt(-dt)
    if prev_sample is None:
        noise = torch.randn(
            sample.shape, generator=generator, device=sample.device if generator is None else generator.device
        )
        prev_sample = mean + std * noise.to(sample.device)
    prev_sample = prev_sample.float()
    log_prob = -((prev_sample - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    log_prob = log_prob.mean(dim=tuple(range(1, sample.ndim)))
    return prev_sample, log_prob, mean, std
