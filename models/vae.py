"""The VAE with latent normalisation: images in, normalised latents out, and back (docs/qwen_image.md §6).

``z_n = (z - latents_mean) / latents_std`` per channel, with the 16 values of the VAE's config. The Wan-2.1 VAE is a
video model; images are one frame, so a frame axis is added on the way in and removed on the way out.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLQwenImage


class LatentVAE:
    """Normalised encode / decode around ``AutoencoderKLQwenImage``.

    images: ``[B, 3, H, W]`` in [-1, 1]; latents: ``[B, 16, H/8, W/8]`` normalised.
    """

    def __init__(self, vae: AutoencoderKLQwenImage):
        self.vae = vae
        channels = vae.config.z_dim
        self.latents_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.latents_std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, channels, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean = self.latents_mean.to(latents.device, latents.dtype)
        std = self.latents_std.to(latents.device, latents.dtype)
        return (latents - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean = self.latents_mean.to(latents.device, latents.dtype)
        std = self.latents_std.to(latents.device, latents.dtype)
        return latents * std + mean

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> normalised ``[B, 16, H/8, W/8]`` (posterior mode unless ``sample``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        posterior = self.vae.encode(images.to(self.device, self.dtype).unsqueeze(2)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        return self.normalize(latents[:, :, 0])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, 16, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [-1, 1]."""
        raw = self.denormalize(latents.to(self.device, self.dtype))
        images = self.vae.decode(raw.unsqueeze(2), return_dict=False)[0][:, :, 0]
        return images.clamp(-1, 1)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` RGB -> float ``[B, 3, H, W]`` in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3] RGB images, got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(images: torch.Tensor) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]`` RGB (rounded as diffusers' image processor does)."""
    array = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255).round().astype(np.uint8)
