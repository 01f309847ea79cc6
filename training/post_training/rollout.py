"""GRPO rollouts: the SDE sampler with a log-probability per step, and the Ray actors that run it.

``sde_rollout`` walks the inference schedule with ``models.sampler.sde_step`` (Flow-GRPO, docs/qwen_image.md §8) and
keeps every latent on the way, so that the trainer can recompute any step's log-probability under the current policy
(``step_log_prob``). The first step starts at sigma = 1, where ``std_t`` is infinite: Flow-GRPO puts the second sigma in
its place (``sigma_max``). The last step (to sigma = 0) is a plain Euler step: it is never trained.

``RolloutWorker`` is the actor: it holds a copy of the policy, the VAE and the rewards, receives the trainer's
weights after each update (``set_weights``) and returns trajectories with rewards and its time split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np
import torch

from models.packing import img_shapes, latent_size, pack_latents, unpack_latents
from models.presets import QWEN_IMAGE_SCHEDULER_CONFIG
from models.prompt_embeds import PromptEmbeds, pad_prompt_embeds
from models.sampler import initial_noise, predict_velocity, sde_step, true_cfg
from models.schedule import inference_sigmas


@dataclasses.dataclass
class Trajectory:
    """``latents: [B, N+1, 16, h, w]`` float32 from noise (index 0) to the sample (index N); ``log_probs: [B, N-1]``
    of the SDE transitions ``i -> i+1``; ``sigmas: [N+1]``; ``sigma_max`` stands in for sigma = 1."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    sigma_max: float

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


def guided_velocity(
    transformer,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    prompt: PromptEmbeds,
    negative: PromptEmbeds | None = None,
    true_cfg_scale: float = 1.0,
) -> torch.Tensor:
    """Velocity ``[B, 16, h, w]`` for unpacked ``latents`` at ``sigma: [B]``, with true CFG when asked."""
    batch, _, rows, cols = latents.shape
    tokens, shapes = pack_latents(latents), img_shapes(batch, rows, cols)
    velocity = predict_velocity(transformer, tokens, sigma, prompt, shapes)
    if negative is not None and true_cfg_scale > 1:
        velocity = true_cfg(velocity, predict_velocity(transformer, tokens, sigma, negative, shapes), true_cfg_scale)
    return unpack_latents(velocity, rows, cols)


@torch.no_grad()
def sde_rollout(
    transformer,
    prompt: PromptEmbeds,
    *,
    height: int,
    width: int,
    num_steps: int,
    noise_level: float = 0.7,
    negative: PromptEmbeds | None = None,
    true_cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    scheduler_config: Mapping = QWEN_IMAGE_SCHEDULER_CONFIG,
) -> Trajectory:
    """Sample one image per prompt row with the SDE; keep every latent and each SDE step's log-probability."""
    if num_steps < 2:
        raise ValueError("an SDE rollout needs at least 2 steps (the last one is a deterministic Euler step)")
    rows, cols = latent_size(height, width)
    batch = prompt.embeds.shape[0]
    device = prompt.embeds.device
    if negative is not None and negative.embeds.shape[0] == 1 and batch > 1:
        negative = negative.repeat_interleave(batch)
    latents = initial_noise(batch, rows, cols, generator=generator, device=device)
    sigmas = inference_sigmas(num_steps, (rows // 2) * (cols // 2), scheduler_config).to(device)
    sigma_max = float(sigmas[1])
    path, log_probs = [latents], []
    for step in range(num_steps):
        sigma = sigmas[step].expand(batch)
        velocity = guided_velocity(transformer, latents, sigma, prompt, negative, true_cfg_scale).float()
        if step < num_steps - 1:
            latents, log_prob, _, _ = sde_step(
                velocity,
                latents,
                sigmas[step],
                sigmas[step + 1],
                noise_level=noise_level,
                sigma_max=sigma_max,
                generator=generator,
            )
            log_probs.append(log_prob)
        else:
            latents = latents + (sigmas[step + 1] - sigmas[step]) * velocity
        path.append(latents)
    return Trajectory(torch.stack(path, dim=1), torch.stack(log_probs, dim=1), sigmas, sigma_max)


def step_log_prob(
    transformer,
    latents: torch.Tensor,
    next_latents: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    prompt: PromptEmbeds,
    *,
    noise_level: float,
    sigma_max: float,
    negative: PromptEmbeds | None = None,
    true_cfg_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log_prob [B], mean, std)`` of the stored transition ``latents -> next_latents`` under ``transformer``
    (differentiable); ``sigma`` / ``sigma_next``: ``[B]``, one step per sample."""
    velocity = guided_velocity(transformer, latents, sigma, prompt, negative, true_cfg_scale)
    _, log_prob, mean, std = sde_step(
        velocity,
        latents,
        sigma,
        sigma_next,
        noise_level=noise_level,
        sigma_max=sigma_max,
        prev_sample=next_latents,
    )
    return log_prob, mean, std


def prompt_rows(embeds: list[np.ndarray], indices: list[int], repeats: int, device="cpu") -> PromptEmbeds:
    """A ``PromptEmbeds`` of the prompts at ``indices``, each ``repeats`` times in a row."""
    rows = [torch.tensor(np.asarray(embeds[index], dtype=np.float32)) for index in indices]
    return pad_prompt_embeds(rows).repeat_interleave(repeats).to(device)


class RolloutWorker:
    """Ray actor: SDE rollouts of the current policy, decoded and scored. Weights arrive with ``set_weights``."""

    def __init__(
        self,
        checkpoint: str,
        base_weights_dir: str | None,
        lora: dict | None,
        rewards: list[dict],
        prompts: dict,
        settings: dict,
        num_threads: int = 1,
    ):
        from models.checkpoint import read_metadata
        from models.lora import LoraSettings, add_lora
        from models.presets import build_components
        from models.vae import LatentVAE
        from training.post_training.policy import load_transformer
        from training.post_training.rewards import build_reward

        torch.set_num_threads(num_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.transformer = load_transformer(checkpoint, self.device).eval()
        if lora is not None:
            add_lora(self.transformer, LoraSettings.model_validate(lora))
        self.reward = build_reward(rewards)
        self.vae = None
        if self.reward.needs_images:
            preset = read_metadata(checkpoint).get("preset", "qwen-image")
            vae = build_components(preset, weights_dir=base_weights_dir, parts=("vae",), device=self.device).vae
            self.vae = LatentVAE(vae)
        self.texts, self.embeds = prompts["texts"], prompts["embeds"]
        self.negative = torch.as_tensor(np.asarray(prompts["negative"], dtype=np.float32))[None]
        self.settings = settings
        self.version = -1

    def set_weights(self, state: dict, version: int) -> int:
        from training.post_training.policy import load_trainable_state

        load_trainable_state(self.transformer, state)
        self.version = version
        return version

    def _negative(self) -> PromptEmbeds | None:
        if self.settings["true_cfg_scale"] <= 1:
            return None
        return PromptEmbeds(self.negative, torch.ones(1, self.negative.shape[1], dtype=torch.long)).to(self.device)

    def _score(self, indices: list[int], repeats: int, latents: torch.Tensor) -> tuple[np.ndarray, dict]:
        from models.vae import tensor_to_images
        from training.post_training.rewards import Generated

        prompts = [self.texts[index] for index in indices for _ in range(repeats)]
        images = tensor_to_images(self.vae.decode(latents)) if self.vae is not None else None
        components = self.reward.components(Generated(prompts, images, latents))
        return self.reward.total(components), components

    def rollout(self, indices: list[int], group_size: int, seed: int) -> dict:
        """``group_size`` SDE samples for each prompt index: trajectories, log-probs, rewards, time split."""
        started = time.perf_counter()
        prompt = prompt_rows(self.embeds, indices, group_size, self.device)
        trajectory = sde_rollout(
            self.transformer,
            prompt,
            height=self.settings["height"],
            width=self.settings["width"],
            num_steps=self.settings["num_steps"],
            noise_level=self.settings["noise_level"],
            negative=self._negative(),
            true_cfg_scale=self.settings["true_cfg_scale"],
            generator=torch.Generator(self.device).manual_seed(seed),
        )
        sampled = time.perf_counter()
        rewards, components = self._score(indices, group_size, trajectory.final)
        return {
            "indices": np.repeat(np.asarray(indices), group_size),
            "latents": trajectory.latents.cpu().numpy(),
            "log_probs": trajectory.log_probs.cpu().numpy(),
            "sigmas": trajectory.sigmas.cpu().numpy(),
            "sigma_max": trajectory.sigma_max,
            "rewards": rewards,
            "components": components,
            "version": self.version,
            "rollout_s": sampled - started,
            "reward_s": time.perf_counter() - sampled,
        }

    def evaluate(self, indices: list[int], seeds: list[int]) -> dict:
        """Mean reward of ODE samples (the evaluation sampler) for fixed seeds: comparable across iterations."""
        from models.sampler import sample

        prompt = prompt_rows(self.embeds, indices, len(seeds), self.device)
        generators = [torch.Generator(self.device).manual_seed(seed) for _ in indices for seed in seeds]
        with torch.no_grad():
            latents = sample(
                self.transformer,
                prompt,
                height=self.settings["height"],
                width=self.settings["width"],
                num_steps=self.settings["num_steps"],
                negative=self._negative(),
                true_cfg_scale=self.settings["true_cfg_scale"],
                generator=generators,
            )
        rewards, components = self._score(indices, len(seeds), latents)
        return {"reward": float(rewards.mean()), **{name: float(v.mean()) for name, v in components.items()}}
